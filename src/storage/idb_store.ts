/**
 * The browser's model store: downloads a model (a packed model or a Hugging Face folder, or one .gguf file)
 * from a URL into IndexedDB (idb_records.ts says how it is laid out), resumably, then serves it as an
 * IdbSource, so the loader has one path whatever the source and a stored model needs no network.
 *
 * A download walks the files in order; each file's records are written in order, so what is stored is a
 * prefix of whole records, and a later call asks the server for the rest (HTTP Range from the first missing
 * record). A packed model's shards are then checked against the manifest's sha256, read back from IndexedDB.
 * The 'complete' marker is written last: a model interrupted anywhere before it is listed, but incomplete.
 */
import { ModelFormatError, QuotaError, StorageError, throwIfAborted } from '../errors.ts';
import { PACKED_MANIFEST } from '../formats/packed_manifest.ts';
import { readManifest } from '../formats/packed_reader.ts';
import { Sha256 } from '../formats/sha256.ts';
import { HttpSource } from './http.ts';
import { IdbSource } from './idb_source.ts';
import {
  type CompleteMarker,
  type StoredFile,
  type StoredModelMeta,
  chunkKey,
  completeKey,
  doneKey,
  layoutRecords,
  metaKey,
  modelRange,
  modelsStore,
  packedStoredFiles,
  recordEnd,
  request,
} from './idb_records.ts';

export type StorePhase = 'download' | 'verify';

export interface StoreProgress {
  phase: StorePhase;
  /** The file being downloaded or checked. */
  file: string;
  /** Bytes of the whole model stored (download) or checked (verify) so far, and in all. */
  doneBytes: number;
  totalBytes: number;
  /** Measured over this call's transfer (0 until bytes arrive). */
  bytesPerSecond: number;
  /** At that rate; Infinity until it is known. */
  secondsLeft: number;
}

export interface StoredModel {
  id: string;
  url: string;
  bytes: number;
  /** Every file stored and checked, and the 'complete' marker written. */
  complete: boolean;
  /** When its download started (ISO 8601). */
  date: string;
}

export interface DownloadOptions {
  onProgress?: (p: StoreProgress) => void;
  signal?: AbortSignal;
  fetch?: typeof fetch;
}

/** Files of a Hugging Face folder beside the weights (config.json is required, the rest are read when present). */
const HF_SIDE_FILES = ['tokenizer.json', 'tokenizer_config.json', 'generation_config.json', 'chat_template.jinja'];
/** Progress calls at most this often while bytes stream (file ends always report). */
const PROGRESS_MS = 100;

/** The id of the model at `url` (a folder, or a .gguf file): its normalised URL, as HttpSource reads it. */
export function modelId(url: string): string {
  const u = new URL(url);
  if (/\.gguf$/i.test(u.pathname)) return u.href;
  return new HttpSource(u.href).location;
}

/** Every stored model, complete or not, by id. */
export async function listModels(): Promise<StoredModel[]> {
  const [metas, completes] = await Promise.all([
    request<StoredModelMeta[]>('readonly', (s) => s.getAll(IDBKeyRange.bound(['meta'], ['meta', []]))),
    request<IDBValidKey[]>('readonly', (s) => s.getAllKeys(IDBKeyRange.bound(['complete'], ['complete', []]))),
  ]);
  const complete = new Set(completes.map((k) => (k as string[])[1]));
  return metas.map((m) => ({ id: m.id, url: m.url, bytes: m.bytes, complete: complete.has(m.id), date: m.date }));
}

/** Removes every record of model `id`; false when nothing was stored under it. */
export async function deleteModel(id: string): Promise<boolean> {
  const meta = await request<StoredModelMeta | undefined>('readonly', (s) => s.get(metaKey(id)));
  await modelsStore()('readwrite', (s) => {
    // The marker goes first within the transaction; all deletes commit together anyway.
    s.delete(completeKey(id));
    s.delete(modelRange('done', id));
    s.delete(modelRange('chunk', id));
    s.delete(metaKey(id));
    return new Promise<void>((resolve, reject) => {
      s.transaction.oncomplete = () => resolve();
      s.transaction.onerror = s.transaction.onabort = () => reject(s.transaction.error);
    });
  });
  return meta !== undefined;
}

export async function isComplete(id: string): Promise<boolean> {
  return (await request<CompleteMarker | undefined>('readonly', (s) => s.get(completeKey(id)))) !== undefined;
}

