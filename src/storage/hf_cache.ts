import { lstat, mkdir, readFile, readdir, rename, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { dirname, join, relative } from 'node:path';
import { StorageError } from '../errors.ts';
import type { Env } from './hub.ts';

/**
 * The Hugging Face hub cache on disk, laid out as huggingface_hub lays it out, so models it (or any tool using
 * it) downloaded are used as they are and ours serve them:
 *
 *   $HF_HUB_CACHE (default $HF_HOME/hub, $HF_HOME default ~/.cache/huggingface)
 *     models--ORG--NAME/
 *       blobs/<etag>                 file contents, named by the hub's ETag (the sha256 of an LFS file)
 *       snapshots/<commit>/<file>    symlinks ../../blobs/<etag>
 *       refs/<branch or tag>         the commit it pointed at when last seen
 */
export function hubCacheDir(env: Env): string {
  const hubCache = env('HF_HUB_CACHE');
  if (hubCache) return hubCache;
  return join(env('HF_HOME') || join(env('HOME') || homedir(), '.cache', 'huggingface'), 'hub');
}

/** models--ORG--NAME, the folder of one repository. */
export const repoFolderName = (repo: string): string => `models--${repo.split('/').join('--')}`;

export class RepoCache {
  readonly dir: string;

  constructor(
    cacheDir: string,
    readonly repo: string,
  ) {
    this.dir = join(cacheDir, repoFolderName(repo));
  }

  blobPath(etag: string): string {
    return join(this.dir, 'blobs', etag);
  }

  snapshotDir(commit: string): string {
    return join(this.dir, 'snapshots', commit);
  }

  /** The commit a revision names: itself when it is a commit with a snapshot, else what refs/<revision> holds. */
  async commitOf(revision: string): Promise<string | undefined> {
    if (/^[0-9a-f]{40}$/.test(revision) && (await isDir(this.snapshotDir(revision)))) return revision;
    const text = await readFile(join(this.dir, 'refs', revision), 'utf8').catch(() => undefined);
    return text?.trim() || undefined;
  }

  /** Records where a branch or tag points (a commit given as the revision needs no ref). */
  async writeRef(revision: string, commit: string): Promise<void> {
    if (revision === commit) return;
    const path = join(this.dir, 'refs', revision);
    await mkdir(dirname(path), { recursive: true });
    const temp = `${path}.${uniqueSuffix()}.tmp`;
    await writeFile(temp, commit);
    await rename(temp, path);
  }

  /** Whether the snapshot has `file` (a link whose blob is there, or a plain file another tool put there). */
  async hasFile(commit: string, file: string): Promise<boolean> {
    return (await stat(join(this.snapshotDir(commit), file)).catch(() => undefined))?.isFile() ?? false;
  }

  /** Points snapshots/<commit>/<file> at blobs/<etag> (a relative symlink, replacing what was there). */
  async linkSnapshot(commit: string, file: string, etag: string): Promise<void> {
    const path = join(this.snapshotDir(commit), file);
    await mkdir(dirname(path), { recursive: true });
    const target = relative(dirname(path), this.blobPath(etag));
    const temp = `${path}.${uniqueSuffix()}.link`;
    await symlink(target, temp);
    await rename(temp, path);
  }

  /** The files of a snapshot, relative to it (for a GGUF picked by quant when offline). */
  async snapshotFiles(commit: string): Promise<string[]> {
    const root = this.snapshotDir(commit);
    const files: string[] = [];
    const walk = async (dir: string) => {
      for (const entry of await readdir(dir, { withFileTypes: true }).catch(() => [])) {
        const path = join(dir, entry.name);
        if (entry.isDirectory()) await walk(path);
        else files.push(relative(root, path).split('\\').join('/'));
      }
    };
    await walk(root);
    return files;
  }
}

export interface CachedRepo {
  repo: string;
  dir: string;
  /** Each snapshot's commit, with the refs that point at it. */
  revisions: { commit: string; refs: string[] }[];
  /** Bytes of its blobs (what it takes on disk). */
  bytes: number;
}

/** Every repository in the cache, by name. */
export async function listCache(cacheDir: string): Promise<CachedRepo[]> {
  const repos: CachedRepo[] = [];
  for (const name of (await readdir(cacheDir).catch(() => [])).sort()) {
    if (!name.startsWith('models--')) continue;
    const repo = name.slice('models--'.length).split('--').join('/');
    const dir = join(cacheDir, name);
    const refs = await readRefs(join(dir, 'refs'));
    const commits = (await readdir(join(dir, 'snapshots')).catch(() => [])).sort();
    const revisions = commits.map((commit) => ({ commit, refs: [...refs].filter(([, c]) => c === commit).map(([r]) => r) }));
    let bytes = 0;
    for (const blob of await readdir(join(dir, 'blobs')).catch(() => [])) bytes += (await lstat(join(dir, 'blobs', blob)).catch(() => undefined))?.size ?? 0;
    repos.push({ repo, dir, revisions, bytes });
  }
  return repos;
}

/** Removes one repository from the cache; only an exact name does, anything else names what is there. */
export async function removeFromCache(cacheDir: string, repo: string): Promise<CachedRepo> {
  const cached = await listCache(cacheDir);
  const found = cached.find((c) => c.repo === repo);
  if (!found) {
    const near = cached.filter((c) => c.repo.toLowerCase().includes(repo.toLowerCase()) || repo.toLowerCase().includes(c.repo.toLowerCase()));
    const hint = near.length > 0 ? ` (did you mean ${near.map((c) => c.repo).join(', ')}?)` : cached.length === 0 ? ' (the cache is empty)' : '';
    throw new StorageError(`${repo} is not in the cache ${cacheDir}${hint}`);
  }
  await rm(found.dir, { recursive: true, force: true });
  return found;
}

async function readRefs(dir: string, prefix = ''): Promise<Map<string, string>> {
  const refs = new Map<string, string>();
  for (const entry of await readdir(dir, { withFileTypes: true }).catch(() => [])) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) for (const [r, c] of await readRefs(path, `${prefix}${entry.name}/`)) refs.set(r, c);
    else if (!entry.name.endsWith('.tmp')) refs.set(`${prefix}${entry.name}`, (await readFile(path, 'utf8')).trim());
  }
  return refs;
}

const isDir = async (path: string): Promise<boolean> => (await stat(path).catch(() => undefined))?.isDirectory() ?? false;

/** A name part no other process picks at the same time (temp files renamed into place). */
export const uniqueSuffix = (): string => `${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 10)}`;
