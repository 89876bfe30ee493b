import { mkdir, open, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { OutputSink, SinkFile } from '../formats/packed_sink.ts';

/** Writes files into a local folder (created when missing). Node and Deno both provide node:fs. */
export class FolderSink implements OutputSink {
  private ready: Promise<unknown> | undefined;

  constructor(readonly location: string) {}

  async create(name: string): Promise<SinkFile> {
    this.ready ??= mkdir(this.location, { recursive: true });
    await this.ready;
    const handle = await open(join(this.location, name), 'w');
    return {
      async write(bytes) {
        for (let done = 0; done < bytes.length; ) {
          const { bytesWritten } = await handle.write(bytes, done, bytes.length - done);
          done += bytesWritten;
        }
      },
      close: () => handle.close(),
    };
  }

  rename(from: string, to: string): Promise<void> {
    return rename(join(this.location, from), join(this.location, to));
  }

  remove(name: string): Promise<void> {
    return rm(join(this.location, name), { force: true });
  }
}
