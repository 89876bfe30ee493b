import { openCheckpoint } from '../formats/open.ts';
import type { Checkpoint } from '../formats/checkpoint.ts';
import { FileSource } from './file.ts';
import { type HttpOptions, HttpSource, isUrl } from './http.ts';

/**
 * A model as users name it: a folder, a URL of a folder or repository, or a single .gguf file (local or
 * URL). Node and Deno only (local files come through node:fs). `http` sets the timeout and retries of URLs.
 */
export function openModel(model: string, options: { http?: HttpOptions } = {}): Promise<Checkpoint> {
  const single = /\.gguf$/i.test(model.split('?')[0]);
  if (!single) return openCheckpoint(isUrl(model) ? new HttpSource(model, options.http) : new FileSource(model));
  const cut = model.lastIndexOf('/');
  const [dir, file] = cut < 0 ? ['.', model] : [model.slice(0, cut) || '/', model.slice(cut + 1)];
  return openCheckpoint(isUrl(model) ? new HttpSource(dir, options.http) : new FileSource(dir), decodeURIComponent(file));
}
