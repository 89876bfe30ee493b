import type { Dispatch, GpuContext } from '../gpu/context.ts';
import { read, uniform, write } from '../gpu/kernel.ts';
import { defineKernel } from './define.ts';
import { lanes, workgroupReduce } from '../gpu/wgsl.ts';
import { checks } from './checks.ts';
import { grid } from './grid.ts';

/**
 * Row-wise log-softmax (scoring). In place, y is the only binding: WebGPU refuses one buffer bound both
 * read-only and read-write in a dispatch. Grid: one workgroup per row.
 */
export const logSoftmaxKernel = defineKernel<{ inPlace: boolean }>({
  name: 'log_softmax',
  bindings: (v) => [...(v.inPlace ? [] : [read('x')]), write('y'), uniform('params', { rows: 'u32', cols: 'u32' })],
  helpers: (v, caps) =>
    [
      lanes(caps.subgroups),
      `fn load_x(i: u32) -> f32 { return ${v.inPlace ? 'y' : 'x'}[i]; }`,
      // (max, Σ exp) pairs: both sums rescaled to the larger max.
      workgroupReduce('workgroup_merge', 'vec2<f32>', 'let m = max(a.x, b.x); return vec2<f32>(m, a.y * exp(a.x - m) + b.y * exp(b.x - m));'),
    ].join('\n'),
  overrides: () => ({ WG: 256 }),
});

export interface LogSoftmaxArgs {
  /** [rows, cols] f32. */
  x: GPUBuffer;
  /** [rows, cols] f32; may be x. */
  y: GPUBuffer;
  rows: number;
  cols: number;
}

const check = checks('logSoftmax');

/** y = x - max - log Σ exp(x - max) over each row of `cols`, in f32. */
export function logSoftmax(ctx: GpuContext, a: LogSoftmaxArgs): Promise<Dispatch> {
  const { rows, cols } = a;
  check.counts({ rows, cols });
  check.fits('x', a.x, rows * cols);
  check.fits('y', a.y, rows * cols);
  const inPlace = a.x === a.y;
  const resources: Record<string, GPUBuffer | { rows: number; cols: number }> = { y: a.y, params: { rows, cols } };
  if (!inPlace) resources.x = a.x;
  return ctx.dispatch(logSoftmaxKernel, { inPlace }, resources, grid(rows, ctx.caps));
}
