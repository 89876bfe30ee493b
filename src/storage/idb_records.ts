/**
 * How a model lives in IndexedDB (one database `qwen-webgpu`, one object store `models`, through idb-keyval's
 * `createStore`). Keys are arrays, so one model's records form key ranges that list and delete in one call:
 *
 * - `['meta', id]`           StoredModelMeta: the model's URL, format and every file with its record layout;
 * - `['chunk', id, file, i]` record i of `file`: bytes [starts[i], starts[i + 1]) as an ArrayBuffer;
 * - `['done', id, file]`     the file is whole (and, for a packed model, its sha256 matched);
 * - `['complete', id]`       written last, after every file is done: only then does the model count as stored.
 */
import { createStore, promisifyRequest, type UseStore } from 'idb-keyval';
import { expertTensorKey } from './expert_source.ts';
import { PACKED_MANIFEST, type PackedManifest } from '../formats/packed_manifest.ts';

export const DB_NAME = 'qwen-webgpu';
export const STORE_NAME = 'models';

/** Bytes per record outside expert items: large enough for few transactions, small enough that a range read stays small. */
export const RECORD_BYTES = 8 * 1024 * 1024;
/** An expert item larger than this (none in any Qwen3.5 model) is split like any other bytes. */
const MAX_EXPERT_RECORD_BYTES = 64 * 1024 * 1024;

export type StoredFormat = 'packed' | 'hf' | 'gguf';

export interface StoredFile {
  name: string;
  bytes: number;
  /** Lowercase hex, for a packed model's shards and files (from its manifest); checked after the download. */
  sha256?: string;
  /** Start offset of each record, ascending from 0; record i ends where i + 1 starts (the last at `bytes`). */
  starts: number[];
}

export interface StoredModelMeta {
  id: string;
  /** Where it was downloaded from (the folder URL, or the .gguf file's URL). */
  url: string;
  format: StoredFormat;
  /** For a .gguf model: the file inside the model. */
  gguf?: string;
  files: StoredFile[];
  /** Sum of the files' bytes. */
  bytes: number;
  /** When the download started (ISO 8601). */
  date: string;
}

export interface CompleteMarker {
  date: string;
}

export const metaKey = (id: string): IDBValidKey => ['meta', id];
export const completeKey = (id: string): IDBValidKey => ['complete', id];
export const doneKey = (id: string, file: string): IDBValidKey => ['done', id, file];
export const chunkKey = (id: string, file: string, index: number): IDBValidKey => ['chunk', id, file, index];
/** Records [first, last] of one file. */
export const chunkRange = (id: string, file: string, first: number, last: number): IDBKeyRange =>
  IDBKeyRange.bound(chunkKey(id, file, first), chunkKey(id, file, last));
/** Every key [kind, id, ...]: an array sorts above every string and number, so [kind, id, []] bounds them all. */
export const modelRange = (kind: string, id: string): IDBKeyRange => IDBKeyRange.bound([kind, id], [kind, id, []]);

let store: UseStore | undefined;
/** The object store, opened on first use (the page and the worker share it: same origin). */
export function modelsStore(): UseStore {
  store ??= createStore(DB_NAME, STORE_NAME);
  return store;
}

/**
 * Runs one request in its own transaction. A write resolves when its transaction commits: a quota failure
 * aborts the transaction after the request itself succeeded (QuotaExceededError arrives only there).
 */
export function request<T>(mode: IDBTransactionMode, make: (s: IDBObjectStore) => IDBRequest<T>): Promise<T> {
  return modelsStore()(mode, async (s) => {
    const result = promisifyRequest(make(s));
    if (mode === 'readonly') return result;
    const [value] = await Promise.all([result, promisifyRequest(s.transaction)]);
    return value;
  });
}

/** Record index holding byte `offset` of a file laid out by `starts`. */
export function recordAt(starts: number[], offset: number): number {
  let lo = 0;
  let hi = starts.length - 1;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (starts[mid] <= offset) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

export const recordEnd = (file: StoredFile, index: number): number => (index + 1 < file.starts.length ? file.starts[index + 1] : file.bytes);

/**
 * Record starts for a file of `bytes` bytes: `pinned` ranges (a packed model's expert items) become one record
 * each, everything else is cut every RECORD_BYTES. So reading one expert of a packed model reads exactly
 * one record, the one per (tensor, expert) item that the model store keeps.
 */
export function layoutRecords(bytes: number, pinned: { start: number; end: number }[] = []): number[] {
  const edges = new Set<number>([0]);
  const whole = new Set<number>();
  for (const p of pinned) {
    if (p.end - p.start > MAX_EXPERT_RECORD_BYTES) continue;
    edges.add(p.start);
    edges.add(p.end);
    whole.add(p.start);
  }
  const sorted = [...edges].filter((e) => e < bytes).sort((a, b) => a - b);
  const starts: number[] = [];
  sorted.forEach((start, i) => {
    const end = i + 1 < sorted.length ? sorted[i + 1] : bytes;
    if (whole.has(start)) {
      starts.push(start);
      return;
    }
    for (let at = start; at < end; at += RECORD_BYTES) starts.push(at);
  });
  if (starts.length === 0) starts.push(0);
  return starts;
}

/** Each shard's expert items (one per expert of each experts_gate_up / experts_down tensor), as byte ranges. */
export function expertItems(manifest: Pick<PackedManifest, 'tensors'> & { shards: { name: string }[] }): Map<string, { start: number; end: number }[]> {
  const byShard = new Map<string, { start: number; end: number }[]>();
  const expertKeys = new Set<string>();
  for (const t of manifest.tensors) {
    const m = /^layers\.(\d+)\.mlp\.experts_(gate_up|down)$/.exec(t.key);
    if (m && t.key === expertTensorKey(Number(m[1]), m[2] as 'gate_up' | 'down')) expertKeys.add(t.key);
  }
  for (const t of manifest.tensors) {
    if (!expertKeys.has(t.key)) continue;
    for (const run of t.runs) {
      const shard = manifest.shards[run.shard].name;
      const list = byShard.get(shard) ?? [];
      for (let i = 0; i < run.count; i++) list.push({ start: run.offset + i * t.itemBytes, end: run.offset + (i + 1) * t.itemBytes });
      byShard.set(shard, list);
    }
  }
  return byShard;
}

/**
 * A packed model's files as the store keeps them: the manifest, then every shard and file with its sha256,
 * each expert item of a shard a record of its own (so an expert read touches exactly one record).
 */
export function packedStoredFiles(manifest: PackedManifest, manifestBytes: number): StoredFile[] {
  const experts = expertItems(manifest);
  return [
    { name: PACKED_MANIFEST, bytes: manifestBytes, starts: layoutRecords(manifestBytes) },
    ...[...manifest.shards, ...manifest.files].map((f) => ({
      name: f.name,
      bytes: f.bytes,
      sha256: f.sha256,
      starts: layoutRecords(f.bytes, experts.get(f.name)),
    })),
  ];
}
