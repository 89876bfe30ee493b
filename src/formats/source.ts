import { ModelFormatError } from '../errors.ts';

/**
 * Where model files come from. One interface for a local folder, an HTTP(S) server and (in the browser)
 * IndexedDB: the loader reads every file through it, in pieces, and never holds a whole weight file.
 */
export interface WeightSource {
  /** A folder path or URL, for messages. */
  readonly location: string;
  /** Whether `file` exists. */
  has(file: string): Promise<boolean>;
  /** Size of `file` in bytes; throws ModelFormatError naming the file when it is missing. */
  size(file: string): Promise<number>;
  /** Exactly `length` bytes of `file` from `offset`; throws ModelFormatError when the file is shorter. */
  read(file: string, offset: number, length: number, signal?: AbortSignal): Promise<Uint8Array>;
  text(file: string): Promise<string>;
}

export async function readJson(source: WeightSource, file: string): Promise<unknown> {
  const text = await source.text(file);
  try {
    return JSON.parse(text);
  } catch (error) {
    throw new ModelFormatError(`not valid JSON (${(error as Error).message})`, file, undefined, { cause: error });
  }
}
