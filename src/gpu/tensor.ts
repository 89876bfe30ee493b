import { CapabilityError } from './errors.ts';
import type { Caps } from './caps.ts';

/** How a weight is stored on the GPU. f16 is two halves per u32 on every adapter (see wgsl.ts). */
export type WeightDtype = 'f32' | 'f16';

export const bytesPerElement = (dtype: WeightDtype): number => (dtype === 'f32' ? 4 : 2);

/** Rows are padded to a multiple of 8 elements so that kernels read 8 at a time, 16-byte aligned. */
export const ROW_ALIGN = 8;
export const paddedCols = (cols: number): number => Math.ceil(cols / ROW_ALIGN) * ROW_ALIGN;

export interface TensorPart {
  buffer: GPUBuffer;
  /** First outer item (row, or expert for 3-D tensors) held by this buffer. */
  first: number;
  count: number;
}

/**
 * A weight on the GPU: logical `shape` ([rows, cols] or [items, rows, cols]), rows padded to `rowStride`
 * elements, split along dim 0 into parts that each fit one storage binding. Kernels address a part with
 * (item - part.first) * itemStride + row * rowStride + col.
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
}

/** Splits a tensor so that no part passes the binding or buffer limit; names the tensor when one item alone does. */
export function planTensorLayout(name: string, shape: number[], dtype: WeightDtype, caps: Caps): TensorLayout {
  const cols = shape[shape.length - 1];
  const rowStride = paddedCols(cols);
  const rowsPerItem = shape.length === 3 ? shape[1] : 1;
  const itemStride = rowsPerItem * rowStride;
  const itemBytes = itemStride * bytesPerElement(dtype);
  const limit = Math.min(caps.maxStorageBindingBytes, caps.maxBufferBytes);
  if (itemBytes > limit) {
    throw new CapabilityError(
      `${name}: one ${shape.length === 3 ? 'expert' : 'row'} takes ${itemBytes} bytes, more than the adapter's storage binding limit of ${limit}`,
      'maxStorageBufferBindingSize',
    );
  }
  const itemsPerPart = Math.max(1, Math.floor(limit / itemBytes));
  return { itemStride, rowStride, itemsPerPart, items: shape[0] };
}
