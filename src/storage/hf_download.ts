import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { type FileHandle, mkdir, open, readFile, rename, rm, stat, utimes } from 'node:fs/promises';
import { hostname } from 'node:os';
import { dirname } from 'node:path';
import process from 'node:process';
import { AbortError, NetworkError, StorageError } from '../errors.ts';
import { DEFAULT_HTTP_RETRIES, DEFAULT_HTTP_TIMEOUT_MS } from './http.ts';
import { type HubRef, hubFetch, isSha256 } from './hub.ts';

/** One file's bytes to bring into blobs/: where they are, under which name, how many. */
export interface BlobRequest {
  ref: HubRef;
  /** The repository file, for messages. */
  file: string;
  /** Where the bytes are: the hub's redirect target for LFS files, else the resolve URL. */
  url: string;
  /** blobs/<etag> is the file written. */
  blobPath: string;
  etag: string;
  size: number | undefined;
  /** The hub (HF_ENDPOINT): the token goes there only, not to the storage an LFS redirect points at. */
  endpoint: string;
  token?: string;
  fetch?: typeof fetch;
  /** Milliseconds without data before a request fails (default 30 000). */
  timeoutMs?: number;
  /** Called with each chunk's length as it is written. */
  onBytes?: (bytes: number) => void;
  signal?: AbortSignal;
}

/** A lock older than this without a heartbeat belongs to a process that is gone (or hung). */
const STALE_LOCK_MS = 30_000;
const HEARTBEAT_MS = 5_000;
const LOCK_POLL_MS = 200;

/**
 * Brings one blob into the cache, once, whoever else is at it: under blobs/<etag>.lock (created exclusively;
 * another process's live lock is waited for, a dead one's taken over) the bytes go to blobs/<etag>.incomplete,
 * resumed with a Range request where an earlier, killed run stopped; then the size and (for LFS files, whose
 * etag is their sha256) the hash are checked, the file is synced and renamed into place. A process that waited
 * finds the blob there and downloads nothing.
 */
export async function downloadBlob(request: BlobRequest): Promise<void> {
  if (await exists(request.blobPath)) return;
  const lockPath = `${request.blobPath}.lock`;
  const lock = await acquireLock(lockPath, request.signal);
  try {
    if (await exists(request.blobPath)) return;
    const temp = `${request.blobPath}.incomplete`;
    await fetchInto(temp, request);
    await verify(temp, request);
    await rename(temp, request.blobPath);
  } finally {
    await lock.release();
  }
}

/** Appends the missing bytes of the file to `temp`, resuming after a dropped connection up to the retry count. */
async function fetchInto(temp: string, request: BlobRequest): Promise<void> {
  const { ref, file, url, size } = request;
  const timeoutMs = request.timeoutMs ?? DEFAULT_HTTP_TIMEOUT_MS;
  for (let attempt = 0; ; attempt++) {
    const have = (await stat(temp).catch(() => undefined))?.size ?? 0;
    if (size !== undefined && have === size) return;
    const stall = new StallTimer(timeoutMs, request.signal);
    let handle: FileHandle | undefined;
    try {
      const res = await hubFetch(url, ref, 'GET', {
        token: new URL(url).origin === new URL(request.endpoint).origin ? request.token : undefined,
        fetch: request.fetch,
        headers: { 'Accept-Encoding': 'identity', ...(have > 0 && { Range: `bytes=${have}-` }) },
        signal: stall.signal,
      });
      const resumed = res.status === 206 && new RegExp(`^bytes ${have}-`).test(res.headers.get('content-range') ?? '');
      if (res.status !== 200 && !resumed) {
        res.body?.cancel().catch(() => {});
        throw new NetworkError(`HTTP ${res.status} for the bytes from ${have} of ${url}`, file, url);
      }
      // A server that ignored the Range sends the whole file: start over.
      handle = await open(temp, resumed ? 'a' : 'w');
      stall.progress();
      for await (const chunk of res.body ?? []) {
        stall.progress();
        await writeAll(handle, chunk);
        request.onBytes?.(chunk.length);
      }
      await handle.sync();
      const got = (await handle.stat()).size;
      if (size === undefined || got === size) return;
      if (got > size) throw new StorageError(`${ref.repo}: ${file}: the download has ${got} bytes, more than the ${size} the hub announced`);
      throw new NetworkError(`the body ended after ${got} of ${size} bytes`, file, url);
    } catch (error) {
      if (request.signal?.aborted) throw new AbortError('aborted');
      const stalled = stall.timedOut;
      if (error instanceof StorageError || attempt >= DEFAULT_HTTP_RETRIES) {
        if (stalled) throw new NetworkError(`no data from ${url} for ${timeoutMs / 1000} s (timed out)`, file, url, { cause: error });
        if (error instanceof NetworkError || error instanceof StorageError) throw error;
        throw new NetworkError(`the download of ${url} failed (${(error as Error).message})`, file, url, { cause: error });
      }
    } finally {
      stall.done();
      await handle?.close();
    }
  }
}

