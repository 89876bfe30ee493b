/**
 * The browser's model store as the sink of a conversion (src/model/convert.ts): a Hugging Face or GGUF
 * checkpoint, read over HTTP and quantised on the GPU tensor by tensor, lands in IndexedDB as the records of
 * the packed model it becomes — the records, meta and 'complete' marker that storing that packed model gives
 * (idb_store.ts), never a copy of the source — so its experts stream from IndexedDB as a packed model's do.
 *
 * The layout is known before any weight is read (`planPackedModel`), so every record has its place from the
 * start: a shard's records are written whole as the writer fills them, a record already stored is kept, and
 * a conversion that is interrupted resumes — the tensors stored whole are read back instead of converted.
 */
import { ContractError, ModelFormatError } from '../errors.ts';
import { PACKED_MANIFEST, type PackedManifest, type PackedTensorInfo } from '../formats/packed_manifest.ts';
import { type OutputSink, type SinkFile, partialName } from '../formats/packed_sink.ts';
import {
  type CompleteMarker,
  type StoredFile,
  type StoredModelMeta,
  chunkKey,
  completeKey,
  doneKey,
  expertItems,
  layoutRecords,
  metaKey,
  modelRange,
  packedStoredFiles,
  recordAt,
  recordEnd,
  request,
} from './idb_records.ts';
import { checkQuota, deleteModel, modelId, putRecord } from './idb_store.ts';

/** The store id of `url` converted to `dtype`: apart from the source itself, which may be stored too. */
export const convertedModelId = (url: string, dtype: string): string => `${modelId(url)}#${dtype}`;

/** What the conversion will write (src/model/convert.ts's PackedLayout). */
export interface ConversionLayout {
  tensors: PackedTensorInfo[];
  shards: { name: string; bytes: number }[];
  files: { name: string; bytes: number }[];
  bytes: number;
}

export class IdbConversionSink implements OutputSink {
  readonly location: string;
  /** The shards in order (a run's `shard` indexes them), and by name. */
  private readonly shardList: StoredFile[];
  private readonly shards: Map<string, StoredFile>;
  /** Bytes of each non-shard file written (the manifest's are needed for the meta). */
  private readonly written = new Map<string, number>();

  private constructor(
    private readonly meta: StoredModelMeta,
    shardCount: number,
    /** Record indices stored per file. */
    private readonly stored: Map<string, Set<number>>,
  ) {
    this.location = meta.url;
    this.shardList = meta.files.slice(0, shardCount);
    this.shards = new Map(this.shardList.map((f) => [f.name, f]));
  }

  /**
   * Starts or resumes converting into model `id` (`url`: where the source is). The quota is checked
   * against what is still to write before anything is stored; a stored layout that differs (the source
   * changed) starts again.
   */
  static async open(id: string, url: string, layout: ConversionLayout): Promise<IdbConversionSink> {
    const experts = expertItems(layout);
    const files: StoredFile[] = [
      ...layout.shards.map((s) => ({ ...s, starts: layoutRecords(s.bytes, experts.get(s.name)) })),
      ...layout.files.map((f) => ({ ...f, starts: layoutRecords(f.bytes) })),
    ];
    const meta: StoredModelMeta = { id, url, format: 'packed', files, bytes: layout.bytes, date: new Date().toISOString() };
    const old = await request<StoredModelMeta | undefined>('readonly', (s) => s.get(metaKey(id)));
    const changed = old !== undefined && JSON.stringify(old.files) !== JSON.stringify(files);
    if (changed) await deleteModel(id);
    const stored = new Map<string, Set<number>>();
    const keys = old && !changed ? await request<IDBValidKey[]>('readonly', (s) => s.getAllKeys(modelRange('chunk', id))) : [];
    for (const key of keys) {
      const [, , file, index] = key as [string, string, string, number];
      if (!stored.has(file)) stored.set(file, new Set());
      stored.get(file)!.add(index);
    }
    const storedBytes = files.reduce((sum, f) => sum + [...(stored.get(f.name) ?? [])].reduce((n, i) => n + recordEnd(f, i) - f.starts[i], 0), 0);
    await checkQuota(layout.bytes - storedBytes);
    if (!old || changed) await request('readwrite', (s) => s.put(meta, metaKey(id)));
    else meta.date = old.date;
    return new IdbConversionSink(meta, layout.shards.length, stored);
  }

  async create(name: string): Promise<SinkFile> {
    // Records are keyed by the final name from the start: the 'complete' marker, not a rename, finishes a model.
    const file = name.endsWith(partialName('')) ? name.slice(0, -partialName('').length) : name;
    const shard = this.shards.get(file);
    return shard ? this.shardFile(shard) : this.smallFile(file);
  }

  async rename(): Promise<void> {}

