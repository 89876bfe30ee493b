import { ModelFormatError } from '../errors.ts';

/**
 * The manifest of a packed model (`qwen-webgpu.json`): the GPU tensors exactly as the engine holds them,
 * so loading is a plain upload. Each tensor is [items, rowsPerItem, cols] (an item is a row of a 2-D tensor
 * or an expert of a 3-D one), stored as runs of whole items in shard files; an item never straddles shards.
 *
 * Item layouts (all little-endian):
 * - f32: itemStride floats; f16: itemStride halves, two per u32 (low half first);
 * - q4: itemStride / 8 u32 words of nibbles (element 8w+k in bits 4k..4k+3 of word w), then itemStride / 32
 *   f16 group scales, two per u32 (low half = even group); x ≈ (nibble − 8) · scale.
 * Rows are zero-padded to rowStride (a multiple of 8 elements for f32/f16, 64 for q4).
 */

export const PACKED_MANIFEST = 'qwen-webgpu.json';
export const PACKED_FORMAT = 'qwen-webgpu';
export const PACKED_VERSION = 1;

export type PackedDtype = 'f32' | 'f16' | 'q4';
export const PACKED_DTYPES: readonly PackedDtype[] = ['f32', 'f16', 'q4'];

/** Items [firstItem, firstItem + count) of a tensor, back to back at `offset` in shard `shard`. */
export interface PackedRun {
  shard: number;
  offset: number;
  firstItem: number;
  count: number;
}

/** A tensor's layout: what the writer is given, and (with itemBytes and runs) what the manifest holds. */
export interface PackedTensorMeta {
  /** GPU tensor key, e.g. `layers.3.attn.qkv_proj` (src/model/tensors.ts). */
  key: string;
  dtype: PackedDtype;
  /** [rows, cols] or [items, rowsPerItem, cols]. */
  shape: number[];
  rowStride: number;
  /** rowsPerItem · rowStride elements. */
  itemStride: number;
}

export interface PackedTensorInfo extends PackedTensorMeta {
  itemBytes: number;
  /** Sorted by firstItem and covering items 0..shape[0] exactly once. */
  runs: PackedRun[];
}

export interface PackedFileInfo {
  name: string;
  bytes: number;
  /** Lowercase hex. */
  sha256: string;
}

export interface PackedManifest {
  format: typeof PACKED_FORMAT;
  version: typeof PACKED_VERSION;
  /** The model's Hugging Face config.json. */
  config: Record<string, unknown>;
  /** How matrices are stored (vectors are f32 whatever this says). */
  dtype: PackedDtype;
  tensors: PackedTensorInfo[];
  shards: PackedFileInfo[];
  /** tokenizer.json, tokenizer_config.json, generation_config.json, chat_template.jinja, ... */
  files: PackedFileInfo[];
}

/** Element bytes of a row's padding unit, and the alignment rowStride must keep. */
export const rowAlignment = (dtype: PackedDtype): number => (dtype === 'q4' ? 64 : 8);

/** Bytes of one item: f32 4 per element, f16 2, q4 half a byte plus one f16 scale per 32 (9/16). */
export function itemBytesOf(dtype: PackedDtype, itemStride: number): number {
  return dtype === 'f32' ? itemStride * 4 : dtype === 'f16' ? itemStride * 2 : (itemStride * 9) / 16;
}

/** Sanity bounds: well beyond any Qwen3.5 model, well inside what a float64 counts exactly. */
const MAX_ITEM_BYTES = 2 ** 31;
const MAX_TENSOR_ELEMENTS = 2 ** 42;
const MAX_FILE_BYTES = 2 ** 46;
const MAX_ENTRIES = 1_000_000;
/** Rows padded by more than this are a corrupt stride, not padding. */
const MAX_ROW_PADDING = 256;

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/**
 * Checks a tensor's dtype, shape and strides and returns its item size. `fail` says where (the manifest
 * and tensor for the reader, the caller's tensor for the writer).
 */
