import type { Dispatch, GpuContext } from '../gpu/context.ts';
import { defineKernel, read, uniform, write } from '../gpu/kernel.ts';
import { grid } from './grid.ts';

/** y = x · rsqrt(mean(x²) + eps) · (1 + w) over rows of `cols` (Qwen3_5RMSNorm). Grid: one workgroup per row. */
export const rmsNormKernel = defineKernel({
  name: 'rms_norm',
  bindings: () => [read('x'), read('w'), write('y'), uniform('params', { rows: 'u32', cols: 'u32', eps: 'f32' })],
  overrides: () => ({ WG: 64 }),
});

export function rmsNorm(ctx: GpuContext, a: { x: GPUBuffer; w: GPUBuffer; y: GPUBuffer; rows: number; cols: number; eps: number }): Promise<Dispatch> {
  if (a.x === a.y) throw new Error('rms_norm: x and y must be different buffers');
  if (a.w.size < a.cols * 4) throw new Error(`rms_norm: weight holds ${a.w.size / 4} values, fewer than cols ${a.cols}`);
  return ctx.dispatch(rmsNormKernel, undefined, { x: a.x, w: a.w, y: a.y, params: { rows: a.rows, cols: a.cols, eps: a.eps } }, grid(a.rows, ctx.caps));
}
