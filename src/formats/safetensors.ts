import { ModelFormatError } from '../errors.ts';
import { type WeightSource, readJson } from './source.ts';
import type { Checkpoint, SourceTensor } from './checkpoint.ts';
import type { SourceDtype } from '../numeric/source_dtype.ts';

/** Element types the loader converts from; anything else is reported when a needed tensor has it. */

const DTYPES: Record<string, { dtype: SourceDtype; bytes: number }> = {
  BF16: { dtype: 'bf16', bytes: 2 },
  F16: { dtype: 'f16', bytes: 2 },
  F32: { dtype: 'f32', bytes: 4 },
};
const READABLE_TYPES = Object.keys(DTYPES);
const OTHER_DTYPE_BYTES: Record<string, number> = { F64: 8, I64: 8, U64: 8, I32: 4, U32: 4, I16: 2, U16: 2, I8: 1, U8: 1, BOOL: 1, F8_E4M3: 1, F8_E5M2: 1 };

/** Headers larger than this are refused before they are read (real ones are a few MB). */
const MAX_HEADER_BYTES = 100 * 1024 * 1024;

export interface TensorEntry {
  name: string;
  file: string;
  /** The checkpoint's dtype name (BF16, F16, F32, or one the loader cannot use). */
  fileDtype: string;
  dtype: SourceDtype | undefined;
  shape: number[];
  /** Absolute byte offset of the data in the file. */
  offset: number;
  bytes: number;
}

/**
 * Reads and checks one safetensors header: every size and offset is validated against the file's real
 * size before anything is allocated from it.
 */
export async function readSafetensorsHeader(source: WeightSource, file: string): Promise<TensorEntry[]> {
  const fileSize = await source.size(file);
  if (fileSize < 8) throw new ModelFormatError(`${fileSize} bytes is too short for a safetensors file`, file);
  const lenBytes = await source.read(file, 0, 8);
  const headerLen = Number(new DataView(lenBytes.buffer, lenBytes.byteOffset, 8).getBigUint64(0, true));
  if (headerLen > fileSize - 8)
    throw new ModelFormatError(`header claims ${headerLen} bytes but the file has ${fileSize - 8} after the length field (truncated?)`, file);
  if (headerLen > MAX_HEADER_BYTES) throw new ModelFormatError(`header of ${headerLen} bytes is implausibly large`, file);
  // Read outside the try: a failed read (a dropped connection) is its own error, not "not valid JSON".
  const headerBytes = await source.read(file, 8, headerLen);
  let header: unknown;
  try {
    header = JSON.parse(new TextDecoder().decode(headerBytes));
  } catch (error) {
    throw new ModelFormatError(`header is not valid JSON (${(error as Error).message})`, file, undefined, { cause: error });
  }
  if (typeof header !== 'object' || header === null || Array.isArray(header)) throw new ModelFormatError('header is not a JSON object', file);
  const dataStart = 8 + headerLen;
  const dataBytes = fileSize - dataStart;
  const entries: TensorEntry[] = [];
  for (const [name, value] of Object.entries(header as Record<string, unknown>)) {
    if (name === '__metadata__') continue;
    const v = value as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    if (typeof v !== 'object' || v === null) throw new ModelFormatError('header entry is not an object', file, name);
    if (typeof v.dtype !== 'string') throw new ModelFormatError('header entry has no dtype', file, name);
    if (!Array.isArray(v.shape) || !v.shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
      throw new ModelFormatError(`shape ${JSON.stringify(v.shape)} is not a list of non-negative integers`, file, name);
    }
    const offsets = v.data_offsets;
    if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every((o) => Number.isSafeInteger(o) && o >= 0) || offsets[0] > offsets[1]) {
      throw new ModelFormatError(`data_offsets ${JSON.stringify(offsets)} are not [begin, end] with begin ≤ end`, file, name);
    }
    const [begin, end] = offsets as [number, number];
    if (end > dataBytes) throw new ModelFormatError(`data ends at byte ${end} of the data section, but the file holds ${dataBytes} (truncated?)`, file, name);
    const known = DTYPES[v.dtype];
    const elementBytes = known?.bytes ?? OTHER_DTYPE_BYTES[v.dtype];
    const elements = (v.shape as number[]).reduce((a, b) => a * b, 1);
    if (elementBytes !== undefined && elements * elementBytes !== end - begin) {
      throw new ModelFormatError(
        `shape ${JSON.stringify(v.shape)} of ${v.dtype} needs ${elements * elementBytes} bytes but data_offsets span ${end - begin}`,
        file,
        name,
      );
    }
    entries.push({ name, file, fileDtype: v.dtype, dtype: known?.dtype, shape: v.shape as number[], offset: dataStart + begin, bytes: end - begin });
  }
  // No two tensors may share bytes: overlapping data_offsets would silently give one tensor another's values.
  const spans = entries.filter((e) => e.bytes > 0).sort((a, b) => a.offset - b.offset);
  for (let i = 1; i < spans.length; i++) {
    const [prev, cur] = [spans[i - 1], spans[i]];
    if (cur.offset < prev.offset + prev.bytes) {
      const rel = (e: TensorEntry) => `[${e.offset - dataStart}, ${e.offset - dataStart + e.bytes}]`;
      throw new ModelFormatError(`data_offsets ${rel(cur)} overlap those of ${prev.name} ${rel(prev)}`, file, cur.name);
    }
  }
  return entries;
}

