import { read, uniform, write } from '../gpu/kernel.ts';
import { SKIPPED_ROW_WGSL } from './rows.ts';
import { lanes, workgroupSum } from '../gpu/wgsl.ts';
import { defineKernel } from './define.ts';
import type { Dispatch, GpuContext } from '../gpu/context.ts';
import { checks } from './checks.ts';
import { grid } from './grid.ts';

export interface GatedDeltaNetDecodeVariant {
  dk: number;
  dv: number;
  /** Invocations sharing one state column (its dk rows split between them): the workgroup is dv · ksplit. */
  ksplit: number;
}

const Params = {
  nk: 'u32',
  nv: 'u32',
  ratio: 'u32',
  conv_dim: 'u32',
  w_stride: 'u32',
  k: 'u32',
  z_off: 'u32',
  b_off: 'u32',
  a_off: 'u32',
  rows: 'u32',
  proj_stride: 'u32',
  y_stride: 'u32',
  eps: 'f32',
  seq_rows: 'u32',
  state_out: 'u32',
} as const;

/** One decode token per row of a DeltaNet layer, in-projection to gated norm (see the shader). Grid: one workgroup per row and value head. */
export const gatedDeltaNetDecodeKernel = defineKernel<GatedDeltaNetDecodeVariant>({
  name: 'gated_delta_net_decode',
  bindings: () => [
    read('proj', 'act'),
    read('conv_w'),
    write('conv_state', 'act'),
    read('decay_params'),
    write('state'),
    read('norm_w'),
    write('y', 'act'),
    uniform('params', Params),
    read('positions', 'u32'),
  ],
  helpers: (v, caps) =>
    [
      `const DK: u32 = ${v.dk}u;\nconst DV: u32 = ${v.dv}u;\nconst KSPLIT: u32 = ${v.ksplit}u;\nconst WG: u32 = ${v.dv * v.ksplit}u;\n${SKIPPED_ROW_WGSL}`,
      lanes(caps.subgroups),
      workgroupSum('workgroup_sum3', 'vec3<f32>', caps.subgroups),
    ].join('\n'),
});

export interface GatedDeltaNetDecodeArgs {
  nk: number;
  nv: number;
  dk: number;
  dv: number;
  /** Rows, each the next token of a sequence of its own (default 1); their states are updated in place. */
  rows?: number;
  /**
   * Instead (rows 1), this many consecutive rows of one sequence, in order (a verification of drafted tokens): the state is
   * read from slot 0 and the state after row t written to slot 1 + t; row 0's raw inputs go to the ring, row t ≥ 1's
   * to pending ring slot K + t − 1 (Session.keepVerified moves those of the rows kept).
   */
  sequenceRows?: number;
  /** [rows] u32: each row's position, or SKIPPED_ROW (sequenceRows: [sequenceRows], consecutive positions). */
  positions: GPUBuffer;
  /** The fused in-projection per row (row r at r·projStride): qkv at [0, 2·nk·dk + nv·dv), z at zOffset, b at bOffset, a at aOffset (activations). */
  proj: GPUBuffer;
  projStride?: number;
  zOffset: number;
  bOffset: number;
  aOffset: number;
  /** [conv_dim, wStride] f32 conv taps; [rows, K, conv_dim] activation rings of raw inputs (conv1d_causal), then the pending slots. */
  convW: GPUBuffer;
  wStride: number;
  kernelSize: number;
  convState: GPUBuffer;
  /** [2, nv] f32: A_log, then dt_bias. */
  decayParams: GPUBuffer;
  /** [rows, nv, dk, dv] f32, read and updated (sequenceRows: [1 + sequenceRows, nv, dk, dv]). */
  state: GPUBuffer;
  /** [dv] f32 weight of the gated RMS norm. */
  normW: GPUBuffer;
  eps: number;
  /** [rows, yStride] activations (default yStride nv·dv). */
  y: GPUBuffer;
  yStride?: number;
}

const check = checks('gated_delta_net_decode');
const isPow2 = (n: number) => Number.isInteger(n) && n > 0 && (n & (n - 1)) === 0;

