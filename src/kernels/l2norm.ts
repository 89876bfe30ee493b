import { defineKernel, uniform, write } from '../gpu/kernel.ts';
import type { Dispatch, GpuContext } from '../gpu/context.ts';
import { grid } from './grid.ts';

const Params = { tokens: 'u32', heads: 'u32', dim: 'u32', token_stride: 'u32', scaled_heads: 'u32', scale: 'f32' } as const;

/** In-place l2norm of head vectors (q scaled by Dk^-0.5). Grid: one workgroup per (token, head). */
export const l2normKernel = defineKernel({
  name: 'l2norm',
  bindings: () => [write('x'), uniform('params', Params)],
  overrides: () => ({ WG: 64 }),
});

export interface L2normArgs {
  /** [T, tokenStride]; head h of token t at x[t*tokenStride + h*dim ..][0, dim) */
  x: GPUBuffer;
  tokens: number; heads: number; dim: number; tokenStride: number;
  /** heads h < scaledHeads are also multiplied by `scale` (the q heads, scale Dk^-0.5) */
  scaledHeads: number; scale: number;
}

function fail(message: string): never {
  throw new Error(`l2norm: ${message}`);
}

const isCount = (n: number) => Number.isInteger(n) && n >= 1 && n <= 0xffffffff;

/** v = v · (Σv² + 1e-6)^-1/2 · (h < scaledHeads ? scale : 1), in place (HF l2norm of the GDN core). */
export function l2norm(ctx: GpuContext, a: L2normArgs): Promise<Dispatch> {
  const { tokens, heads, dim, tokenStride } = a;
  if (!isCount(tokens) || !isCount(heads) || !isCount(dim)) fail(`tokens = ${tokens}, heads = ${heads}, dim = ${dim} must be positive integers`);
  if (!Number.isInteger(tokenStride) || tokenStride < heads * dim) fail(`tokenStride = ${tokenStride} is less than heads * dim = ${heads * dim}`);
  if (!Number.isInteger(a.scaledHeads) || a.scaledHeads < 0 || a.scaledHeads > heads) fail(`scaledHeads = ${a.scaledHeads} must be in 0..${heads}`);
  if (!Number.isFinite(a.scale)) fail(`scale = ${a.scale} is not finite`);
  const elements = (tokens - 1) * tokenStride + heads * dim;
  if (elements * 4 > a.x.size) fail(`x needs ${elements} f32 but buffer ${a.x.label || '(unlabelled)'} has ${a.x.size} bytes`);
  const params = { tokens, heads, dim, token_stride: tokenStride, scaled_heads: a.scaledHeads, scale: a.scale };
  return ctx.dispatch(l2normKernel, undefined, { x: a.x, params }, grid(tokens * heads, ctx.caps));
}
