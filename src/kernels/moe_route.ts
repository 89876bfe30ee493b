import { defineKernel, read, uniform, write } from '../gpu/kernel.ts';
import type { Dispatch, GpuContext } from '../gpu/context.ts';
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
  bindings: () => [
    read('logits'), write('ids', 'u32'), write('gates'),
    uniform('params', { tokens: 'u32', experts: 'u32', topk: 'u32' }),
  ],
  overrides: () => ({ WG }),
});

function checkCount(what: string, value: number, min: number, max: number): void {
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new Error(`moe_route: ${what} = ${value} must be an integer in [${min}, ${max}]`);
  }
}

function checkSize(what: string, buffer: GPUBuffer, elements: number): void {
  if (buffer.size < elements * 4) {
    throw new Error(`moe_route: ${what} (${buffer.label}) has ${buffer.size} bytes; ${elements * 4} are needed`);
  }
}

/**
 * Per token t: p = softmax(logits[t*(E+1) + e], e < E); top-k by p (ties → lower expert id), ordered by
 * descending p; w_j = p_j / Σ_top p; ids[t*topk + j] = expert id (u32); gates[t*(topk+1) + j] = w_j;
 * gates[t*(topk+1) + topk] = sigmoid(logits[t*(E+1) + E]).
 */
export async function moeRoute(
  ctx: GpuContext,
  a: { logits: GPUBuffer; tokens: number; experts: number; topk: number; ids: GPUBuffer; gates: GPUBuffer },
): Promise<Dispatch> {
  checkCount('tokens', a.tokens, 1, 0xffffffff);
  checkCount('experts', a.experts, 1, MOE_ROUTE_MAX_EXPERTS);
  checkCount('topk', a.topk, 1, Math.min(MOE_MAX_TOPK, a.experts));
  checkSize('logits', a.logits, a.tokens * (a.experts + 1));
  checkSize('ids', a.ids, a.tokens * a.topk);
  checkSize('gates', a.gates, a.tokens * (a.topk + 1));
  if (a.ids === a.gates || a.ids === a.logits || a.gates === a.logits) throw new Error('moe_route: logits, ids and gates must be distinct buffers');
  return ctx.dispatch(
    moeRouteKernel,
    undefined,
    { logits: a.logits, ids: a.ids, gates: a.gates, params: { tokens: a.tokens, experts: a.experts, topk: a.topk } },
    grid(a.tokens, ctx.caps),
  );
}
