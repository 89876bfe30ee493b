import { ModelFormatError } from '../errors.ts';
import type { WeightSource } from './source.ts';
import type { Checkpoint } from './checkpoint.ts';
import { openGgufCheckpoint } from './gguf.ts';
import { isPackedModel, openPacked } from './packed_reader.ts';
import { openSafetensorsCheckpoint } from './safetensors.ts';

/**
 * The one way in to a model: `file` names a single-file format inside `source` (a .gguf file); otherwise
 * `source` is the engine's packed model (it has a qwen-webgpu.json manifest) or a Hugging Face folder.
 */
export async function openCheckpoint(source: WeightSource, file?: string): Promise<Checkpoint> {
  if (file !== undefined) {
    if (/\.gguf$/i.test(file)) return openGgufCheckpoint(source, file);
    throw new ModelFormatError('is not a single-file format this engine reads (GGUF, .gguf)', file);
  }
  if (await isPackedModel(source)) {
    const packed = await openPacked(source);
    return { location: packed.location, files: packed.files, tensors: new Map(), packed };
  }
  return openSafetensorsCheckpoint(source);
}
