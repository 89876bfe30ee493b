import { AbortError, ModelFormatError, NetworkError, QwenError, RequestError } from '../errors.ts';
import { smallFileLimit, tooLarge } from '../formats/limits.ts';
import type { WeightSource } from '../formats/source.ts';

export interface HttpOptions {
  /** The fetch to use (default: the global one). */
  fetch?: typeof fetch;
  /**
   * Milliseconds a request may go without progress (no response headers yet, or no body bytes since the last
   * ones) before it fails with a NetworkError naming the file and URL. Default 30 000.
   */
  timeoutMs?: number;
  /**
   * How many times a failed request is tried again (a refused or dropped connection, a body that ended early,
   * HTTP 408/429/5xx); a dropped range read resumes from the bytes that arrived. Default 3.
   */
  retries?: number;
}

export const DEFAULT_HTTP_TIMEOUT_MS = 30_000;
export const DEFAULT_HTTP_RETRIES = 3;
/** The first retry waits this long, each later one twice as long as the one before. */
const RETRY_DELAY_MS = 200;
const RETRY_STATUS = new Set([408, 429, 500, 502, 503, 504]);

/** A failure worth another attempt (the connection dropped, the body ended early, HTTP 5xx). */
class Retryable extends Error {}

/**
 * Model files on an HTTP(S) server, read with Range requests. A Hugging Face repository URL
 * (https://huggingface.co/ORG/NAME) is read from its `resolve/main/` files. Every request has a timeout of
 * its own (no progress for `timeoutMs`), failed reads are retried a bounded number of times (a range read
 * resumes where the dropped one stopped), small files are read up to their limit (src/formats/limits.ts) and
 * a range read takes no more than the bytes it asked for: a stalled, dropping or endless server ends in one
 * error naming the file and URL, never in a hang or unbounded memory.
 */
export class HttpSource implements WeightSource {
  readonly location: string;
  readonly timeoutMs: number;
  readonly retries: number;
  private readonly fetchImpl: typeof fetch;
  private readonly sizes = new Map<string, Promise<number | undefined>>();

  constructor(url: string, options: HttpOptions | typeof fetch = {}) {
    const o: HttpOptions = typeof options === 'function' ? { fetch: options } : options;
    this.fetchImpl = o.fetch ?? globalThis.fetch.bind(globalThis);
    this.timeoutMs = o.timeoutMs ?? DEFAULT_HTTP_TIMEOUT_MS;
    this.retries = o.retries ?? DEFAULT_HTTP_RETRIES;
    if (!(this.timeoutMs > 0) || !Number.isFinite(this.timeoutMs))
      throw new RequestError(`must be a positive number of milliseconds, got ${this.timeoutMs}`, 'timeoutMs');
    if (!Number.isInteger(this.retries) || this.retries < 0) throw new RequestError(`must be a non-negative integer, got ${this.retries}`, 'retries');
    const u = new URL(url);
    if (u.hostname === 'huggingface.co' && !u.pathname.includes('/resolve/') && u.pathname.split('/').filter(Boolean).length === 2) {
      u.pathname = `${u.pathname.replace(/\/$/, '')}/resolve/main`;
    }
    this.location = u.href.replace(/\/$/, '');
  }

  private url(file: string): string {
    return `${this.location}/${file.split('/').map(encodeURIComponent).join('/')}`;
  }

  /**
   * Runs `attempt` up to 1 + retries times. A timeout, an abort or a QwenError (404, a server without Range
   * support, a file past its limit) ends it at once; anything else (a refused or dropped connection, a
   * Retryable) is tried again after a short wait. `attempt` keeps its own progress, so a retry resumes.
   */
  private async withRetries<T>(file: string, url: string, signal: AbortSignal | undefined, attempt: (call: Call) => Promise<T>): Promise<T> {
    for (let n = 0; ; n++) {
      if (signal?.aborted) throw new AbortError('aborted');
      const call = new Call(this.timeoutMs, signal);
      try {
        return await attempt(call);
      } catch (error) {
        if (signal?.aborted) throw new AbortError('aborted');
        if (call.timedOut) {
          throw new NetworkError(`no data from ${url} for ${this.timeoutMs / 1000} s (timed out: the server stalled or never answered)`, file, url);
        }
        if (error instanceof QwenError) throw error;
        if (n >= this.retries)
          throw new NetworkError(`${describeFailure(error)} reading ${url} (gave up after ${n + 1} attempts)`, file, url, { cause: error });
      } finally {
        call.done();
      }
      await sleep(RETRY_DELAY_MS * 2 ** n, signal);
    }
  }

  private probe(file: string): Promise<number | undefined> {
    let pending = this.sizes.get(file);
    if (!pending) {
      const url = this.url(file);
      pending = this.withRetries(file, url, undefined, async (call) => {
        const res = await call.fetch(this.fetchImpl, url, { Range: 'bytes=0-0' });
        discard(res);
        if (res.status === 404) return undefined;
        if (RETRY_STATUS.has(res.status)) throw new Retryable(`HTTP ${res.status}`);
        if (!res.ok) throw new ModelFormatError(`HTTP ${res.status} from ${url}`, file);
        const total = /\/(\d+)$/.exec(res.headers.get('content-range') ?? '')?.[1] ?? (res.status === 200 ? res.headers.get('content-length') : null);
        if (total === null || total === undefined) throw new ModelFormatError(`server did not report the size of ${url}`, file);
        return Number(total);
      });
      this.sizes.set(file, pending);
    }
    return pending;
  }

  async has(file: string): Promise<boolean> {
    return (await this.probe(file)) !== undefined;
  }