/**
 * The model at `url` from IndexedDB: opened at once when it is stored complete (no network request at all),
 * else downloaded (or resumed) and checked first.
 */
export async function storedModel(url: string, options: DownloadOptions = {}): Promise<IdbSource> {
  const id = modelId(url);
  if (!(await isComplete(id))) await downloadModel(url, options);
  return IdbSource.open(id);
}

/** Downloads (or resumes) the model at `url` into IndexedDB and writes its 'complete' marker. */
export async function downloadModel(url: string, options: DownloadOptions = {}): Promise<StoredModelMeta> {
  const { signal } = options;
  const fetchImpl = options.fetch ?? globalThis.fetch.bind(globalThis);
  const id = modelId(url);
  const { meta, prefetched } = await planModel(id, fetchImpl, signal);
  const old = await request<StoredModelMeta | undefined>('readonly', (s) => s.get(metaKey(id)));
  // A model that changed on the server since an interrupted download starts again.
  const changed = old !== undefined && JSON.stringify(old.files) !== JSON.stringify(meta.files);
  if (changed) await deleteModel(id);

  // What is stored already: whole files, and each other file's prefix of records.
  const state = await Promise.all(
    meta.files.map(async (f) => {
      const done = (await request<unknown>('readonly', (s) => s.get(doneKey(id, f.name)))) !== undefined;
      const keys = done ? [] : await request<IDBValidKey[]>('readonly', (s) => s.getAllKeys(chunkRangeOf(id, f)));
      let records = 0;
      const have = new Set(keys.map((k) => (k as [string, string, string, number])[3]));
      while (have.has(records)) records++;
      return { done, records };
    }),
  );
  const storedBytes = (f: StoredFile, i: number) => (state[i].done ? f.bytes : state[i].records === 0 ? 0 : recordEnd(f, state[i].records - 1));
  const haveBytes = meta.files.reduce((sum, f, i) => sum + storedBytes(f, i), 0);
  // Before anything is written: a model that cannot fit leaves no trace.
  await checkQuota(meta.bytes - haveBytes);
  if (!old || changed) await request('readwrite', (s) => s.put(meta, metaKey(id)));
  else meta.date = old.date;

  const rate = new Rate(meta.bytes, haveBytes);
  let lastReport = 0;
  const report = (phase: StorePhase, file: string, doneBytes: number, totalBytes: number, force: boolean) => {
    const now = performance.now();
    if (!options.onProgress || (!force && now - lastReport < PROGRESS_MS)) return;
    lastReport = now;
    const { bytesPerSecond, secondsLeft } = phase === 'download' ? rate.at(doneBytes) : { bytesPerSecond: 0, secondsLeft: 0 };
    options.onProgress({ phase, file, doneBytes, totalBytes, bytesPerSecond, secondsLeft });
  };

  let doneBytes = haveBytes;
  for (const [i, f] of meta.files.entries()) {
    if (state[i].done) continue;
    const before = storedBytes(f, i);
    await downloadFile(meta, f, state[i].records, prefetched.get(f.name), fetchImpl, signal, (n) => {
      report('download', f.name, doneBytes + n - before, meta.bytes, n === f.bytes);
    });
    doneBytes += f.bytes - before;
    if (f.sha256 === undefined) await request('readwrite', (s) => s.put(true, doneKey(id, f.name)));
  }

  const toVerify = meta.files.filter((f, i) => f.sha256 !== undefined && !state[i].done);
  const verifyBytes = toVerify.reduce((sum, f) => sum + f.bytes, 0);
  let verified = 0;
  for (const f of toVerify) {
    await verifyFile(meta, f, signal, (n) => report('verify', f.name, verified + n, verifyBytes, n === f.bytes));
    verified += f.bytes;
    await request('readwrite', (s) => s.put(true, doneKey(id, f.name)));
  }
  await request('readwrite', (s) => s.put({ date: new Date().toISOString() } satisfies CompleteMarker, completeKey(id)));
  return meta;
}

const chunkRangeOf = (id: string, f: StoredFile) => IDBKeyRange.bound(chunkKey(id, f.name, 0), chunkKey(id, f.name, f.starts.length));