/** The finished file has the announced size and, for an LFS file, the sha256 its etag names; else it is dropped. */
async function verify(temp: string, request: BlobRequest): Promise<void> {
  const size = (await stat(temp)).size;
  const fail = async (what: string) => {
    await rm(temp, { force: true });
    throw new StorageError(`${request.ref.repo}: ${request.file}: ${what}; the download was removed, run again to fetch it anew`);
  };
  if (request.size !== undefined && size !== request.size) await fail(`has ${size} bytes, the hub announced ${request.size}`);
  if (!isSha256(request.etag)) return;
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(temp)) hash.update(chunk as Uint8Array);
  const sha = hash.digest('hex');
  if (sha !== request.etag) await fail(`its sha256 is ${sha}, the hub announced ${request.etag}`);
}

interface Lock {
  release(): Promise<void>;
}

/**
 * Takes `path` as a lock (exclusive create) holding the owner's pid and host. While another holds it, waits;
 * a lock whose owner is dead (same host) or that has had no heartbeat for STALE_LOCK_MS is taken over.
 */
async function acquireLock(path: string, signal: AbortSignal | undefined): Promise<Lock> {
  await mkdir(dirname(path), { recursive: true });
  for (;;) {
    if (signal?.aborted) throw new AbortError('aborted');
    try {
      const handle = await open(path, 'wx');
      await handle.writeFile(JSON.stringify({ pid: process.pid, host: hostname() }));
      await handle.close();
      const heartbeat = setInterval(() => {
        const now = new Date();
        utimes(path, now, now).catch(() => {});
      }, HEARTBEAT_MS);
      return {
        async release() {
          clearInterval(heartbeat);
          await rm(path, { force: true });
        },
      };
    } catch (error) {
      if ((error as { code?: string }).code !== 'EEXIST') throw error;
    }
    if (await isStale(path)) await rm(path, { force: true });
    else await new Promise((done) => setTimeout(done, LOCK_POLL_MS));
  }
}

async function isStale(path: string): Promise<boolean> {
  const info = await stat(path).catch(() => undefined);
  if (!info) return false;
  if (Date.now() - info.mtimeMs > STALE_LOCK_MS) return true;
  const owner = await readFile(path, 'utf8').then(
    (text) => JSON.parse(text) as { pid?: number; host?: string },
    () => undefined,
  );
  // A lock still being written reads as empty: not stale yet.
  if (!owner || owner.host !== hostname() || typeof owner.pid !== 'number') return false;
  return !alive(owner.pid);
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as { code?: string }).code === 'EPERM';
  }
}

/** Aborts a request once no data came for `ms`; `progress()` starts the wait over. */
class StallTimer {
  timedOut = false;
  private readonly controller = new AbortController();
  private timer: ReturnType<typeof setTimeout> | undefined;
  private readonly onAbort = () => this.controller.abort();
  readonly signal = this.controller.signal;

  constructor(
    private readonly ms: number,
    private readonly outer: AbortSignal | undefined,
  ) {
    outer?.addEventListener('abort', this.onAbort, { once: true });
    this.progress();
  }

  progress(): void {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timedOut = true;
      this.controller.abort();
    }, this.ms);
  }

  done(): void {
    clearTimeout(this.timer);
    this.outer?.removeEventListener('abort', this.onAbort);
  }
}

async function writeAll(handle: FileHandle, bytes: Uint8Array): Promise<void> {
  for (let done = 0; done < bytes.length; ) done += (await handle.write(bytes, done, bytes.length - done)).bytesWritten;
}

const exists = async (path: string): Promise<boolean> => (await stat(path).catch(() => undefined)) !== undefined;
