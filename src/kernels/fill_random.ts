import type { Dispatch, GpuContext } from '../gpu/context.ts';
import { defineKernel, uniform, write } from '../gpu/kernel.ts';
import type { WeightDtype } from '../gpu/tensor.ts';
import { grid } from './grid.ts';

const WG = 256;

/** Uniform values in [-scale, scale) into every word of a buffer: synthetic weights for benchmarks. */
export const fillRandomKernel = defineKernel({
  name: 'fill_random',
  bindings: () => [write('y', 'u32'), uniform('params', { words: 'u32', seed: 'u32', scale: 'f32', halves: 'u32' })],
  overrides: () => ({ WG }),
});

export function fillRandom(ctx: GpuContext, a: { y: GPUBuffer; dtype: WeightDtype; seed: number; scale: number }): Promise<Dispatch> {
  const words = a.y.size / 4;
  return ctx.dispatch(
    fillRandomKernel,
    undefined,
    { y: a.y, params: { words, seed: a.seed >>> 0, scale: a.scale, halves: a.dtype === 'f16' ? 1 : 0 } },
    grid(Math.ceil(words / WG), ctx.caps),
  );
}
