import { StepParams, read, uniform, write } from '../gpu/kernel.ts';
import { defineKernel } from './define.ts';
import type { Dispatch, GpuContext } from '../gpu/context.ts';
import { checks } from './checks.ts';
import { grid } from './grid.ts';

/** Channels per workgroup and token segments per channel (workgroup = CH × SEG invocations). */
const CH = 64;
const SEG = 4;

const Params = { tokens: 'u32', channels: 'u32', x_stride: 'u32', w_stride: 'u32', k: 'u32', seg_len: 'u32' } as const;

/** Depthwise causal conv over time + SiLU, carrying the last raw inputs in a ring of K slots. Grid: ceil(C / CH) workgroups. */
export const conv1dCausalKernel = defineKernel({
  name: 'conv1d_causal',
  bindings: () => [read('x', 'act'), read('w'), write('state', 'act'), write('y', 'act'), uniform('params', Params), uniform('step', StepParams)],
  overrides: () => ({ CH, SEG }),
});

export interface Conv1dCausalArgs {
  /** [T, xStride]: channel c of token t at x[t*xStride + c] */
  x: GPUBuffer;
  xStride: number;
  /** [C, wStride]: tap j of channel c at w[c*wStride + j] */
  w: GPUBuffer;
  wStride: number;
  kernelSize: number;
  /** [K, C] ring of raw inputs: slot p % K holds position p's (zeros at sequence start; see the shader) */
  state: GPUBuffer;
  /** StepParams uniform: the absolute position of token 0. */
  step: GPUBuffer;
  /** [T, C] */
  y: GPUBuffer;
  tokens: number;
  channels: number;
}

const check = checks('conv1d_causal');

/**
 * y[t,c] = silu(Σ_{j<K} w[c*wStride + j] · in[t-(K-1)+j, c]) with in[τ<0] from the ring `state` (slot (pos + τ) % K) and
 * in[τ≥0] = x[τ*xStride + c]; afterwards the ring holds the last K-1 raw inputs, so prefill in several calls, or decode token by
 * token, equals one call.
 */
export function conv1dCausal(ctx: GpuContext, a: Conv1dCausalArgs): Promise<Dispatch> {
  const { tokens: T, channels: C, kernelSize: K } = a;
  check.counts({ tokens: T, channels: C });
  check.count('kernelSize', K, 2, 8);
  if (!Number.isInteger(a.xStride) || a.xStride < C) check.fail(`xStride = ${a.xStride} is less than channels = ${C}`);
  if (!Number.isInteger(a.wStride) || a.wStride < K) check.fail(`wStride = ${a.wStride} is less than kernelSize = ${K}`);
  check.distinct({ x: a.x, w: a.w, state: a.state, y: a.y });
  const ab = ctx.activationBytes;
  check.fits('x', a.x, (T - 1) * a.xStride + C, ab);
  check.fits('w', a.w, (C - 1) * a.wStride + K);
  check.fits('state', a.state, K * C, ab);
  check.fits('y', a.y, T * C, ab);
  const params = { tokens: T, channels: C, x_stride: a.xStride, w_stride: a.wStride, k: K, seg_len: Math.ceil(T / SEG) };
  return ctx.dispatch(conv1dCausalKernel, undefined, { x: a.x, w: a.w, state: a.state, y: a.y, params, step: a.step }, grid(Math.ceil(C / CH), ctx.caps));
}
