import type { PackedTensorInfo } from './packed_manifest.ts';

/**
 * Where writers put files (the packed writer, the Hugging Face exporter): supplied by the host so that
 * src/formats never touches a file system itself. Node and Deno: `FolderSink` (src/storage/file_sink.ts);
 * a browser can back it with OPFS.
 */
export interface OutputSink {
  /** A folder path or URL, for messages. */
  readonly location: string;
  /** Creates `name` (replacing any file of that name) for sequential writing. */
  create(name: string): Promise<SinkFile>;
  /** Renames a closed file, replacing `to` if it exists. Writers rename last to mark a file finished. */
  rename(from: string, to: string): Promise<void>;
  /** Removes `name`; does nothing when it does not exist. */
  remove(name: string): Promise<void>;
  /**
   * A sink that keeps what an interrupted conversion wrote (the browser's model store): the tensor's items
   * read back when it holds all of them at the places the layout gives, so they are not converted again.
   */
  storedItems?(tensor: PackedTensorInfo): AsyncIterable<Uint8Array> | undefined;
}

export interface SinkFile {
  /** Appends `bytes`; the caller may reuse the buffer once the promise resolves. */
  write(bytes: Uint8Array): Promise<void>;
  close(): Promise<void>;
}

/** The name a file is written under until it is complete. */
export const partialName = (name: string): string => `${name}.partial`;
