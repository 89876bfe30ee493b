import type { Dispatch, GpuContext } from '../gpu/context.ts';
import { defineKernel, read, uniform, write } from '../gpu/kernel.ts';
import { WORKGROUP_BEST } from '../gpu/wgsl.ts';
import { checks } from './checks.ts';

/** Greedy sampling: index of the largest logit (lowest index on ties). Grid: one workgroup. */
export const argmaxKernel = defineKernel({
  name: 'argmax',
  bindings: () => [read('logits'), write('out', 'u32'), uniform('params', { offset: 'u32', n: 'u32', out_index: 'u32' })],
  helpers: () => WORKGROUP_BEST,
  overrides: () => ({ WG: 256 }),
});

export interface ArgmaxArgs {
  /** f32 logits; the row read is [offset, offset + n). */
  logits: GPUBuffer;
  offset?: number;
  /** Candidates: the tokenizer's size, so padding rows of the vocabulary are never returned. */
  n: number;
  /** u32 buffer; the index is written at outIndex. */
  out: GPUBuffer;
  outIndex?: number;
}

const check = checks('argmax');

/** out[outIndex] = argmax_{i < n} logits[offset + i], ties to the lowest index. One dispatch, one workgroup. */
export function argmax(ctx: GpuContext, a: ArgmaxArgs): Promise<Dispatch> {
  const offset = a.offset ?? 0;
  const outIndex = a.outIndex ?? 0;
  check.count('n', a.n);
  check.index('offset', offset);
  check.index('outIndex', outIndex);
  check.fits('logits', a.logits, offset + a.n);
  check.fits('out', a.out, outIndex + 1);
  return ctx.dispatch(argmaxKernel, undefined, { logits: a.logits, out: a.out, params: { offset, n: a.n, out_index: outIndex } }, [1]);
}
