import { defineKernel, read, uniform, write } from '../gpu/kernel.ts';

/** y = x · rsqrt(mean(x²) + eps) · (1 + w) over rows of `cols` (Qwen3_5RMSNorm). Grid: one workgroup per row. */
export const rmsNorm = defineKernel({
  name: 'rms_norm',
  bindings: () => [read('x'), read('w'), write('y'), uniform('params', { rows: 'u32', cols: 'u32', eps: 'f32' })],
  overrides: () => ({ WG: 64 }),
});