/**
 * conv1d_causal + l2norm + the delta rule + rms_norm_gated for one token (decode), with the same results: the
 * conv ring, the recurrent state and y as those four dispatches leave them (up to f32 rounding of intermediates,
 * which here are never rounded to the activation type).
 */
export function gatedDeltaNetDecode(ctx: GpuContext, a: GatedDeltaNetDecodeArgs): Promise<Dispatch> {
  const { nk, nv, dk, dv, kernelSize: K } = a;
  const rows = a.rows ?? 1;
  const sequence = a.sequenceRows !== undefined;
  const sequenceRows = a.sequenceRows ?? 1;
  check.counts({ nk, nv, dk, dv, rows, sequenceRows });
  if (sequence && rows > 1) check.fail(`rows = ${rows} sequences with sequenceRows = ${sequenceRows}: rows of one sequence are one sequence`);
  if (nv % nk !== 0) check.fail(`nv = ${nv} is not a multiple of nk = ${nk}`);
  if (dk > 256) check.fail(`dk = ${dk} is more than 256`);
  if (!isPow2(dv) || dv > 256) check.fail(`dv = ${dv} must be a power of two of at most 256`);
  // As many invocations per column as fit 256 (a power of two: the workgroup sums are trees), no more than dk.
  let ksplit = 256 / dv;
  while (ksplit > 1 && ksplit > dk) ksplit /= 2;
  check.count('kernelSize', K, 2, 8);
  if (!Number.isInteger(a.wStride) || a.wStride < K) check.fail(`wStride = ${a.wStride} is less than kernelSize = ${K}`);
  if (!(a.eps > 0) || !Number.isFinite(a.eps)) check.fail(`eps = ${a.eps} must be a positive number`);
  check.counts({ zOffset: a.zOffset, bOffset: a.bOffset, aOffset: a.aOffset }, 0);
  check.distinct({
    proj: a.proj,
    convW: a.convW,
    convState: a.convState,
    decayParams: a.decayParams,
    state: a.state,
    normW: a.normW,
    y: a.y,
    positions: a.positions,
  });
  const convDim = 2 * nk * dk + nv * dv;
  const projRow = Math.max(convDim, a.zOffset + nv * dv, a.bOffset + nv, a.aOffset + nv);
  const projStride = a.projStride ?? projRow;
  const yStride = a.yStride ?? nv * dv;
  const lastRow = rows + sequenceRows - 2;
  const pending = sequenceRows - 1;
  const stateOut = sequence ? 1 : 0;
  if (lastRow > 0 && projStride < projRow) check.fail(`projStride = ${projStride} is less than a row's ${projRow} columns`);
  if (lastRow > 0 && yStride < nv * dv) check.fail(`yStride = ${yStride} is less than a row's ${nv * dv} outputs`);
  const ab = ctx.activationBytes;
  check.fits('proj', a.proj, lastRow * projStride + projRow, ab);
  check.fits('convW', a.convW, (convDim - 1) * a.wStride + K);
  check.fits('convState', a.convState, (rows * K + pending) * convDim, ab);
  check.fits('decayParams', a.decayParams, 2 * nv);
  check.fits('state', a.state, (lastRow + 1 + stateOut) * nv * dk * dv);
  check.fits('normW', a.normW, dv);
  check.fits('y', a.y, lastRow * yStride + nv * dv, ab);
  check.fits('positions', a.positions, lastRow + 1);
  const params = {
    nk,
    nv,
    ratio: nv / nk,
    conv_dim: convDim,
    w_stride: a.wStride,
    k: K,
    z_off: a.zOffset,
    b_off: a.bOffset,
    a_off: a.aOffset,
    rows,
    proj_stride: projStride,
    y_stride: yStride,
    eps: a.eps,
    seq_rows: sequenceRows,
    state_out: stateOut,
  };
  const resources = {
    proj: a.proj,
    conv_w: a.convW,
    conv_state: a.convState,
    decay_params: a.decayParams,
    state: a.state,
    norm_w: a.normW,
    y: a.y,
    params,
    positions: a.positions,
  };
  return ctx.dispatch(gatedDeltaNetDecodeKernel, { dk, dv, ksplit }, resources, grid(rows * nv, ctx.caps));
}
