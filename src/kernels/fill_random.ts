import type { Dispatch, GpuContext } from '../gpu/context.ts';
import { uniform, write } from '../gpu/kernel.ts';
import { defineKernel } from './define.ts';
import type { WeightDtype } from '../gpu/tensor.ts';
import { q4ItemWords } from '../numeric/q4.ts';
import { checks } from './checks.ts';
import { grid } from './grid.ts';

const WG = 256;
const MODES: Record<WeightDtype, number> = { f32: 0, f16: 1, q4: 2 };

/**
 * Uniform values in [-scale, scale) into every word of a buffer: synthetic weights for benchmarks. For q4 the
 * buffer is items of `itemStride` elements: random nibbles, every scale scale / 8 (values in [-scale, 7/8 scale]).
 */
export const fillRandomKernel = defineKernel({
  name: 'fill_random',
  bindings: () => [write('y', 'u32'), uniform('params', { words: 'u32', seed: 'u32', scale: 'f32', mode: 'u32', item_words: 'u32', nib_words: 'u32' })],
  overrides: () => ({ WG }),
});

const check = checks('fill_random');

export async function fillRandom(
  ctx: GpuContext,
  a: { y: GPUBuffer; dtype: WeightDtype; seed: number; scale: number; itemStride?: number },
): Promise<Dispatch> {
  if (!(a.dtype in MODES)) check.fail(`unknown dtype ${String(a.dtype)}`);
  const itemStride = a.itemStride ?? 0;
  if (a.dtype === 'q4' && !(Number.isInteger(itemStride) && itemStride > 0 && itemStride % 64 === 0)) {
    check.fail(`q4 needs the tensor's itemStride (a positive multiple of 64), got ${String(a.itemStride)}`);
  }
  const words = a.y.size / 4;
  return ctx.dispatch(
    fillRandomKernel,
    undefined,
    {
      y: a.y,
      params: {
        words,
        seed: a.seed >>> 0,
        scale: a.scale,
        mode: MODES[a.dtype],
        item_words: a.dtype === 'q4' ? q4ItemWords(itemStride) : 1,
        nib_words: a.dtype === 'q4' ? itemStride / 8 : 1,
      },
    },
    grid(Math.ceil(words / WG), ctx.caps),
  );
}