/** What to download: every file with its size and record layout (a few small requests; nothing is stored). */
async function planModel(id: string, fetchImpl: typeof fetch, signal?: AbortSignal): Promise<{ meta: StoredModelMeta; prefetched: Map<string, Uint8Array> }> {
  const gguf = /\.gguf$/i.test(new URL(id).pathname) ? decodeURIComponent(id.split('/').pop()!) : undefined;
  const source = new HttpSource(gguf ? id.slice(0, id.lastIndexOf('/') + 1) : id, fetchImpl);
  const prefetched = new Map<string, Uint8Array>();
  const plain = async (names: string[], optional: boolean): Promise<StoredFile[]> => {
    const found = await Promise.all(names.map(async (name) => (!optional || (await source.has(name)) ? { name, bytes: await source.size(name) } : undefined)));
    return found.filter((f) => f !== undefined).map((f) => ({ ...f, starts: layoutRecords(f.bytes) }));
  };
  let format: StoredModelMeta['format'];
  let files: StoredFile[];
  throwIfAborted(signal);
  if (gguf !== undefined) {
    format = 'gguf';
    files = await plain([gguf], false);
  } else if (await source.has(PACKED_MANIFEST)) {
    format = 'packed';
    const { manifest, bytes } = await readManifest(source, signal);
    prefetched.set(PACKED_MANIFEST, bytes);
    files = packedStoredFiles(manifest, bytes.length);
  } else {
    format = 'hf';
    const side = [...(await plain(['config.json'], false)), ...(await plain(HF_SIDE_FILES, true))];
    let weights: string[] = ['model.safetensors'];
    if (await source.has('model.safetensors.index.json')) {
      const text = await source.text('model.safetensors.index.json');
      let map: unknown;
      try {
        map = (JSON.parse(text) as { weight_map?: unknown } | null)?.weight_map;
      } catch (error) {
        throw new ModelFormatError(`not valid JSON (${(error as Error).message})`, 'model.safetensors.index.json', undefined, { cause: error });
      }
      if (typeof map !== 'object' || map === null) throw new ModelFormatError('has no weight_map object', 'model.safetensors.index.json');
      weights = ['model.safetensors.index.json', ...new Set(Object.values(map as Record<string, string>))];
    }
    files = [...side, ...(await plain(weights, false))];
  }
  const meta: StoredModelMeta = {
    id,
    url: gguf !== undefined ? id : source.location,
    format,
    files,
    bytes: files.reduce((sum, f) => sum + f.bytes, 0),
    date: new Date().toISOString(),
    ...(gguf !== undefined ? { gguf } : {}),
  };
  return { meta, prefetched };
}

/** Quota left for this origin against what the download still needs (a QuotaError names both). */
export async function checkQuota(needed: number): Promise<void> {
  const storage = (globalThis.navigator as Navigator | undefined)?.storage;
  if (!storage?.estimate || needed <= 0) return;
  const { quota, usage } = await storage.estimate();
  if (quota === undefined) return;
  const available = Math.max(0, quota - (usage ?? 0));
  if (needed > available) throw quotaError(needed, available);
}

const quotaError = (needed: number, available: number) =>
  new QuotaError(
    `the model still needs ${needed} bytes of storage but navigator.storage.estimate() says this origin has ${available} bytes available (free space, or delete stored models)`,
    needed,
    available,
  );

/** Wraps a write that fails for lack of space into the same clear QuotaError; any other failure into a StorageError. */
export async function putRecord(key: IDBValidKey, value: ArrayBuffer, stillNeeded: number): Promise<void> {
  try {
    await request('readwrite', (s) => s.put(value, key));
  } catch (error) {
    if ((error as DOMException)?.name !== 'QuotaExceededError')
      throw new StorageError(`IndexedDB refused a write: ${(error as Error)?.message ?? String(error)}`, { cause: error });
    const { quota, usage } = (await globalThis.navigator?.storage?.estimate?.()) ?? {};
    const available = Math.max(0, (quota ?? 0) - (usage ?? 0));
    // The estimate can be coarse (incognito reports a fixed quota): the refused write is what counts.
    throw new QuotaError(
      `IndexedDB refused a write (QuotaExceededError): the model still needs ${stillNeeded} bytes of storage and this origin's quota is used up ` +
        `(navigator.storage.estimate() says ${available} bytes available); free space or delete stored models, then load again to resume`,
      stillNeeded,
      available,
      { cause: error },
    );
  }
}

