import { read, uniform, write } from '../gpu/kernel.ts';
import { defineKernel } from './define.ts';
import type { Dispatch, GpuContext } from '../gpu/context.ts';
import { checks } from './checks.ts';
import { grid } from './grid.ts';

const WG = 256;

/** h += Σ_j out[t, j, :]: the routed experts' rows (already weighted) into the residual stream. Grid: ceil(T·H / WG). */
export const moeCombineKernel = defineKernel({
  name: 'moe_combine',
  bindings: () => [write('h'), read('out'), uniform('params', { tokens: 'u32', hidden: 'u32', topk: 'u32' })],
  overrides: () => ({ WG }),
});

const check = checks('moe_combine');

/** h[t*hidden + c] += Σ_{j<topk} out[(t*topk + j)*hidden + c] (residual add of the routed experts). */
export async function moeCombine(ctx: GpuContext, a: { h: GPUBuffer; out: GPUBuffer; tokens: number; hidden: number; topk: number }): Promise<Dispatch> {
  check.counts({ tokens: a.tokens, hidden: a.hidden, topk: a.topk });
  const rows = a.tokens * a.topk * a.hidden;
  if (rows > 0xffffffff) check.fail(`${rows} elements of out do not fit u32 indices`);
  check.distinct({ h: a.h, out: a.out });
  check.fits('h', a.h, a.tokens * a.hidden);
  check.fits('out', a.out, rows);
  return ctx.dispatch(
    moeCombineKernel,
    undefined,
    { h: a.h, out: a.out, params: { tokens: a.tokens, hidden: a.hidden, topk: a.topk } },
    grid(Math.ceil((a.tokens * a.hidden) / WG), ctx.caps),
  );
}
