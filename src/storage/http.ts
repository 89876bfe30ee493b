import { ModelFormatError } from '../gpu/errors.ts';
import type { WeightSource } from './source.ts';

/**
 * Model files on an HTTP(S) server, read with Range requests. A Hugging Face repository URL
 * (https://huggingface.co/ORG/NAME) is read from its `resolve/main/` files.
 */
export class HttpSource implements WeightSource {
  readonly location: string;
  private readonly sizes = new Map<string, Promise<number | undefined>>();

  constructor(url: string, private readonly fetchImpl: typeof fetch = globalThis.fetch.bind(globalThis)) {
    const u = new URL(url);
    if (u.hostname === 'huggingface.co' && !u.pathname.includes('/resolve/') && u.pathname.split('/').filter(Boolean).length === 2) {
      u.pathname = `${u.pathname.replace(/\/$/, '')}/resolve/main`;
    }
    this.location = u.href.replace(/\/$/, '');
  }

  private url(file: string): string {
    return `${this.location}/${file.split('/').map(encodeURIComponent).join('/')}`;
  }

  private probe(file: string): Promise<number | undefined> {
    let pending = this.sizes.get(file);
    if (!pending) {
      pending = (async () => {
        const res = await this.fetchImpl(this.url(file), { headers: { Range: 'bytes=0-0' } });
        await res.body?.cancel();
        if (res.status === 404) return undefined;
        if (!res.ok) throw new ModelFormatError(`HTTP ${res.status} from ${this.url(file)}`, file);
        const total = /\/(\d+)$/.exec(res.headers.get('content-range') ?? '')?.[1] ?? (res.status === 200 ? res.headers.get('content-length') : null);
        if (total === null || total === undefined) throw new ModelFormatError(`server did not report the size of ${this.url(file)}`, file);
        return Number(total);
      })();
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
    const res = await this.fetchImpl(this.url(file), { headers: { Range: `bytes=${offset}-${offset + length - 1}` }, signal });
    if (res.status === 404) throw new ModelFormatError(`not found at ${this.location}`, file);
    if (res.status !== 206) {
      await res.body?.cancel();
      throw new ModelFormatError(`HTTP ${res.status} for a byte range of ${this.url(file)} (the server must support Range requests)`, file);
    }
    const bytes = new Uint8Array(await res.arrayBuffer());
    if (bytes.length !== length) {
      throw new ModelFormatError(`truncated: wanted ${length} bytes at ${offset}, got ${bytes.length}`, file);
    }
    return bytes;
  }

  async text(file: string): Promise<string> {
    const res = await this.fetchImpl(this.url(file));
    if (!res.ok) {
      await res.body?.cancel();
      throw new ModelFormatError(res.status === 404 ? `not found at ${this.location}` : `HTTP ${res.status} from ${this.url(file)}`, file);
    }
    return res.text();
  }
}

/** A folder path or an http(s) URL, as the CLI takes it. */
export const isUrl = (model: string): boolean => /^https?:\/\//i.test(model);