  /** Nothing is removed: what an interrupted conversion stored is kept for the next one to resume from. */
  async remove(): Promise<void> {}

  storedItems(tensor: PackedTensorInfo): AsyncIterable<Uint8Array> | undefined {
    const pieces = tensor.runs.map((run) => {
      const f = this.shardList[run.shard];
      const start = run.offset;
      const end = run.offset + run.count * tensor.itemBytes;
      return { f, start, end, first: recordAt(f.starts, start), last: recordAt(f.starts, end - 1) };
    });
    const have = this.stored;
    const whole = pieces.every((p) => {
      for (let i = p.first; i <= p.last; i++) if (!have.get(p.f.name)?.has(i)) return false;
      return true;
    });
    if (!whole) return undefined;
    const id = this.meta.id;
    return (async function* () {
      for (const p of pieces) {
        for (let i = p.first; i <= p.last; i++) {
          const record = await request<ArrayBuffer | undefined>('readonly', (s) => s.get(chunkKey(id, p.f.name, i)));
          if (!record) throw new ModelFormatError(`IndexedDB lost its record ${i} (was it cleared?)`, p.f.name);
          const from = Math.max(p.start, p.f.starts[i]);
          const to = Math.min(p.end, recordEnd(p.f, i));
          yield new Uint8Array(record, from - p.f.starts[i], to - from);
        }
      }
    })();
  }

  /**
   * Writes the meta of the finished packed model (what storing it would give: the manifest and every file
   * with its sha256), each file's 'done' record, and last the 'complete' marker.
   */
  async complete(manifest: PackedManifest): Promise<void> {
    const manifestBytes = this.written.get(PACKED_MANIFEST);
    if (manifestBytes === undefined) throw new ContractError(`${this.location}: the manifest was not written`, 'IdbConversionSink');
    const files = packedStoredFiles(manifest, manifestBytes);
    for (const f of files) {
      const planned = this.shards.get(f.name);
      if (planned && JSON.stringify(planned.starts) !== JSON.stringify(f.starts))
        throw new ContractError(`${f.name}: the writer laid out records other than planned`, 'IdbConversionSink');
    }
    const meta: StoredModelMeta = { ...this.meta, files, bytes: files.reduce((sum, f) => sum + f.bytes, 0) };
    await request('readwrite', (s) => s.put(meta, metaKey(meta.id)));
    for (const f of files) await request('readwrite', (s) => s.put(true, doneKey(meta.id, f.name)));
    await request('readwrite', (s) => s.put({ date: new Date().toISOString() } satisfies CompleteMarker, completeKey(meta.id)));
  }

  /** A shard: each record is written once the writer has filled it (a record stored already is skipped). */
  private shardFile(f: StoredFile): SinkFile {
    const id = this.meta.id;
    if (!this.stored.has(f.name)) this.stored.set(f.name, new Set());
    const have = this.stored.get(f.name)!;
    let record = 0;
    let buffer = new Uint8Array(recordEnd(f, 0));
    let filled = 0;
    let at = 0;
    return {
      async write(bytes) {
        for (let k = 0; k < bytes.length; ) {
          if (record >= f.starts.length) throw new ContractError(`${f.name}: more than the ${f.bytes} bytes planned`, 'IdbConversionSink');
          const n = Math.min(buffer.length - filled, bytes.length - k);
          buffer.set(bytes.subarray(k, k + n), filled);
          filled += n;
          k += n;
          at += n;
          if (filled < buffer.length) continue;
          if (!have.has(record)) {
            await putRecord(chunkKey(id, f.name, record), buffer.buffer, f.bytes - f.starts[record]);
            have.add(record);
          }
          record++;
          filled = 0;
          if (record < f.starts.length) buffer = new Uint8Array(recordEnd(f, record) - f.starts[record]);
        }
      },
      async close() {
        if (at !== f.bytes) throw new ContractError(`${f.name}: ${at} bytes written of the ${f.bytes} planned`, 'IdbConversionSink');
      },
    };
  }

  /** A file beside the weights, or the manifest: small, kept until closed, then stored whole. */
  private smallFile(name: string): SinkFile {
    const parts: Uint8Array[] = [];
    const id = this.meta.id;
    return {
      write: async (bytes) => {
        parts.push(bytes.slice());
      },
      close: async () => {
        const bytes = new Uint8Array(parts.reduce((sum, p) => sum + p.length, 0));
        let at = 0;
        for (const p of parts) {
          bytes.set(p, at);
          at += p.length;
        }
        const starts = layoutRecords(bytes.length);
        for (const [i, start] of starts.entries()) {
          const end = i + 1 < starts.length ? starts[i + 1] : bytes.length;
          await putRecord(chunkKey(id, name, i), bytes.slice(start, end).buffer, bytes.length - start);
        }
        this.written.set(name, bytes.length);
      },
    };
  }
}
