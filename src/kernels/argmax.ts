import type { Dispatch, GpuContext } from '../gpu/context.ts';
import { defineKernel, read, uniform, write } from '../gpu/kernel.ts';

/** Greedy sampling: index of the largest logit (lowest index on ties). Grid: one workgroup. */
export const argmaxKernel = defineKernel({
  name: 'argmax',
  bindings: () => [read('logits'), write('out', 'u32'), uniform('params', { offset: 'u32', n: 'u32', out_index: 'u32' })],
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

/** out[outIndex] = argmax_{i < n} logits[offset + i], ties to the lowest index. One dispatch, one workgroup. */
export function argmax(ctx: GpuContext, a: ArgmaxArgs): Promise<Dispatch> {
  const offset = a.offset ?? 0;
  const outIndex = a.outIndex ?? 0;
  if (!Number.isInteger(a.n) || a.n < 1) throw new Error(`argmax: n = ${a.n} must be a positive integer`);
  if (!Number.isInteger(offset) || offset < 0) throw new Error(`argmax: offset = ${offset} must be a non-negative integer`);
  if (!Number.isInteger(outIndex) || outIndex < 0) throw new Error(`argmax: outIndex = ${outIndex} must be a non-negative integer`);
  if (a.logits.size < (offset + a.n) * 4) throw new Error(`argmax: logits holds ${a.logits.size} bytes, needs ${(offset + a.n) * 4}`);
  if (a.out.size < (outIndex + 1) * 4) throw new Error(`argmax: out holds ${a.out.size} bytes, needs ${(outIndex + 1) * 4}`);
  return ctx.dispatch(argmaxKernel, undefined, { logits: a.logits, out: a.out, params: { offset, n: a.n, out_index: outIndex } }, [1]);
}