export function checkTensorLayout(meta: PackedTensorMeta, fail: (message: string) => never): number {
  const { dtype, shape, rowStride, itemStride } = meta;
  if (!PACKED_DTYPES.includes(dtype)) fail(`dtype ${JSON.stringify(dtype)} is not one of ${PACKED_DTYPES.join(', ')}`);
  if (!Array.isArray(shape) || (shape.length !== 2 && shape.length !== 3) || !shape.every((d) => Number.isSafeInteger(d) && d > 0)) {
    fail(`shape ${JSON.stringify(shape)} is not 2 or 3 positive integers`);
  }
  if (shape.reduce((a, b) => a * b, 1) > MAX_TENSOR_ELEMENTS) fail(`shape [${shape}] is implausibly large`);
  const cols = shape[shape.length - 1];
  const align = rowAlignment(dtype);
  if (!Number.isSafeInteger(rowStride) || rowStride < cols || rowStride % align !== 0 || rowStride - cols >= MAX_ROW_PADDING) {
    fail(`rowStride ${JSON.stringify(rowStride)} is not a multiple of ${align} from ${cols} (the row length) to ${cols + MAX_ROW_PADDING - 1}`);
  }
  const rowsPerItem = shape.length === 3 ? shape[1] : 1;
  if (itemStride !== rowsPerItem * rowStride) fail(`itemStride ${JSON.stringify(itemStride)} is not rowsPerItem ${rowsPerItem} × rowStride ${rowStride}`);
  const itemBytes = itemBytesOf(dtype, itemStride);
  if (itemBytes > MAX_ITEM_BYTES) fail(`one item takes ${itemBytes} bytes, more than ${MAX_ITEM_BYTES}`);
  return itemBytes;
}

/** A file name inside the model folder: no directories, nothing that could escape it. */
export const isPlainFileName = (name: unknown): name is string => typeof name === 'string' && /^[A-Za-z0-9_][A-Za-z0-9_.-]*$/.test(name) && name.length <= 200;

/** Names a packed model keeps for itself: its manifest, and config.json (served from the manifest). */
export const RESERVED_NAMES: readonly string[] = [PACKED_MANIFEST, 'config.json'];

/**
 * Validates a parsed manifest completely: every field's type and range, each tensor's layout against its
 * item size, item runs that cover each tensor once and stay inside their shard, and runs that never
 * overlap. Sizes against the real files are the reader's job. Errors name `file` and the field at fault.
 */
