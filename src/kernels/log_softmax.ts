import type { Dispatch, GpuContext } from '../gpu/context.ts';
import { defineKernel, read, uniform, write } from '../gpu/kernel.ts';
import { grid } from './grid.ts';

/**
 * Row-wise log-softmax (scoring). In place, y is the only binding: WebGPU refuses one buffer bound both
 * read-only and read-write in a dispatch. Grid: one workgroup per row.
 */
export const logSoftmaxKernel = defineKernel<{ inPlace: boolean }>({
  name: 'log_softmax',
  bindings: (v) => [
    ...(v.inPlace ? [] : [read('x')]),
    write('y'),
    uniform('params', { rows: 'u32', cols: 'u32' }),
  ],
  helpers: (v) => `fn load_x(i: u32) -> f32 { return ${v.inPlace ? 'y' : 'x'}[i]; }`,
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

/** y = x - max - log Σ exp(x - max) over each row of `cols`, in f32. */
export function logSoftmax(ctx: GpuContext, a: LogSoftmaxArgs): Promise<Dispatch> {
  const { rows, cols } = a;
  if (!Number.isInteger(rows) || rows < 1) throw new Error(`logSoftmax: rows = ${rows} must be a positive integer`);
  if (!Number.isInteger(cols) || cols < 1) throw new Error(`logSoftmax: cols = ${cols} must be a positive integer`);
  const bytes = rows * cols * 4;
  if (a.x.size < bytes) throw new Error(`logSoftmax: x holds ${a.x.size} bytes, needs ${bytes}`);
  if (a.y.size < bytes) throw new Error(`logSoftmax: y holds ${a.y.size} bytes, needs ${bytes}`);
  const inPlace = a.x === a.y;
  const resources: Record<string, GPUBuffer | { rows: number; cols: number }> = { y: a.y, params: { rows, cols } };
  if (!inPlace) resources.x = a.x;
  return ctx.dispatch(logSoftmaxKernel, { inPlace }, resources, grid(rows, ctx.caps));
}
