import { defineKernel, read, uniform, write } from '../gpu/kernel.ts';
import type { Dispatch, GpuContext } from '../gpu/context.ts';
import { grid } from './grid.ts';

const WG = 256;

/** h += Σ_j out[t, j, :]: the routed experts' rows (already weighted) into the residual stream. Grid: ceil(T·H / WG). */
export const moeCombineKernel = defineKernel({
  name: 'moe_combine',
  bindings: () => [write('h'), read('out'), uniform('params', { tokens: 'u32', hidden: 'u32', topk: 'u32' })],
  overrides: () => ({ WG }),
});

/** h[t*hidden + c] += Σ_{j<topk} out[(t*topk + j)*hidden + c] (residual add of the routed experts). */
export async function moeCombine(
  ctx: GpuContext,
  a: { h: GPUBuffer; out: GPUBuffer; tokens: number; hidden: number; topk: number },
): Promise<Dispatch> {
  for (const [what, v] of [['tokens', a.tokens], ['hidden', a.hidden], ['topk', a.topk]] as const) {
    if (!Number.isInteger(v) || v < 1) throw new Error(`moe_combine: ${what} = ${v} must be a positive integer`);
  }
  const rows = a.tokens * a.topk * a.hidden;
  if (rows > 0xffffffff) throw new Error(`moe_combine: ${rows} elements of out do not fit u32 indices`);
  if (a.h === a.out) throw new Error('moe_combine: h and out must be distinct buffers');
  if (a.h.size < a.tokens * a.hidden * 4) throw new Error(`moe_combine: h (${a.h.label}) has ${a.h.size} bytes; ${a.tokens * a.hidden * 4} are needed`);
  if (a.out.size < rows * 4) throw new Error(`moe_combine: out (${a.out.label}) has ${a.out.size} bytes; ${rows * 4} are needed`);
  return ctx.dispatch(
    moeCombineKernel,
    undefined,
    { h: a.h, out: a.out, params: { tokens: a.tokens, hidden: a.hidden, topk: a.topk } },
    grid(Math.ceil((a.tokens * a.hidden) / WG), ctx.caps),
  );
}
