import { ModelFormatError, StorageError, throwIfAborted } from '../errors.ts';
import { type CompleteMarker, type StoredFile, type StoredModelMeta, chunkRange, completeKey, metaKey, recordAt, recordEnd, request } from './idb_records.ts';
import { checkSmallFile } from '../formats/limits.ts';
import type { WeightSource } from '../formats/source.ts';

/**
 * A model stored in IndexedDB by the model store (idb_store.ts), read as any other WeightSource: a range
 * read fetches only the records that overlap it, in one getAll over their key range, so it never loads a
 * whole shard, and a packed model's expert is exactly one record (the expert source streams from here).
 */
export class IdbSource implements WeightSource {
  readonly location: string;
  private readonly files: Map<string, StoredFile>;

  private constructor(readonly meta: StoredModelMeta) {
    this.location = meta.url;
    this.files = new Map(meta.files.map((f) => [f.name, f]));
  }

  /** Opens stored model `id`; only a complete one (its 'complete' marker written) opens. Makes no network request. */
  static async open(id: string): Promise<IdbSource> {
    const [meta, complete] = await Promise.all([
      request<StoredModelMeta | undefined>('readonly', (s) => s.get(metaKey(id))),
      request<CompleteMarker | undefined>('readonly', (s) => s.get(completeKey(id))),
    ]);
    if (!meta || !complete) throw new StorageError(`${id} is not a complete model in IndexedDB (download it with load({ model, store: true }))`);
    return new IdbSource(meta);
  }

  async has(file: string): Promise<boolean> {
    return this.files.has(file);
  }

  async size(file: string): Promise<number> {
    return this.entry(file).bytes;
  }

  async read(file: string, offset: number, length: number, signal?: AbortSignal): Promise<Uint8Array> {
    const f = this.entry(file);
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > f.bytes) {
      throw new ModelFormatError(`bytes ${offset}..${offset + length} are past its end (${f.bytes})`, file);
    }
    if (length === 0) return new Uint8Array(0);
    throwIfAborted(signal);
    const first = recordAt(f.starts, offset);
    const last = recordAt(f.starts, offset + length - 1);
    const records = await request<ArrayBuffer[]>('readonly', (s) => s.getAll(chunkRange(this.meta.id, file, first, last)));
    if (records.length !== last - first + 1) {
      throw new ModelFormatError(`IndexedDB holds ${records.length} of its records ${first}..${last} (was it cleared?)`, file);
    }
    // One whole record: hand its buffer over as it is (it starts at byte 0 of its own buffer).
    if (records.length === 1 && f.starts[first] === offset && recordEnd(f, first) === offset + length) return new Uint8Array(records[0]);
    const out = new Uint8Array(length);
    records.forEach((buffer, k) => {
      const start = f.starts[first + k];
      const from = Math.max(offset, start);
      const to = Math.min(offset + length, recordEnd(f, first + k));
      if (buffer.byteLength !== recordEnd(f, first + k) - start)
        throw new ModelFormatError(`record ${first + k} in IndexedDB has ${buffer.byteLength} bytes, not ${recordEnd(f, first + k) - start}`, file);
      out.set(new Uint8Array(buffer, from - start, to - from), from - offset);
    });
    return out;
  }

  async text(file: string): Promise<string> {
    checkSmallFile(file, this.entry(file).bytes);
    return new TextDecoder().decode(await this.read(file, 0, this.entry(file).bytes));
  }

  private entry(file: string): StoredFile {
    const f = this.files.get(file);
    if (!f) throw new ModelFormatError(`not found in the stored model ${this.location}`, file);
    return f;
  }
}
