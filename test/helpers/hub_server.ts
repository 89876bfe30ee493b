import { createHash } from 'node:crypto';
import { readFileSync, readdirSync } from 'node:fs';
import { type IncomingMessage, type ServerResponse, createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';

/**
 * A local stand-in for the Hugging Face hub (127.0.0.1), answering as huggingface.co does:
 *   GET  /api/models/ORG/NAME/revision/REV   {sha, siblings: [{rfilename}]}
 *   HEAD|GET /ORG/NAME/resolve/REV/FILE      small files: 200 with ETag (a git-style sha1) and X-Repo-Commit;
 *                                            LFS files (*.safetensors, *.gguf): 302 to /blobs/<sha256> with
 *                                            X-Linked-Etag (the sha256), X-Linked-Size and X-Repo-Commit
 *   GET  /blobs/<sha256>                     the bytes, with Range; `bytesPerSecond` slows them down
 * A gated repo answers 401 to the API and resolve routes without `Authorization: Bearer <token>`; anything
 * unknown is 404.
 */
export interface HubRepo {
  /** Each commit's files by path. */
  commits: Record<string, Record<string, Uint8Array>>;
  /** Branches and tags → commit. */
  refs: Record<string, string>;
  /** Token required on the API and resolve routes. */
  gatedToken?: string;
}

export interface HubServer {
  url: string;
  /** Every request: "GET /path" plus " bytes=N-" when it had a Range. */
  log: string[];
  /** Bytes per second for blob bodies (undefined: as fast as possible). */
  throttle: { bytesPerSecond?: number };
  close(): Promise<void>;
}

export const sha256 = (bytes: Uint8Array): string => createHash('sha256').update(bytes).digest('hex');
const gitSha1 = (bytes: Uint8Array): string => createHash('sha1').update(`blob ${bytes.length}\0`).update(bytes).digest('hex');
const isLfs = (file: string) => /\.(safetensors|gguf)$/.test(file);

/** A folder's files as a commit's contents (sub-folders flattened to paths), minus those `skip` names. */
export function filesOf(dir: string, skip: (name: string) => boolean = () => false): Record<string, Uint8Array> {
  const files: Record<string, Uint8Array> = {};
  for (const name of readdirSync(dir)) if (!skip(name)) files[name] = readFileSync(join(dir, name));
  return files;
}

/** Resolves once the response can take more, or is gone. */
function drained(res: ServerResponse): Promise<void> {
  return new Promise((done) => {
    const finish = () => {
      res.off('drain', finish).off('close', finish);
      done();
    };
    res.once('drain', finish).once('close', finish);
  });
}

export async function serveHub(repos: Record<string, HubRepo>): Promise<HubServer> {
  const log: string[] = [];
  const throttle: { bytesPerSecond?: number } = {};
  const blobs = new Map<string, Uint8Array>();
  for (const repo of Object.values(repos))
    for (const files of Object.values(repo.commits)) for (const [name, bytes] of Object.entries(files)) if (isLfs(name)) blobs.set(sha256(bytes), bytes);

  const server = createServer((req, res) => {
    handle(req, res).catch((error: unknown) => {
      if (!res.headersSent) res.writeHead(500);
      res.end(String(error));
    });
  });

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://localhost');
    log.push(`${req.method} ${decodeURIComponent(url.pathname)}${req.headers.range ? ` ${req.headers.range}` : ''}`);
    const parts = url.pathname.split('/').slice(1).map(decodeURIComponent);
    if (parts[0] === 'blobs') return sendBytes(req, res, blobs.get(parts[1]), {});
    const api = parts[0] === 'api' && parts[1] === 'models' && parts[4] === 'revision';
    const [org, name] = api ? parts.slice(2, 4) : parts.slice(0, 2);
    const repo = repos[`${org}/${name}`];
    if (!repo) return void res.writeHead(404).end('Repository not found');
    if (repo.gatedToken && req.headers.authorization !== `Bearer ${repo.gatedToken}`) return void res.writeHead(401).end('gated');
    const revision = api ? parts[5] : parts[3];
    const commit = repo.refs[revision] ?? (revision in repo.commits ? revision : undefined);
    if (commit === undefined) return void res.writeHead(404).end('Revision not found');
    const files = repo.commits[commit];
    if (api) {
      const body = JSON.stringify({ id: `${org}/${name}`, sha: commit, siblings: Object.keys(files).map((rfilename) => ({ rfilename })) });
      return void res.writeHead(200, { 'content-type': 'application/json' }).end(body);
    }
    if (parts[2] !== 'resolve') return void res.writeHead(404).end();
    const file = parts.slice(4).join('/');
    const bytes = files[file];
    if (!bytes) return void res.writeHead(404, { 'x-error-code': 'EntryNotFound' }).end('Entry not found');
    if (isLfs(file)) {
      const sha = sha256(bytes);
      return void res
        .writeHead(302, { location: `/blobs/${sha}`, etag: `"${sha}"`, 'x-linked-etag': `"${sha}"`, 'x-linked-size': bytes.length, 'x-repo-commit': commit })
        .end();
    }
    return sendBytes(req, res, bytes, { etag: `"${gitSha1(bytes)}"`, 'x-repo-commit': commit });
  }

  async function sendBytes(req: IncomingMessage, res: ServerResponse, bytes: Uint8Array | undefined, headers: Record<string, string>): Promise<void> {
    if (!bytes) return void res.writeHead(404).end();
    const m = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? '');
    const start = m ? Number(m[1]) : 0;
    const end = m?.[2] ? Math.min(Number(m[2]), bytes.length - 1) : bytes.length - 1;
    if (m && start >= bytes.length) return void res.writeHead(416, { 'content-range': `bytes */${bytes.length}` }).end();
    res.writeHead(m ? 206 : 200, {
      ...headers,
      'accept-ranges': 'bytes',
      'content-length': end - start + 1,
      ...(m && { 'content-range': `bytes ${start}-${end}/${bytes.length}` }),
    });
    if (req.method === 'HEAD') return void res.end();
    const chunk = 64 * 1024;
    for (let at = start; at <= end && !res.destroyed; at += chunk) {
      const piece = bytes.subarray(at, Math.min(at + chunk, end + 1));
      if (!res.write(piece)) await drained(res);
      if (throttle.bytesPerSecond) await new Promise((done) => setTimeout(done, (piece.length / throttle.bytesPerSecond!) * 1000));
    }
    res.end();
  }

  await new Promise<void>((done) => server.listen(0, '127.0.0.1', done));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    log,
    throttle,
    close: () =>
      new Promise<void>((done) => {
        server.closeAllConnections();
        server.close(() => done());
      }),
  };
}
