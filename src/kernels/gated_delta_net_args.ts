import type { Checks } from './checks.ts';

/**
 * The Gated DeltaNet core over T tokens (spec §2.3), as the recurrent (gatedDeltaNetStep) and the chunked
 * (gatedDeltaNetChunk) kernels take it: both give `out` and the updated `state` of HF's recurrent rule.
 */
export interface GatedDeltaNetArgs {
  tokens: number;
  nk: number;
  nv: number;
  dk: number;
  dv: number; // nv % nk == 0; value head h reads key head h / (nv/nk)
  qkv: GPUBuffer;
  qkvStride: number; // activations; token t: q heads at t*qkvStride + [0, nk*dk), k at + nk*dk, v at + 2*nk*dk (already l2-normed/scaled)
  ba: GPUBuffer;
  baStride: number;
  bOffset: number;
  aOffset: number; // activations; b[t,h] = ba[t*baStride + bOffset + h], a likewise
  decayParams: GPUBuffer; // [2, nv] f32: A_log, then dt_bias
  state: GPUBuffer; // [nv, dk, dv] f32, read and updated (zero at sequence start)
  out: GPUBuffer; // [T, nv, dv] activations
}

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
  const inputs = [a.qkv, a.ba, a.decayParams];
  if (a.state === a.out || inputs.includes(a.state) || inputs.includes(a.out)) fail('state and out must be distinct from each other and from the inputs');
  fits('qkv', a.qkv, (T - 1) * a.qkvStride + qkvWidth, actBytes);
  fits('ba', a.ba, (T - 1) * a.baStride + Math.max(a.bOffset, a.aOffset) + nv, actBytes);
  fits('decayParams', a.decayParams, 2 * nv);
  fits('state', a.state, nv * dk * dv);
  fits('out', a.out, T * nv * dv, actBytes);
}
