import { CapabilityError, ContractError } from '../errors.ts';
import type { Caps } from './caps.ts';
import { Q4_ROW_ALIGN, q4ItemWords } from '../numeric/q4.ts';

/**
 * How a weight is stored on the GPU. f16 is two halves per u32 on every adapter (see wgsl.ts). q4 is the
 * INT4 format of src/numeric/q4.ts: per item, nibble words then f16 group scales.
 */
export type WeightDtype = 'f32' | 'f16' | 'q4';

/**
 * What a kernel must know of a weight to read it: its dtype, and for q4 the item stride (the accessors map
 * logical element indices to an item's block with it baked in, so one pipeline per distinct item stride).
 */
export type WeightFormat = { dtype: 'f32' | 'f16' } | { dtype: 'q4'; itemStride: number };

export const weightFormat = (t: Pick<GpuTensor, 'dtype' | 'itemStride'>): WeightFormat =>
  t.dtype === 'q4' ? { dtype: 'q4', itemStride: t.itemStride } : { dtype: t.dtype };

/** Bytes per element; for q4 the average over whole items (9/16: half a byte plus a 2-byte scale per 32). */
export const bytesPerElement = (dtype: WeightDtype): number => (dtype === 'f32' ? 4 : dtype === 'f16' ? 2 : 9 / 16);

/** Bytes of one item (a row of a 2-D tensor, an expert of a 3-D one) of `itemStride` elements. */
export const itemBytes = (dtype: WeightDtype, itemStride: number): number =>
  dtype === 'q4' ? q4ItemWords(itemStride) * 4 : itemStride * bytesPerElement(dtype);

/** Rows are padded to a multiple of 8 elements so that kernels read 8 at a time, 16-byte aligned. */
export const ROW_ALIGN = 8;
export const paddedCols = (cols: number): number => Math.ceil(cols / ROW_ALIGN) * ROW_ALIGN;
/** q4 rows are padded to 64 elements: a scale word (two groups of 32) then never spans two rows. */
export const rowAlign = (dtype: WeightDtype): number => (dtype === 'q4' ? Q4_ROW_ALIGN : ROW_ALIGN);

export interface TensorPart {
  buffer: GPUBuffer;
  /** First outer item (row, or expert for 3-D tensors) held by this buffer. */
  first: number;
  count: number;
}

/**
 * A weight on the GPU: logical `shape` ([rows, cols] or [items, rows, cols]), rows padded to `rowStride`
 * elements, split along dim 0 into parts that each fit one storage binding. Kernels address a part with
 * (item - part.first) * itemStride + row * rowStride + col, whatever the dtype: for q4 the generated
 * accessors map that logical index to the item's block (parts hold whole items back to back).
 */
export interface GpuTensor {
  name: string;
  dtype: WeightDtype;
  shape: number[];
  rowStride: number;
  /** Elements per outer item: rowStride for 2-D tensors, rows * rowStride for 3-D. */
  itemStride: number;
  parts: TensorPart[];
}

export interface TensorLayout {
  itemStride: number;
  rowStride: number;
  itemsPerPart: number;
  items: number;
  /** Bytes of one item in a part buffer (a part of n items takes n * itemBytes). */
  itemBytes: number;
}

/** Kernels index a part's elements with u32s. */
const MAX_PART_ELEMENTS = 2 ** 32 - 1;

/** Splits a tensor so that no part passes the binding or buffer limit; names the tensor when one item alone does. */
export function planTensorLayout(name: string, shape: number[], dtype: WeightDtype, caps: Caps): TensorLayout {
  const cols = shape[shape.length - 1];
  const align = rowAlign(dtype);
  const rowStride = Math.ceil(cols / align) * align;
  const rowsPerItem = shape.length === 3 ? shape[1] : 1;
  const itemStride = rowsPerItem * rowStride;
  const bytes = itemBytes(dtype, itemStride);
  // Buffers are allocated in multiples of 16 bytes and bound whole: a part's rounded size must still fit.
  const limit = Math.floor(Math.min(caps.maxStorageBindingBytes, caps.maxBufferBytes) / 16) * 16;
  if (bytes > limit) {
    throw new CapabilityError(
      `${name}: one ${shape.length === 3 ? 'expert' : 'row'} takes ${bytes} bytes, more than the adapter's storage binding limit of ${limit}`,
      'maxStorageBufferBindingSize',
    );
  }
  const itemsPerPart = Math.max(1, Math.min(Math.floor(limit / bytes), Math.floor(MAX_PART_ELEMENTS / itemStride)));
  return { itemStride, rowStride, itemsPerPart, items: shape[0], itemBytes: bytes };
}

/**
 * The first `rows` rows of a 2-D weight, on the same buffers: rows are stored back to back, so they are the leading
 * parts, the last one cut short (a drafter's LM head over part of the vocabulary).
 */
export function leadingRows(t: GpuTensor, rows: number): GpuTensor {
  if (t.shape.length !== 2) throw new ContractError(`${t.name} [${t.shape}] is not a 2-D weight`, 'leadingRows');
  if (!Number.isInteger(rows) || rows < 1 || rows > t.shape[0]) throw new ContractError(`${rows} rows of ${t.name} [${t.shape}]`, 'leadingRows');
  if (rows === t.shape[0]) return t;
  const parts = t.parts.filter((p) => p.first < rows).map((p) => ({ ...p, count: Math.min(p.count, rows - p.first) }));
  return { ...t, name: `${t.name}[:${rows}]`, shape: [rows, t.shape[1]], parts };
}
