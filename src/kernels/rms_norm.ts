import type { Dispatch, GpuContext } from '../gpu/context.ts';
import { read, uniform, write } from '../gpu/kernel.ts';
import { defineKernel } from './define.ts';
import { workgroupSumF32 } from '../gpu/wgsl.ts';
import { checks } from './checks.ts';
import { grid } from './grid.ts';

/**
 * y = x · rsqrt(mean(x²) + eps) · (1 + w) over rows of `cols` (Qwen3_5RMSNorm). Grid: one workgroup per row.
 * Row r of x at xOffset + r · cols; row r of y at yOffset + r · yStride (default: packed rows), so two norms can fill the
 * halves of one [rows, 2·cols] input.
 */
export const rmsNormKernel = defineKernel({
  name: 'rms_norm',
  bindings: () => [read('x'), read('w'), write('y'), uniform('params', { rows: 'u32', cols: 'u32', eps: 'f32', y_off: 'u32', y_stride: 'u32', x_off: 'u32' })],
  helpers: (_v, caps) => workgroupSumF32(caps),
  overrides: () => ({ WG: 64 }),
});

const check = checks('rms_norm');

export function rmsNorm(
  ctx: GpuContext,
  a: { x: GPUBuffer; w: GPUBuffer; y: GPUBuffer; rows: number; cols: number; eps: number; xOffset?: number; yOffset?: number; yStride?: number },
): Promise<Dispatch> {
  const xOffset = a.xOffset ?? 0;
  const yOffset = a.yOffset ?? 0;
  const yStride = a.yStride ?? a.cols;
  check.distinct({ x: a.x, y: a.y });
  check.counts({ rows: a.rows, cols: a.cols });
  check.index('xOffset', xOffset);
  check.index('yOffset', yOffset);
  if (yStride < a.cols) check.fail(`yStride ${yStride} < cols ${a.cols}`);
  check.fits('x', a.x, xOffset + a.rows * a.cols);
  check.fits('y', a.y, yOffset + (a.rows - 1) * yStride + a.cols);
  check.fits('w', a.w, a.cols);
  const params = { rows: a.rows, cols: a.cols, eps: a.eps, y_off: yOffset, y_stride: yStride, x_off: xOffset };
  return ctx.dispatch(rmsNormKernel, undefined, { x: a.x, w: a.w, y: a.y, params }, grid(a.rows, ctx.caps));
}
