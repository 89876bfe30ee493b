import type { GpuContext } from '../../src/gpu/context.ts';
import { type GpuTensor, type WeightDtype, planTensorLayout } from '../../src/gpu/tensor.ts';
import { f32ToF16Bits } from '../../src/numeric/half.ts';
import { q4ItemWords, quantizeQ4Item } from '../../src/numeric/q4.ts';

/**
 * Uploads a weight held in CPU memory as f32 (tests and synthetic weights; checkpoints go through the
 * loader's streaming path). Rows are padded with zeros to the tensor's row stride; q4 goes through the CPU
 * quantiser (src/numeric/q4.ts, the GPU one's twin). `caps` may be a masked copy with a smaller binding
 * limit, to split a small tensor into several parts.
 */
export function uploadTensor(ctx: GpuContext, name: string, shape: number[], values: Float32Array, dtype: WeightDtype, caps = ctx.caps): GpuTensor {
  const layout = planTensorLayout(name, shape, dtype, caps);
  const cols = shape[shape.length - 1];
  const rows = values.length / cols;
  const rowsPerItem = rows / layout.items;
  const tensor: GpuTensor = { name, dtype, shape, rowStride: layout.rowStride, itemStride: layout.itemStride, parts: [] };
  for (let first = 0; first < layout.items; first += layout.itemsPerPart) {
    const count = Math.min(layout.itemsPerPart, layout.items - first);
    const elements = count * layout.itemStride;
    const buffer = ctx.storage(`${name}[${first}..${first + count})`, count * layout.itemBytes);
    const padded = new Float32Array(elements);
    for (let r = 0; r < count * rowsPerItem; r++) {
      const src = (first * rowsPerItem + r) * cols;
      padded.set(values.subarray(src, src + cols), r * layout.rowStride);
    }
    ctx.write(buffer, 0, dtype === 'f32' ? padded : dtype === 'f16' ? toF16Bits(padded) : toQ4(padded, count, layout.itemStride));
    tensor.parts.push({ buffer, first, count });
  }
  return tensor;
}

function toF16Bits(values: Float32Array): Uint16Array {
  const out = new Uint16Array(values.length);
  for (let i = 0; i < values.length; i++) out[i] = f32ToF16Bits(values[i]);
  return out;
}

/** Items' q4 blocks back to back. */
function toQ4(values: Float32Array, items: number, itemStride: number): Uint32Array {
  const words = q4ItemWords(itemStride);
  const out = new Uint32Array(items * words);
  for (let i = 0; i < items; i++) out.set(quantizeQ4Item(values.subarray(i * itemStride, (i + 1) * itemStride), itemStride), i * words);
  return out;
}