export function validateManifest(raw: unknown, file = PACKED_MANIFEST): PackedManifest {
  const fail = (message: string, tensor?: string): never => {
    throw new ModelFormatError(message, file, tensor);
  };
  if (!isObject(raw)) fail('is not a JSON object');
  const m = raw as Record<string, unknown>;
  if (m.format !== PACKED_FORMAT) fail(`format: ${JSON.stringify(m.format)} is not ${JSON.stringify(PACKED_FORMAT)}`);
  if (m.version !== PACKED_VERSION) {
    fail(`version: ${JSON.stringify(m.version)} is not supported (this engine reads version ${PACKED_VERSION}; a newer engine may read it)`);
  }
  if (!isObject(m.config)) fail('config: expected the model config.json object');
  if (!PACKED_DTYPES.includes(m.dtype as PackedDtype)) fail(`dtype: ${JSON.stringify(m.dtype)} is not one of ${PACKED_DTYPES.join(', ')}`);

  const names = new Set<string>(RESERVED_NAMES);
  const fileList = (field: 'shards' | 'files'): PackedFileInfo[] => {
    const list = m[field];
    if (!Array.isArray(list)) return fail(`${field}: expected a list`);
    if (list.length > MAX_ENTRIES) fail(`${field}: ${list.length} entries is implausibly many`);
    return list.map((entry, i) => {
      const at = `${field}[${i}]`;
      if (!isObject(entry)) fail(`${at}: expected an object`);
      const { name, bytes, sha256 } = entry as Record<string, unknown>;
      if (!isPlainFileName(name)) fail(`${at}.name: ${JSON.stringify(name)} is not a plain file name`);
      if (names.has(name as string)) fail(`${at}.name: ${JSON.stringify(name)} is reserved or listed twice`);
      names.add(name as string);
      if (!Number.isSafeInteger(bytes) || (bytes as number) < 0 || (bytes as number) > MAX_FILE_BYTES) {
        fail(`${at}.bytes: ${JSON.stringify(bytes)} is not a plausible file size`);
      }
      if (typeof sha256 !== 'string' || !/^[0-9a-f]{64}$/.test(sha256)) fail(`${at}.sha256: expected 64 lowercase hex digits`);
      return { name: name as string, bytes: bytes as number, sha256: sha256 as string };
    });
  };
  const shards = fileList('shards');
  const files = fileList('files');

  if (!Array.isArray(m.tensors)) fail('tensors: expected a list');
  const rawTensors = m.tensors as unknown[];
  if (rawTensors.length > MAX_ENTRIES) fail(`tensors: ${rawTensors.length} entries is implausibly many`);
  const keys = new Set<string>();
  // Every run's byte range, per shard, to find overlaps once all are known.
  const extents: { start: number; end: number; key: string }[][] = shards.map(() => []);
  const tensors = rawTensors.map((entry, t): PackedTensorInfo => {
    if (!isObject(entry)) return fail(`tensors[${t}]: expected an object`);
    const { key, dtype, shape, rowStride, itemStride, itemBytes, runs } = entry as Record<string, unknown>;
    if (typeof key !== 'string' || key.length === 0) return fail(`tensors[${t}].key: expected a non-empty string`);
    const failHere = (message: string): never => fail(message, key);
    if (keys.has(key)) failHere(`tensors[${t}]: listed twice`);
    keys.add(key);
    const meta = { key, dtype, shape, rowStride, itemStride } as PackedTensorMeta;
    const expectedItemBytes = checkTensorLayout(meta, failHere);
    if (itemBytes !== expectedItemBytes) {
      failHere(`itemBytes ${JSON.stringify(itemBytes)} does not match ${expectedItemBytes} for ${meta.dtype} items of ${meta.itemStride} elements`);
    }
    if (!Array.isArray(runs) || runs.length === 0) return failHere('runs: expected a non-empty list');
    let next = 0;
    const parsed = runs.map((run, r): PackedRun => {
      const at = `runs[${r}]`;
      if (!isObject(run)) return failHere(`${at}: expected an object`);
      const { shard, offset, firstItem, count } = run as Record<string, unknown>;
      if (!Number.isInteger(shard) || (shard as number) < 0 || (shard as number) >= shards.length) {
        failHere(`${at}.shard: ${JSON.stringify(shard)} is not one of the ${shards.length} shards`);
      }
      if (!Number.isSafeInteger(offset) || (offset as number) < 0 || (offset as number) % 4 !== 0) {
        failHere(`${at}.offset: ${JSON.stringify(offset)} is not a non-negative multiple of 4`);
      }
      if (firstItem !== next) failHere(`${at}.firstItem: ${JSON.stringify(firstItem)}, expected ${next} (runs must cover the items in order, once)`);
      if (!Number.isSafeInteger(count) || (count as number) < 1 || (count as number) > meta.shape[0] - next) {
        failHere(`${at}.count: ${JSON.stringify(count)} is not from 1 to the ${meta.shape[0] - next} items left`);
      }
      const s = shards[shard as number];
      const end = (offset as number) + (count as number) * expectedItemBytes;
      if (end > s.bytes) failHere(`${at}: bytes ${offset}..${end} pass the end of ${s.name} (${s.bytes} bytes)`);
      extents[shard as number].push({ start: offset as number, end, key });
      next += count as number;
      return { shard: shard as number, offset: offset as number, firstItem: firstItem as number, count: count as number };
    });
    if (next !== meta.shape[0]) failHere(`runs cover ${next} items of ${meta.shape[0]}`);
    return { ...meta, itemBytes: expectedItemBytes, runs: parsed };
  });

  extents.forEach((list, s) => {
    list.sort((a, b) => a.start - b.start);
    for (let i = 1; i < list.length; i++) {
      if (list[i].start < list[i - 1].end) {
        fail(`its items at bytes ${list[i].start}.. of ${shards[s].name} overlap those of ${list[i - 1].key} (..${list[i - 1].end})`, list[i].key);
      }
    }
  });

  return { format: PACKED_FORMAT, version: PACKED_VERSION, config: m.config as Record<string, unknown>, dtype: m.dtype as PackedDtype, tensors, shards, files };
}
