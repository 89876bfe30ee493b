import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { NetworkError, StorageError } from '../errors.ts';
import { RepoCache, hubCacheDir } from './hf_cache.ts';
import { downloadBlob } from './hf_download.ts';
import {
  type Env,
  type FileHead,
  type HubRef,
  SAFETENSORS_INDEX,
  filesToFetch,
  formatModelRef,
  hubEndpoint,
  hubFetch,
  hubOffline,
  hubToken,
  listRepo,
  pickGguf,
  readFileHead,
  resolveUrl,
  shardsOfIndex,
} from './hub.ts';

export interface HubOptions {
  /** HF_ENDPOINT, HF_TOKEN, HF_HUB_OFFLINE, HF_HOME, HF_HUB_CACHE. */
  env: Env;
  fetch?: typeof fetch;
  /** Milliseconds without data before a download fails (default 30 000). */
  timeoutMs?: number;
  /** Download progress over every file still to fetch. */
  onProgress?: (p: { file: string; doneBytes: number; totalBytes: number }) => void;
  signal?: AbortSignal;
}

/** A model in the cache: its snapshot folder, and for a GGUF the file in it. */
export interface CachedModel {
  dir: string;
  file?: string;
  commit: string;
  /** True when the hub was not asked (HF_HUB_OFFLINE) or could not be reached: the cache served the revision as last seen. */
  offline: boolean;
}

/**
 * The model a hub reference names, in the cache: what is missing is downloaded (the checkpoint's own files
 * only, see `filesToFetch`); the revision is resolved through the hub, or through refs/ when HF_HUB_OFFLINE is
 * set or the hub cannot be reached.
 */
export async function cacheModel(ref: HubRef, options: HubOptions): Promise<CachedModel> {
  const cache = new RepoCache(hubCacheDir(options.env), ref.repo);
  if (hubOffline(options.env)) return fromCache(cache, ref, 'HF_HUB_OFFLINE is set');
  const endpoint = hubEndpoint(options.env);
  const token = hubToken(options.env);
  let listing: Awaited<ReturnType<typeof listRepo>>;
  try {
    listing = await listRepo(ref, { endpoint, token, fetch: options.fetch });
  } catch (error) {
    if (error instanceof NetworkError) return fromCache(cache, ref, `the hub cannot be reached (${error.detail})`);
    throw error;
  }
  const { commit } = listing;
  await cache.writeRef(ref.revision, commit);

  // Ask the hub about every file the snapshot lacks (its etag and size), then fetch them with one progress total.
  const heads = new Map<string, FileHead>();
  const head = async (file: string) => {
    if (await cache.hasFile(commit, file)) return;
    heads.set(file, await headOf(resolveUrl(endpoint, ref.repo, commit, file)));
  };
  // The hub's own redirects (same origin) are followed to the answer with the headers; an LFS file's redirect to
  // its storage is not: the hub's 302 carries X-Linked-Etag and X-Linked-Size. `identity`: sizes of the bytes as sent.
  const headOf = async (url: string): Promise<FileHead> => {
    for (let hops = 0; ; hops++) {
      const res = await hubFetch(url, ref, 'HEAD', { token, fetch: options.fetch, redirect: 'manual', signal: options.signal, headers: IDENTITY });
      const head = readFileHead(res, url);
      const hubRedirect =
        res.status >= 300 && res.status < 400 && !res.headers.has('x-linked-etag') && new URL(head.location).origin === new URL(endpoint).origin;
      if (!hubRedirect || hops >= 5) return head;
      url = head.location;
    }
  };
  const fetchFiles = async (files: string[]) => {
    for (const f of files) await head(f);
    const pending = files.filter((f) => heads.has(f));
    const totalBytes = pending.reduce((sum, f) => sum + (heads.get(f)!.size ?? 0), 0);
    let doneBytes = 0;
    for (const file of pending) {
      const h = heads.get(file)!;
      const etag = h.etag || `${commit}-${file.split('/').join('--')}`;
      await downloadBlob({
        ref,
        file,
        url: h.location,
        blobPath: cache.blobPath(etag),
        etag,
        size: h.size,
        endpoint,
        token,
        fetch: options.fetch,
        timeoutMs: options.timeoutMs,
        signal: options.signal,
        onBytes: (n) => options.onProgress?.({ file, doneBytes: (doneBytes += n), totalBytes }),
      });
      await cache.linkSnapshot(commit, file, etag);
    }
  };

  const files = filesToFetch(ref, listing.files);
  const index = files.includes(SAFETENSORS_INDEX);
  // The shards are known once the index is here: fetch it first, with the small files.
  await fetchFiles(index ? files : files.filter((f) => !isWeights(f)));
  const weights = index ? shardsOfIndex(await readFile(join(cache.snapshotDir(commit), SAFETENSORS_INDEX), 'utf8')) : files.filter(isWeights);
  await fetchFiles(weights);
  const gguf = ref.file !== undefined || ref.quant !== undefined ? files[0] : undefined;
  return { dir: cache.snapshotDir(commit), ...(gguf !== undefined && { file: gguf }), commit, offline: false };
}

/** No compression: a HEAD's Content-Length is then the size of the file downloaded. */
const IDENTITY = { 'Accept-Encoding': 'identity' };

const isWeights = (file: string): boolean => /\.(safetensors|gguf)$/i.test(file);

/** The model as the cache last saw it, or one error naming the model, its revision and why the hub was not asked. */
async function fromCache(cache: RepoCache, ref: HubRef, why: string): Promise<CachedModel> {
  const commit = await cache.commitOf(ref.revision);
  const files = commit === undefined ? [] : await cache.snapshotFiles(commit);
  if (commit === undefined || files.length === 0) {
    throw new StorageError(
      `${formatModelRef(ref)} (revision ${ref.revision}) is not in the cache ${cache.dir} and ${why}: download it once with the network on (qwen-webgpu pull ${formatModelRef(ref)})`,
    );
  }
  const dir = cache.snapshotDir(commit);
  if (ref.file === undefined && ref.quant === undefined) return { dir, commit, offline: true };
  return { dir, file: pickGguf(ref, files), commit, offline: true };
}
