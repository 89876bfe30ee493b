import type { GpuContext } from '../gpu/context.ts';
import { ModelFormatError, throwIfAborted } from '../errors.ts';
import type { GpuTensor } from '../gpu/tensor.ts';
import type { PackedModel } from '../formats/packed.ts';
import type { TensorSpec } from './tensors.ts';

/**
 * Uploads the GPU tensors of a packed model as they are. Each tensor must have the shape and layout this
 * engine would give it (the manifest is checked against the specs first); its items are read in pieces of
 * whole items and copied into the parts this adapter's binding limit calls for.
 */
export async function* uploadPacked(
  ctx: GpuContext,
  packed: PackedModel,
  specs: TensorSpec[],
  allocated: Map<string, GpuTensor>,
  pieceBytes: number,
  signal?: AbortSignal,
): AsyncGenerator<{ bytes: number; tensor: string }> {
  for (const spec of specs) {
    const gpu = allocated.get(spec.key)!;
    const info = packed.tensors.get(spec.key)!;
    const itemsPerPiece = Math.max(1, Math.floor(pieceBytes / info.itemBytes));
    for (const part of gpu.parts) {
      for (let i = 0; i < part.count; i += itemsPerPiece) {
        throwIfAborted(signal);
        const count = Math.min(itemsPerPiece, part.count - i);
        const bytes = await packed.readItems(spec.key, part.first + i, count, signal);
        ctx.write(part.buffer, i * info.itemBytes, bytes);
        yield { bytes: bytes.length, tensor: spec.key };
      }
    }
  }
  await ctx.sync();
}

/** The packed tensor for each spec must exist and match what allocateTensors gives it (checked before allocation). */
export function checkPackedTensors(
  packed: PackedModel,
  specs: TensorSpec[],
  layout: (spec: TensorSpec, dtype: GpuTensor['dtype']) => { rowStride: number; itemStride: number },
): void {
  for (const spec of specs) {
    const t = packed.tensors.get(spec.key);
    if (!t) throw new ModelFormatError(`tensor ${spec.key} is missing from the manifest`, 'qwen-webgpu.json', spec.key);
    const same = t.shape.length === spec.shape.length && t.shape.every((d, i) => d === spec.shape[i]);
    if (!same) throw new ModelFormatError(`shape [${t.shape}] does not match [${spec.shape}] implied by its config`, 'qwen-webgpu.json', spec.key);
    if (spec.kind === 'vector' && t.dtype !== 'f32') throw new ModelFormatError(`is ${t.dtype}; vectors are stored as f32`, 'qwen-webgpu.json', spec.key);
    const want = layout(spec, t.dtype);
    if (t.rowStride !== want.rowStride || t.itemStride !== want.itemStride) {
      throw new ModelFormatError(
        `row/item strides ${t.rowStride}/${t.itemStride} differ from this engine's ${want.rowStride}/${want.itemStride}`,
        'qwen-webgpu.json',
        spec.key,
      );
    }
  }
}
