import { stat } from 'node:fs/promises';
import process from 'node:process';
import { openCheckpoint } from '../formats/open.ts';
import type { Checkpoint } from '../formats/checkpoint.ts';
import { FileSource } from './file.ts';
import { type HubOptions, cacheModel } from './hf_model.ts';
import { type HttpOptions, HttpSource, isUrl } from './http.ts';
import { parseModelRef } from './hub.ts';

/**
 * A model as users name it: a folder, a URL of a folder or repository, a single .gguf file (local or URL), or
 * a Hugging Face hub id (ORG/NAME[@REVISION][:QUANT], see src/storage/hub.ts) read through the disk cache
 * (src/storage/hf_model.ts); a local path wins over a hub id of the same spelling. Node and Deno only (local
 * files come through node:fs). `http` sets the timeout and retries of URLs; `hub` the environment and progress
 * of hub downloads.
 */
export async function openModel(model: string, options: { http?: HttpOptions; hub?: HubOptions } = {}): Promise<Checkpoint> {
  const ref = isUrl(model) || (await stat(model).catch(() => undefined)) ? undefined : parseModelRef(model);
  if (ref) {
    const cached = await cacheModel(ref, { env: (name) => process.env[name], timeoutMs: options.http?.timeoutMs, ...options.hub });
    return openCheckpoint(new FileSource(cached.dir), cached.file);
  }
  const single = /\.gguf$/i.test(model.split('?')[0]);
  if (!single) return openCheckpoint(isUrl(model) ? new HttpSource(model, options.http) : new FileSource(model));
  const cut = model.lastIndexOf('/');
  const [dir, file] = cut < 0 ? ['.', model] : [model.slice(0, cut) || '/', model.slice(cut + 1)];
  return openCheckpoint(isUrl(model) ? new HttpSource(dir, options.http) : new FileSource(dir), decodeURIComponent(file));
}
