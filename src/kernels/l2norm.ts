import { uniform, write } from '../gpu/kernel.ts';
import { defineKernel } from './define.ts';
import type { Dispatch, GpuContext } from '../gpu/context.ts';
import { workgroupSumF32 } from '../gpu/wgsl.ts';
import { checks } from './checks.ts';
import { grid } from './grid.ts';

const Params = { tokens: 'u32', heads: 'u32', dim: 'u32', token_stride: 'u32', scaled_heads: 'u32', scale: 'f32' } as const;

/** In-place l2norm of head vectors (q scaled by Dk^-0.5). Grid: one workgroup per (token, head). */
export const l2normKernel = defineKernel({
  name: 'l2norm',
  bindings: () => [write('x', 'act'), uniform('params', Params)],
  helpers: (_v, caps) => workgroupSumF32(caps),
  overrides: () => ({ WG: 64 }),
});

export interface L2normArgs {
  /** [T, tokenStride]; head h of token t at x[t*tokenStride + h*dim ..][0, dim) */
  x: GPUBuffer;
  tokens: number;
  heads: number;
  dim: number;
  tokenStride: number;
  /** heads h < scaledHeads are also multiplied by `scale` (the q heads, scale Dk^-0.5) */
  scaledHeads: number;
  scale: number;
}

const check = checks('l2norm');

/** v = v · (Σv² + 1e-6)^-1/2 · (h < scaledHeads ? scale : 1), in place (HF l2norm of the GDN core). */
export function l2norm(ctx: GpuContext, a: L2normArgs): Promise<Dispatch> {
  const { tokens, heads, dim, tokenStride } = a;
  check.counts({ tokens, heads, dim });
  if (!Number.isInteger(tokenStride) || tokenStride < heads * dim) check.fail(`tokenStride = ${tokenStride} is less than heads * dim = ${heads * dim}`);
  check.count('scaledHeads', a.scaledHeads, 0, heads);
  if (!Number.isFinite(a.scale)) check.fail(`scale = ${a.scale} is not finite`);
  check.fits('x', a.x, (tokens - 1) * tokenStride + heads * dim, ctx.activationBytes);
  const params = { tokens, heads, dim, token_stride: tokenStride, scaled_heads: a.scaledHeads, scale: a.scale };
  return ctx.dispatch(l2normKernel, undefined, { x: a.x, params }, grid(tokens * heads, ctx.caps));
}
