import { read, uniform, write } from '../gpu/kernel.ts';
import { defineKernel } from './define.ts';
import type { Dispatch, GpuContext } from '../gpu/context.ts';
import { checks } from './checks.ts';
import { type GatedDeltaNetArgs, checkGatedDeltaNetArgs } from './gated_delta_net_args.ts';
import { grid } from './grid.ts';

export interface GatedDeltaNetStepVariant {
  /** Key head size: sizes the per-invocation register slice of a state column. */
  dk: number;
  /** Invocations sharing one state column (its dk rows split between them). */
  ksplit: number;
}

const Params = {
  tokens: 'u32',
  nk: 'u32',
  nv: 'u32',
  dv: 'u32',
  ratio: 'u32',
  qkv_stride: 'u32',
  ba_stride: 'u32',
  b_off: 'u32',
  a_off: 'u32',
} as const;

/** Value columns per workgroup (workgroup = DVT × ksplit invocations). */
const DVT = 32;
const KSPLIT = 8;

/**
 * Recurrent GDN: workgroup (value head, DVT columns), state columns held in registers over all tokens of the call.
 * Grid: nv * ceil(dv / DVT) workgroups. Prefill on CPU adapters: the chunked form's kernels take lavapipe minutes
 * to compile and run slower there than this token loop.
 */
export const gatedDeltaNetStepKernel = defineKernel<GatedDeltaNetStepVariant>({
  name: 'gated_delta_net_step',
  bindings: () => [read('qkv', 'act'), read('ba', 'act'), read('decay_params'), write('state'), write('out', 'act'), uniform('params', Params)],
  helpers: (v) => `const DK: u32 = ${v.dk}u;\nconst KSPLIT: u32 = ${v.ksplit}u;`,
  overrides: () => ({ DVT }),
});

const check = checks('gated_delta_net_step');

/**
 * Recurrent GDN over `tokens` tokens: per token and value head, S = e^g S; u = beta (v - S^T k); S += k u^T;
 * o = S^T q, with beta = sigmoid(b), g = -exp(A_log) softplus(a + dt_bias). The results of gatedDeltaNetChunk.
 */
export async function gatedDeltaNetStep(ctx: GpuContext, a: GatedDeltaNetArgs): Promise<Dispatch[]> {
  checkGatedDeltaNetArgs(check, a, ctx.activationBytes);
  if (a.dk > 256) check.fail(`dk = ${a.dk} is more than 256 (the register slice per invocation)`);
  const params = {
    tokens: a.tokens,
    nk: a.nk,
    nv: a.nv,
    dv: a.dv,
    ratio: a.nv / a.nk,
    qkv_stride: a.qkvStride,
    ba_stride: a.baStride,
    b_off: a.bOffset,
    a_off: a.aOffset,
  };
  const resources = { qkv: a.qkv, ba: a.ba, decay_params: a.decayParams, state: a.state, out: a.out, params };
  const workgroups = grid(a.nv * Math.ceil(a.dv / DVT), ctx.caps);
  return [await ctx.dispatch(gatedDeltaNetStepKernel, { dk: a.dk, ksplit: KSPLIT }, resources, workgroups)];
}
