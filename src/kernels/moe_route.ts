import { read, uniform, write } from '../gpu/kernel.ts';
import { defineKernel } from './define.ts';
import type { Dispatch, GpuContext } from '../gpu/context.ts';
import { WORKGROUP_BEST, lanes } from '../gpu/wgsl.ts';
import { checks } from './checks.ts';
import { grid } from './grid.ts';

/** Invocations per token: E = 512 gives 8 experts each, and a 6-step reduction per chosen expert. */
const WG = 64;
/** Matches MAX_TOPK in shaders/moe_route.wgsl. */
export const MOE_MAX_TOPK = 16;
/** One bit per held expert in a u32 (see the shader's contract). */
export const MOE_ROUTE_MAX_EXPERTS = 32 * WG;

/**
 * Router softmax + top-k + renormalisation and the shared-expert sigmoid gate (Qwen3_5MoeSparseMoeBlock).
 * Grid: one workgroup per token.
 */
export const moeRouteKernel = defineKernel({
  name: 'moe_route',
  bindings: () => [read('logits'), write('ids', 'u32'), write('gates'), uniform('params', { tokens: 'u32', experts: 'u32', topk: 'u32' })],
  helpers: (_v, caps) => `${lanes(caps.subgroups)}\n${WORKGROUP_BEST}`,
  overrides: () => ({ WG }),
});

const check = checks('moe_route');

/**
 * Per token t: p = softmax(logits[t*(E+1) + e], e < E); top-k by p (ties → lower expert id), ordered by
 * descending p; w_j = p_j / Σ_top p; ids[t*topk + j] = expert id (u32); gates[t*(topk+1) + j] = w_j;
 * gates[t*(topk+1) + topk] = sigmoid(logits[t*(E+1) + E]).
 */
export async function moeRoute(
  ctx: GpuContext,
  a: { logits: GPUBuffer; tokens: number; experts: number; topk: number; ids: GPUBuffer; gates: GPUBuffer },
): Promise<Dispatch> {
  check.count('tokens', a.tokens);
  check.count('experts', a.experts, 1, MOE_ROUTE_MAX_EXPERTS);
  check.count('topk', a.topk, 1, Math.min(MOE_MAX_TOPK, a.experts));
  check.fits('logits', a.logits, a.tokens * (a.experts + 1));
  check.fits('ids', a.ids, a.tokens * a.topk);
  check.fits('gates', a.gates, a.tokens * (a.topk + 1));
  check.distinct({ logits: a.logits, ids: a.ids, gates: a.gates });
  return ctx.dispatch(
    moeRouteKernel,
    undefined,
    { logits: a.logits, ids: a.ids, gates: a.gates, params: { tokens: a.tokens, experts: a.experts, topk: a.topk } },
    grid(a.tokens, ctx.caps),
  );
}
