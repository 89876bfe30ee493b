import type { Dispatch, GpuContext } from '../gpu/context.ts';
import { read, uniform, weight, write } from '../gpu/kernel.ts';
import { defineKernel } from './define.ts';
import { type GpuTensor, type WeightFormat, weightFormat } from '../gpu/tensor.ts';
import { checks } from './checks.ts';
import { grid } from './grid.ts';

/** Row gather from a [V, H] weight, f32, f16 or q4; one dispatch per tensor part. Grid: one workgroup per token. */
export const embeddingKernel = defineKernel<{ format: WeightFormat }>({
  name: 'embedding',
  bindings: (v) => [
    weight('table', v.format),
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
  /** [tokens, H] f32: the residual stream. */
  out: GPUBuffer;
}

const check = checks('embedding');

/** out[t*H + c] = table[ids[idsOffset + t], c]. Ids ≥ V leave their row of `out` unwritten. */
export function embedding(ctx: GpuContext, a: EmbeddingArgs): Promise<Dispatch[]> {
  const { table, tokens } = a;
  const idsOffset = a.idsOffset ?? 0;
  if (table.shape.length !== 2) check.fail(`table ${table.name} has shape [${table.shape}], not [V, H]`);
  check.count('tokens', tokens);
  check.index('idsOffset', idsOffset);
  if (table.rowStride % 8 !== 0) check.fail(`table ${table.name} row stride ${table.rowStride} is not a multiple of 8`);
  const cols = table.shape[1];
  check.fits('ids', a.ids, idsOffset + tokens);
  check.fits('out', a.out, tokens * cols);
  return Promise.all(
    table.parts.map((part) =>
      ctx.dispatch(
        embeddingKernel,
        { format: weightFormat(table) },
        {
          table: part.buffer,
          ids: a.ids,
          out: a.out,
          params: { tokens, ids_offset: idsOffset, first: part.first, count: part.count, row_stride: table.rowStride, cols },
        },
        grid(tokens, ctx.caps),
      ),
    ),
  );
}
