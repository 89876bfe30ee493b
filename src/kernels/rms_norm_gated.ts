import { read, uniform, write } from '../gpu/kernel.ts';
import { defineKernel } from './define.ts';
import type { Dispatch, GpuContext } from '../gpu/context.ts';
import { workgroupSumF32 } from '../gpu/wgsl.ts';
import { checks } from './checks.ts';
import { grid } from './grid.ts';

const Params = { rows: 'u32', heads: 'u32', dim: 'u32', z_token_stride: 'u32', z_offset: 'u32', eps: 'f32' } as const;

/** Qwen3_5RMSNormGated: y = x · rsqrt(mean(x²) + eps) · w · silu(z) per head vector. Grid: one workgroup per row. */
export const rmsNormGatedKernel = defineKernel({
  name: 'rms_norm_gated',
  bindings: () => [read('x', 'act'), read('z', 'act'), read('w'), write('y', 'act'), uniform('params', Params)],
  helpers: (_v, caps) => workgroupSumF32(caps),
  overrides: () => ({ WG: 64 }),
});

export interface RmsNormGatedArgs {
  /** [rows, dim], rows = T * heads */
  x: GPUBuffer;
  /** gate of row r (t = r / heads, h = r % heads) at z[t*zTokenStride + zOffset + h*dim ..][0, dim) */
  z: GPUBuffer;
  zTokenStride: number;
  zOffset: number;
  /** [dim] plain weight (not 1 + w) */
  w: GPUBuffer;
  /** [rows, dim] */
  y: GPUBuffer;
  rows: number;
  heads: number;
  dim: number;
  eps: number;
}

const check = checks('rms_norm_gated');

/** y[r*dim + i] = x[r*dim + i] · rsqrt(mean_i(x²) + eps) · w[i] · silu(z[t*zTokenStride + zOffset + h*dim + i]). */
export function rmsNormGated(ctx: GpuContext, a: RmsNormGatedArgs): Promise<Dispatch> {
  const { rows, heads, dim } = a;
  check.counts({ rows, heads, dim });
  if (rows % heads !== 0) check.fail(`rows = ${rows} is not a multiple of heads = ${heads}`);
  check.index('zOffset', a.zOffset);
  if (!Number.isInteger(a.zTokenStride) || (rows > heads && a.zTokenStride < heads * dim))
    check.fail(`zTokenStride = ${a.zTokenStride} is less than heads * dim = ${heads * dim}`);
  if (!(a.eps > 0) || !Number.isFinite(a.eps)) check.fail(`eps = ${a.eps} must be a positive number`);
  check.distinct({ x: a.x, z: a.z, w: a.w, y: a.y });
  const ab = ctx.activationBytes;
  check.fits('x', a.x, rows * dim, ab);
  check.fits('y', a.y, rows * dim, ab);
  check.fits('w', a.w, dim);
  check.fits('z', a.z, (rows / heads - 1) * a.zTokenStride + a.zOffset + heads * dim, ab);
  const params = { rows, heads, dim, z_token_stride: a.zTokenStride, z_offset: a.zOffset, eps: a.eps };
  return ctx.dispatch(rmsNormGatedKernel, undefined, { x: a.x, z: a.z, w: a.w, y: a.y, params }, grid(rows, ctx.caps));
}