/** A Hugging Face safetensors checkpoint as a Checkpoint: rows are read straight from the file. */
export async function openSafetensorsCheckpoint(source: WeightSource): Promise<Checkpoint> {
  const tensors = new Map<string, SourceTensor>();
  for (const [name, e] of await readCheckpointTensors(source)) {
    const cols = e.shape.length > 0 ? e.shape[e.shape.length - 1] : 1;
    const elements = e.shape.reduce((a, b) => a * b, 1);
    const rowBytes = elements > 0 ? (e.bytes / elements) * cols : 0;
    tensors.set(name, {
      name,
      shape: e.shape,
      dtype: e.dtype,
      fileDtype: e.fileDtype,
      readableTypes: READABLE_TYPES,
      file: e.file,
      bytes: e.bytes,
      readRows: (first, count, signal) => source.read(e.file, e.offset + first * rowBytes, count * rowBytes, signal),
    });
  }
  return { location: source.location, files: source, tensors };
}

/**
 * All tensors of a checkpoint: one `model.safetensors`, or the shards named by
 * `model.safetensors.index.json` (every name in its weight_map must be in the shard it names).
 */
export async function readCheckpointTensors(source: WeightSource): Promise<Map<string, TensorEntry>> {
  const indexFile = 'model.safetensors.index.json';
  let files: string[];
  let weightMap: Record<string, string> | undefined;
  if (await source.has(indexFile)) {
    const index = await readJson(source, indexFile);
    if (typeof index !== 'object' || index === null || Array.isArray(index)) throw new ModelFormatError('is not a JSON object', indexFile);
    const map = (index as { weight_map?: unknown }).weight_map;
    if (typeof map !== 'object' || map === null || Array.isArray(map)) throw new ModelFormatError('has no weight_map object', indexFile);
    weightMap = map as Record<string, string>;
    files = [...new Set(Object.values(weightMap))].sort();
    for (const f of files) {
      if (typeof f !== 'string' || f.includes('..') || f.startsWith('/')) throw new ModelFormatError(`names an invalid shard ${JSON.stringify(f)}`, indexFile);
    }
  } else if (await source.has('model.safetensors')) {
    files = ['model.safetensors'];
  } else {
    throw new ModelFormatError(`no model.safetensors or ${indexFile} in ${source.location}`);
  }
  const tensors = new Map<string, TensorEntry>();
  for (const file of files) {
    for (const entry of await readSafetensorsHeader(source, file)) {
      const previous = tensors.get(entry.name);
      if (previous) throw new ModelFormatError(`also stored in ${previous.file}`, file, entry.name);
      tensors.set(entry.name, entry);
    }
  }
  if (weightMap) {
    for (const [name, file] of Object.entries(weightMap)) {
      const entry = tensors.get(name);
      if (!entry) throw new ModelFormatError(`listed in the index but missing from ${file}`, file, name);
      if (entry.file !== file) throw new ModelFormatError(`listed in the index under ${file} but stored in ${entry.file}`, indexFile, name);
    }
  }
  return tensors;
}

export interface TensorData {
  name: string;
  dtype: 'BF16' | 'F16' | 'F32';
  shape: number[];
  /** Little-endian element bytes. */
  data: Uint8Array;
}

/** Serialises tensors as one safetensors file: 8-byte header length, JSON header (space-padded to 8 bytes), data. */
export function encodeSafetensors(tensors: TensorData[], metadata: Record<string, string> = {}): Uint8Array {
  const header: Record<string, unknown> = { __metadata__: metadata };
  let offset = 0;
  for (const t of tensors) {
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + t.data.length] };
    offset += t.data.length;
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - (json.length % 8)) % 8);
  const headerBytes = new TextEncoder().encode(json);
  const out = new Uint8Array(8 + headerBytes.length + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(headerBytes.length), true);
  out.set(headerBytes, 8);
  let at = 8 + headerBytes.length;
  for (const t of tensors) {
    out.set(t.data, at);
    at += t.data.length;
  }
  return out;
}