  async size(file: string): Promise<number> {
    const size = await this.probe(file);
    if (size === undefined) throw new ModelFormatError(`not found at ${this.location}`, file);
    return size;
  }

  async read(file: string, offset: number, length: number, signal?: AbortSignal): Promise<Uint8Array> {
    if (length === 0) return new Uint8Array(0);
    const url = this.url(file);
    const out = new Uint8Array(length);
    let got = 0;
    return this.withRetries(file, url, signal, async (call) => {
      const from = offset + got;
      const last = offset + length - 1;
      const res = await call.fetch(this.fetchImpl, url, { Range: `bytes=${from}-${last}` });
      if (res.status !== 206) {
        discard(res);
        if (res.status === 404) throw new ModelFormatError(`not found at ${this.location}`, file);
        if (RETRY_STATUS.has(res.status)) throw new Retryable(`HTTP ${res.status}`);
        if (res.status === 416) throw new ModelFormatError(`truncated: bytes ${from}..${last + 1} are past the end of ${url} (HTTP 416)`, file);
        throw new ModelFormatError(`HTTP ${res.status} for a byte range of ${url} (the server must support Range requests)`, file);
      }
      const range = /^bytes (\d+)-(\d+)\//.exec(res.headers.get('content-range') ?? '');
      if (range && Number(range[1]) !== from) {
        discard(res);
        throw new ModelFormatError(`${url} answered a request for bytes ${from}..${last + 1} with bytes from ${range[1]}`, file);
      }
      const end = range ? Number(range[2]) : last;
      if (end < last) {
        discard(res);
        throw new ModelFormatError(`truncated: wanted ${length} bytes at ${offset}, the file ends at ${end + 1}`, file);
      }
      await call.body(res, (chunk) => {
        if (chunk.length > length - got) throw new ModelFormatError(`${url} sent more than the ${length} bytes asked for at ${offset}`, file);
        out.set(chunk, got);
        got += chunk.length;
      });
      if (got < length) throw new Retryable(`the body ended after ${got} of ${length} bytes`);
      return out;
    });
  }

  /** The whole file as text, at most its small-file limit (src/formats/limits.ts). */
  async text(file: string): Promise<string> {
    const url = this.url(file);
    const limit = smallFileLimit(file);
    const bytes = await this.withRetries(file, url, undefined, async (call) => {
      const res = await call.fetch(this.fetchImpl, url, {});
      if (!res.ok) {
        discard(res);
        if (res.status === 404) throw new ModelFormatError(`not found at ${this.location}`, file);
        if (RETRY_STATUS.has(res.status)) throw new Retryable(`HTTP ${res.status}`);
        throw new ModelFormatError(`HTTP ${res.status} from ${url}`, file);
      }
      const declared = Number(res.headers.get('content-length') ?? NaN);
      if (declared > limit) {
        discard(res);
        throw tooLarge(file, declared, limit);
      }
      const chunks: Uint8Array[] = [];
      let n = 0;
      await call.body(res, (chunk) => {
        n += chunk.length;
        if (n > limit) throw tooLarge(file, undefined, limit);
        chunks.push(chunk);
      });
      const all = new Uint8Array(n);
      let at = 0;
      for (const c of chunks) {
        all.set(c, at);
        at += c.length;
      }
      return all;
    });
    return new TextDecoder().decode(bytes);
  }
}

/** One HTTP request with a timeout that starts over whenever data arrives, and the caller's signal. */
class Call {
  timedOut = false;
  private readonly controller = new AbortController();
  private timer: ReturnType<typeof setTimeout> | undefined;
  private readonly onAbort = () => this.controller.abort();

  constructor(
    private readonly timeoutMs: number,
    private readonly outer: AbortSignal | undefined,
  ) {
    outer?.addEventListener('abort', this.onAbort, { once: true });
    this.progress();
  }

  /** Data arrived: the timeout starts over. */
  private progress(): void {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timedOut = true;
      this.controller.abort();
    }, this.timeoutMs);
  }

  done(): void {
    clearTimeout(this.timer);
    this.outer?.removeEventListener('abort', this.onAbort);
  }

  async fetch(impl: typeof fetch, url: string, headers: Record<string, string>): Promise<Response> {
    const res = await impl(url, { headers, signal: this.controller.signal });
    this.progress();
    return res;
  }

  /** Hands each body chunk to `take` (which may throw to stop); the timeout starts over with each chunk. */
  async body(res: Response, take: (chunk: Uint8Array) => void): Promise<void> {
    if (!res.body) return;
    const reader = res.body.getReader();
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) return;
        this.progress();
        take(value);
      }
    } catch (error) {
      reader.cancel().catch(() => {});
      throw error;
    }
  }
}

/** Drops a response body that is not wanted (it may be endless). */
function discard(res: Response): void {
  res.body?.cancel().catch(() => {});
}

function sleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((done, fail) => {
    const onAbort = () => {
      clearTimeout(timer);
      fail(new AbortError('aborted'));
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      done();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/** fetch's failures in words: undici says `fetch failed` / `terminated` and keeps the reason in `cause`. */
function describeFailure(error: unknown): string {
  const e = error as { message?: string; cause?: { message?: string; code?: string } } | undefined;
  const cause = e?.cause?.message || e?.cause?.code;
  if (error instanceof Retryable) return error.message;
  if (e?.message === 'terminated') return `the connection dropped${cause ? ` (${cause})` : ''}`;
  if (e?.message === 'fetch failed') return `the request failed${cause ? ` (${cause})` : ''}`;
  return `${e?.message ?? String(error)}${cause ? ` (${cause})` : ''}`;
}

/** A folder path or an http(s) URL, as the CLI takes it. */
export const isUrl = (model: string): boolean => /^https?:\/\//i.test(model);