/** Fetches `file` from record `first` on (HTTP Range) and writes each record once it is whole. */
async function downloadFile(
  meta: StoredModelMeta,
  f: StoredFile,
  first: number,
  prefetched: Uint8Array | undefined,
  fetchImpl: typeof fetch,
  signal: AbortSignal | undefined,
  progress: (storedBytes: number) => void,
): Promise<void> {
  if (first >= f.starts.length || f.bytes === 0) {
    progress(f.bytes);
    return;
  }
  const start = f.starts[first];
  let record = first;
  let buffer = new Uint8Array(recordEnd(f, record) - f.starts[record]);
  let filled = 0;
  let at = start;
  const take = async (bytes: Uint8Array) => {
    for (let k = 0; k < bytes.length; ) {
      if (record >= f.starts.length) throw new ModelFormatError(`the server sent more than its ${f.bytes} bytes`, f.name);
      const n = Math.min(buffer.length - filled, bytes.length - k);
      buffer.set(bytes.subarray(k, k + n), filled);
      filled += n;
      k += n;
      at += n;
      if (filled === buffer.length) {
        await putRecord(chunkKey(meta.id, f.name, record), buffer.buffer, f.bytes - f.starts[record]);
        record++;
        progress(at);
        if (record < f.starts.length) buffer = new Uint8Array(recordEnd(f, record) - f.starts[record]);
        filled = 0;
      }
    }
  };
  if (prefetched) {
    await take(prefetched.subarray(start));
  } else {
    const url = fileUrl(meta, f.name);
    const res = await fetchImpl(url, { headers: { Range: `bytes=${start}-` }, signal });
    if (!res.ok || !res.body) throw new ModelFormatError(`HTTP ${res.status} from ${url}`, f.name);
    // A server that ignores Range sends the whole file: skip what is stored already.
    let skip = res.status === 206 ? 0 : start;
    const reader = res.body.getReader();
    for (;;) {
      throwIfAborted(signal);
      const { done, value } = await reader.read();
      if (done) break;
      const piece = skip > 0 ? value.subarray(Math.min(skip, value.length)) : value;
      skip = Math.max(0, skip - value.length);
      await take(piece);
    }
  }
  if (at !== f.bytes)
    throw new ModelFormatError(`the download ended after ${at} of ${f.bytes} bytes (the records stored so far are kept: load again to resume)`, f.name);
}

/** The URL of a file of the model. */
function fileUrl(meta: StoredModelMeta, file: string): string {
  if (meta.format === 'gguf') return meta.id;
  return `${meta.url}/${file.split('/').map(encodeURIComponent).join('/')}`;
}

/** Hashes a stored file from its records; a mismatch removes them (the next call downloads it again) and names the file. */
async function verifyFile(meta: StoredModelMeta, f: StoredFile, signal: AbortSignal | undefined, progress: (n: number) => void): Promise<void> {
  const hash = new Sha256();
  let n = 0;
  for (let i = 0; i < f.starts.length && f.bytes > 0; ) {
    throwIfAborted(signal);
    // A batch of records per transaction, up to about 32 MiB.
    let last = i;
    while (last + 1 < f.starts.length && recordEnd(f, last + 1) - f.starts[i] <= 32 * 1024 * 1024) last++;
    const records = await request<ArrayBuffer[]>('readonly', (s) => s.getAll(IDBKeyRange.bound(chunkKey(meta.id, f.name, i), chunkKey(meta.id, f.name, last))));
    if (records.length !== last - i + 1) throw new ModelFormatError(`IndexedDB holds ${records.length} of its records ${i}..${last}`, f.name);
    for (const r of records) {
      hash.update(new Uint8Array(r));
      n += r.byteLength;
    }
    progress(n);
    i = last + 1;
  }
  const actual = hash.digest();
  if (actual !== f.sha256) {
    await request('readwrite', (s) => s.delete(IDBKeyRange.bound(chunkKey(meta.id, f.name, 0), chunkKey(meta.id, f.name, f.starts.length))));
    throw new ModelFormatError(
      `sha256 ${actual} does not match ${f.sha256} in ${PACKED_MANIFEST}: the downloaded shard is corrupt (its records were removed; load again to fetch it anew)`,
      f.name,
    );
  }
}

/** Transfer rate over this call: bytes that arrived since it began, per second. */
class Rate {
  private readonly t0 = performance.now();
  constructor(
    private readonly total: number,
    private readonly startBytes: number,
  ) {}
  at(doneBytes: number): { bytesPerSecond: number; secondsLeft: number } {
    const seconds = (performance.now() - this.t0) / 1000;
    const moved = doneBytes - this.startBytes;
    const bytesPerSecond = seconds > 0 && moved > 0 ? moved / seconds : 0;
    const left = this.total - doneBytes;
    return { bytesPerSecond, secondsLeft: left <= 0 ? 0 : bytesPerSecond > 0 ? left / bytesPerSecond : Infinity };
  }
}
