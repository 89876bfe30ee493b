import { f16Table } from '../numeric/half.ts';
import { itemBytesOf, type PackedDtype } from './packed_manifest.ts';
import { dequantizeQ4Item } from '../numeric/q4.ts';
import { ContractError } from '../errors.ts';

/**
 * The values one packed item stands for: itemStride f32 elements (rows padded as stored). f32 items are
 * copied, f16 ones widened, q4 ones dequantised.
 */
export function itemValues(dtype: PackedDtype, itemStride: number, bytes: Uint8Array): Float32Array {
  const expected = itemBytesOf(dtype, itemStride);
  if (bytes.length !== expected)
    throw new ContractError(`a ${dtype} item of ${itemStride} elements takes ${expected} bytes, got ${bytes.length}`, 'itemValues');
  // Typed-array views need aligned offsets; a copy is one item at most.
  const aligned = bytes.byteOffset % 4 === 0 ? bytes : bytes.slice();
  if (dtype === 'f32') return new Float32Array(aligned.buffer.slice(aligned.byteOffset, aligned.byteOffset + aligned.length));
  if (dtype === 'q4') return dequantizeQ4Item(new Uint32Array(aligned.buffer, aligned.byteOffset, aligned.length / 4), itemStride);
  const table = f16Table();
  const h = new Uint16Array(aligned.buffer, aligned.byteOffset, itemStride);
  const out = new Float32Array(itemStride);
  for (let i = 0; i < itemStride; i++) out[i] = table[h[i]];
  return out;
}
