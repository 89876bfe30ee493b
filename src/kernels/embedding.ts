import type { Dispatch, GpuContext } from '../gpu/context.ts';
import { defineKernel, read, uniform, weight, write } from '../gpu/kernel.ts';
import type { GpuTensor, WeightDtype } from '../gpu/tensor.ts';
import { grid } from './grid.ts';

/** Row gather from a [V, H] weight, f32 or f16; one dispatch per tensor part. Grid: one workgroup per token. */
export const embeddingKernel = defineKernel<{ dtype: WeightDtype }>({
  name: 'embedding',
  bindings: (v) => [
    weight('table', v.dtype),
    read('ids', 'u32'),
    write('out'),
    uniform('params', { tokens: 'u32', ids_offset: 'u32', first: 'u32', count: 'u32', row_stride: 'u32', cols: 'u32' }),
  ],
  overrides: () => ({ WG: 64 }),
});

export interface EmbeddingArgs {
  /** [V, H] weight (embed_tokens), possibly in several parts. */
  table: GpuTensor;
  /** Token ids (u32); token t's id at idsOffset + t. */
  ids: GPUBuffer;
  idsOffset?: number;
  tokens: number;
  /** [tokens, H] f32. */
  out: GPUBuffer;
}

/** out[t*H + c] = table[ids[idsOffset + t], c]. Ids ≥ V leave their row of `out` unwritten. */
export function embedding(ctx: GpuContext, a: EmbeddingArgs): Promise<Dispatch[]> {
  const { table, tokens } = a;
  const idsOffset = a.idsOffset ?? 0;
  if (table.shape.length !== 2) throw new Error(`embedding: table ${table.name} has shape [${table.shape}], not [V, H]`);
  if (!Number.isInteger(tokens) || tokens < 1) throw new Error(`embedding: tokens = ${tokens} must be a positive integer`);
  if (!Number.isInteger(idsOffset) || idsOffset < 0) throw new Error(`embedding: idsOffset = ${idsOffset} must be a non-negative integer`);
  if (table.rowStride % 8 !== 0) throw new Error(`embedding: table ${table.name} row stride ${table.rowStride} is not a multiple of 8`);
  const cols = table.shape[1];
  if (a.ids.size < (idsOffset + tokens) * 4) throw new Error(`embedding: ids holds ${a.ids.size} bytes, needs ${(idsOffset + tokens) * 4}`);
  if (a.out.size < tokens * cols * 4) throw new Error(`embedding: out holds ${a.out.size} bytes, needs ${tokens * cols * 4}`);
  return Promise.all(
    table.parts.map((part) =>
      ctx.dispatch(
        embeddingKernel,
        { dtype: table.dtype },
        {
          table: part.buffer, ids: a.ids, out: a.out,
          params: { tokens, ids_offset: idsOffset, first: part.first, count: part.count, row_stride: table.rowStride, cols },
        },
        grid(tokens, ctx.caps),
      ),
    ),
  );
}
