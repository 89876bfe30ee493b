import { defineKernel, read, uniform, write } from '../gpu/kernel.ts';
import type { Dispatch, GpuContext } from '../gpu/context.ts';
import { type Checks, checks } from './checks.ts';
import { grid } from './grid.ts';

/**
 * The Gated DeltaNet core shared by the recurrent (`gatedDeltaNetStep`) and chunked (`gatedDeltaNetChunk`) kernels:
 * both take these arguments and produce the same `out` and `state` (spec §2.3).
 */
export interface GatedDeltaNetArgs {
  tokens: number; nk: number; nv: number; dk: number; dv: number;   // nv % nk == 0; value head h reads key head h / (nv/nk)
  qkv: GPUBuffer; qkvStride: number;   // activations; token t: q heads at t*qkvStride + [0, nk*dk), k at + nk*dk, v at + 2*nk*dk (already l2-normed/scaled)
  ba: GPUBuffer; baStride: number; bOffset: number; aOffset: number;  // activations; b[t,h] = ba[t*baStride + bOffset + h], a likewise
  aLog: GPUBuffer; dtBias: GPUBuffer;  // [nv] f32
  state: GPUBuffer;                    // [nv, dk, dv] f32, read and updated (zero at sequence start)
  out: GPUBuffer;                      // [T, nv, dv] activations
}

export interface GatedDeltaNetStepVariant {
  /** Key head size: sizes the per-invocation register slice of a state column. */
  dk: number;
  /** Invocations sharing one state column (its dk rows split between them). */
  ksplit: number;
}

const Params = {
  tokens: 'u32', nk: 'u32', nv: 'u32', dv: 'u32', ratio: 'u32',
  qkv_stride: 'u32', ba_stride: 'u32', b_off: 'u32', a_off: 'u32',
} as const;

/** Value columns per workgroup (workgroup = DVT × ksplit invocations). */
const DVT = 32;
const KSPLIT = 8;

/**
 * Recurrent GDN: workgroup (value head, DVT columns), state columns held in registers over all tokens of the call.
 * Grid: nv * ceil(dv / DVT) workgroups.
 */
export const gatedDeltaNetStepKernel = defineKernel<GatedDeltaNetStepVariant>({
  name: 'gated_delta_net_step',
  bindings: () => [
    read('qkv', 'act'), read('ba', 'act'), read('a_log'), read('dt_bias'), write('state'), write('out', 'act'), uniform('params', Params),
  ],
  helpers: (v) => `const DK: u32 = ${v.dk}u;\nconst KSPLIT: u32 = ${v.ksplit}u;`,
  overrides: () => ({ DVT }),
});

/** Checks the shared GDN contract (shapes, strides, buffer sizes, aliasing); errors name `check`'s op. */
export function checkGatedDeltaNetArgs(check: Checks, a: GatedDeltaNetArgs, actBytes: number): void {
  const { fail, fits, counts } = check;
  const { tokens: T, nk, nv, dk, dv } = a;
  counts({ tokens: T, nk, nv, dk, dv });
  if (nv % nk !== 0) fail(`nv = ${nv} is not a multiple of nk = ${nk}`);
  counts({ qkvStride: a.qkvStride, baStride: a.baStride, bOffset: a.bOffset, aOffset: a.aOffset }, 0);
  const qkvWidth = 2 * nk * dk + nv * dv;
  if (T > 1 && a.qkvStride < qkvWidth) fail(`qkvStride = ${a.qkvStride} is less than 2*nk*dk + nv*dv = ${qkvWidth}`);
  if (T > 1 && a.baStride < Math.max(a.bOffset, a.aOffset) + nv) fail(`baStride = ${a.baStride} is less than max(bOffset, aOffset) + nv`);
  const inputs = [a.qkv, a.ba, a.aLog, a.dtBias];
  if (a.state === a.out || inputs.includes(a.state) || inputs.includes(a.out)) fail('state and out must be distinct from each other and from the inputs');
  fits('qkv', a.qkv, (T - 1) * a.qkvStride + qkvWidth, actBytes);
  fits('ba', a.ba, (T - 1) * a.baStride + Math.max(a.bOffset, a.aOffset) + nv, actBytes);
  fits('aLog', a.aLog, nv);
  fits('dtBias', a.dtBias, nv);
  fits('state', a.state, nv * dk * dv);
  fits('out', a.out, T * nv * dv, actBytes);
}

const check = checks('gated_delta_net_step');

/**
 * Recurrent GDN over `tokens` tokens (decode: tokens = 1): per token and value head, S = e^g S;
 * u = beta (v - S^T k); S += k u^T; o = S^T q, with beta = sigmoid(b), g = -exp(A_log) softplus(a + dt_bias).
 */
export async function gatedDeltaNetStep(ctx: GpuContext, a: GatedDeltaNetArgs): Promise<Dispatch[]> {
  checkGatedDeltaNetArgs(check, a, ctx.activationBytes);
  if (a.dk > 256) check.fail(`dk = ${a.dk} is more than 256 (the register slice per invocation)`);
  const params = {
    tokens: a.tokens, nk: a.nk, nv: a.nv, dv: a.dv, ratio: a.nv / a.nk,
    qkv_stride: a.qkvStride, ba_stride: a.baStride, b_off: a.bOffset, a_off: a.aOffset,
  };
  const resources = { qkv: a.qkv, ba: a.ba, a_log: a.aLog, dt_bias: a.dtBias, state: a.state, out: a.out, params };
  const workgroups = grid(a.nv * Math.ceil(a.dv / DVT), ctx.caps);
  return [await ctx.dispatch(gatedDeltaNetStepKernel, { dk: a.dk, ksplit: KSPLIT }, resources, workgroups)];
}
