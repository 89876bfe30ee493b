import { ModelFormatError } from '../errors.ts';

const MiB = 1024 * 1024;

/**
 * The most bytes the engine reads of each small file (the JSON and template files beside the weights). Real
 * ones are far smaller (Qwen3.5's tokenizer.json is 12 MB, a 397B model's index under 10 MB); a larger one, or
 * a server that sends an endless body, is refused with the file and the limit named instead of read into
 * memory without end.
 */
export const SMALL_FILE_LIMITS: Readonly<Record<string, number>> = {
  'config.json': 4 * MiB,
  'generation_config.json': 1 * MiB,
  'tokenizer.json': 64 * MiB,
  'tokenizer_config.json': 16 * MiB,
  'chat_template.jinja': 4 * MiB,
  'model.safetensors.index.json': 64 * MiB,
  'qwen-webgpu.json': 64 * MiB,
};

/** Any other small file (special_tokens_map.json, vocab files, ...). */
export const DEFAULT_SMALL_FILE_LIMIT = 16 * MiB;

export function smallFileLimit(file: string): number {
  return SMALL_FILE_LIMITS[file.split('/').pop() ?? file] ?? DEFAULT_SMALL_FILE_LIMIT;
}

export const formatBytes = (n: number): string => (n >= MiB && n % MiB === 0 ? `${n / MiB} MiB` : `${n} bytes`);

/** The error for a small file past its limit: `bytes` is its size, or undefined when its body did not end. */
export function tooLarge(file: string, bytes: number | undefined, limit = smallFileLimit(file)): ModelFormatError {
  const size = bytes === undefined ? `more than ${formatBytes(limit)} arrived` : `${bytes} bytes`;
  return new ModelFormatError(`${size}; the engine reads at most ${formatBytes(limit)} of a ${file.split('/').pop()} (is it the right file?)`, file);
}

/** Throws tooLarge when `bytes` is past the file's limit. */
export function checkSmallFile(file: string, bytes: number): void {
  if (bytes > smallFileLimit(file)) throw tooLarge(file, bytes);
}
