import { open, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { ModelFormatError } from '../errors.ts';
import { checkSmallFile } from '../formats/limits.ts';
import type { WeightSource } from '../formats/source.ts';

/** Model files in a local folder (Node and Deno both provide node:fs). */
export class FileSource implements WeightSource {
  constructor(readonly location: string) {}

  async has(file: string): Promise<boolean> {
    return stat(join(this.location, file)).then(
      (s) => s.isFile(),
      () => false,
    );
  }

  async size(file: string): Promise<number> {
    try {
      return (await stat(join(this.location, file))).size;
    } catch {
      throw new ModelFormatError(`missing from ${this.location}`, file);
    }
  }

  async read(file: string, offset: number, length: number): Promise<Uint8Array> {
    const handle = await open(join(this.location, file), 'r').catch(() => {
      throw new ModelFormatError(`missing from ${this.location}`, file);
    });
    try {
      const out = new Uint8Array(length);
      let done = 0;
      while (done < length) {
        const { bytesRead } = await handle.read(out, done, length - done, offset + done);
        if (bytesRead === 0) throw new ModelFormatError(`truncated: wanted bytes ${offset}..${offset + length}, file ends at ${offset + done}`, file);
        done += bytesRead;
      }
      return out;
    } finally {
      await handle.close();
    }
  }

  /** The whole file as text, at most its small-file limit (src/formats/limits.ts). */
  async text(file: string): Promise<string> {
    checkSmallFile(file, await this.size(file));
    return readFile(join(this.location, file), 'utf8').catch(() => {
      throw new ModelFormatError(`missing from ${this.location}`, file);
    });
  }
}
