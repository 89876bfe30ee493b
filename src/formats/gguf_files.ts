import { ModelFormatError } from '../errors.ts';
import { checkSmallFile } from './limits.ts';
import type { WeightSource } from './source.ts';

/**
 * A WeightSource of files made on demand (JSON synthesised from GGUF metadata): each is built once, on its
 * first use, so a tokenizer that is never loaded is never built.
 */
export class SynthesizedFiles implements WeightSource {
  private readonly made = new Map<string, Uint8Array>();

  constructor(
    readonly location: string,
    private readonly makers: Record<string, () => unknown>,
  ) {}

  async has(file: string): Promise<boolean> {
    return Object.hasOwn(this.makers, file);
  }

  private bytes(file: string): Uint8Array {
    let bytes = this.made.get(file);
    if (!bytes) {
      if (!Object.hasOwn(this.makers, file)) {
        throw new ModelFormatError(`not provided by ${this.location} (a GGUF checkpoint provides ${Object.keys(this.makers).join(', ')})`, file);
      }
      bytes = new TextEncoder().encode(JSON.stringify(this.makers[file](), null, 1));
      this.made.set(file, bytes);
    }
    return bytes;
  }

  async size(file: string): Promise<number> {
    return this.bytes(file).length;
  }

  async read(file: string, offset: number, length: number): Promise<Uint8Array> {
    const bytes = this.bytes(file);
    if (offset < 0 || length < 0 || offset + length > bytes.length) {
      throw new ModelFormatError(`truncated: wanted bytes ${offset}..${offset + length}, file ends at ${bytes.length}`, file);
    }
    return bytes.slice(offset, offset + length);
  }

  async text(file: string): Promise<string> {
    const bytes = this.bytes(file);
    checkSmallFile(file, bytes.length);
    return new TextDecoder().decode(bytes);
  }
}
