import { expect, it } from 'vitest';
import { type Epilogue, type MatvecArgs, matvec, matvecTuning } from '../../src/kernels/matvec.ts';
import { leadingRows, weightFormat } from '../../src/gpu/tensor.ts';
import { matvec as reference } from '../../src/reference/matvec.ts';
import { uploadTensor } from '../helpers/upload.ts';
import { maskCaps } from '../../src/gpu/caps.ts';
import type { GpuContext } from '../../src/gpu/context.ts';
import type { WeightDtype } from '../../src/gpu/tensor.ts';
import { roundToF16 } from '../../src/numeric/half.ts';
import { roundToQ4 } from '../../src/numeric/q4.ts';
import { actTolerance, describeOnAdapters, readAct, readF32, roundAct, upload, uploadAct } from '../helpers/gpu.ts';
import { randn } from '../helpers/random.ts';
import { expectClose } from '../helpers/compare.ts';

interface Case {
  shape: number[];
  dtype: WeightDtype;
  epilogue: Epilogue;
  seed: number;
  xOffset?: number;
  xStride?: number;
  yOffset?: number;
  yStride?: number;
  scale?: boolean;
  experts?: { E: number; topk: number; mode: 'each' | 'sum' };
  /** A binding limit small enough to split w into parts. */
  maxBindingBytes?: number;
  tuning?: MatvecArgs['tuning'];
  minParts?: number;
  /** x and y in f32 whatever the activations (the normed residual stream in, logits or the stream out). */
  input?: 'f32';
  output?: 'f32';
  /** RMS-norm x first (the residual stream into a projection), with weights of this seed. */
  norm?: boolean;
  /** Dense over several tokens (x and y rows xStride / yStride apart; scales strided too). */
  tokens?: number;
  /** Only this many leading rows of a dense w (leadingRows: a drafter's LM head over part of the vocabulary). */
  leading?: number;
  /**
   * Also run on lavapipe with the other adapter class's default shape. Each case is a pipeline of its own, which a
   * CPU adapter takes seconds to compile: the marked cases cover each weight format, epilogue, expert mode, parts,
   * leading rows, norm and several tokens once, rather than every combination twice.
   */
  otherShape?: true;
}

/** A fixed, non-identity expert → slot table, and picks that include a repeated expert. */
const slotTable = (E: number) => Uint32Array.from({ length: E }, (_, e) => (e * 5 + 3) % E);
const pickIds = (E: number, topk: number, seed: number) =>
  Uint32Array.from({ length: topk + 2 }, (_, j) => (j === topk - 1 ? (seed * 7) % E : (seed + j * 11) % E));

/**
 * Runs a case with the tuning the case names, or the adapter's default (`other` false), or the default of the
 * other class of adapter (`other` true: a GPU's shape on lavapipe), so both shapes are checked on every adapter.
 */
async function runCase(ctx: GpuContext, c: Case, other = false): Promise<void> {
  const K = c.shape[c.shape.length - 1];
  const mode = c.experts?.mode;
  const topk = c.experts?.topk ?? 1;
  const shape = c.leading ? [c.leading, K] : c.shape;
  const N = c.experts ? (c.epilogue === 'swiglu' ? c.shape[1] / 2 : c.shape[1]) : shape[0];
  const wValues = randn(
    c.shape.reduce((a, b) => a * b, 1),
    c.seed,
    1 / Math.sqrt(K),
  );
  const caps = c.maxBindingBytes ? maskCaps(ctx.caps, { maxStorageBindingBytes: c.maxBindingBytes }) : ctx.caps;
  const whole = uploadTensor(ctx, 'w', c.shape, wValues, c.dtype, caps);
  // The rows past the leading ones are in the buffers the view binds: y past its N must stay untouched.
  const w = c.leading ? leadingRows(whole, c.leading) : whole;
  if (c.minParts) expect(w.parts.length).toBeGreaterThanOrEqual(c.minParts);

  const xOffset = c.xOffset ?? 0;
  const xStride = c.xStride ?? K;
  const yOffset = c.yOffset ?? 0;
  const yStride = c.yStride ?? N;
  // x runs on past K with large values: the kernel must not read them into any row.
  const tokens = c.tokens ?? 1;
  const xLen = xOffset + (mode === 'sum' ? (topk - 1) * xStride : (tokens - 1) * xStride) + K + 13;
  // With f16 activations x and y are rounded first (1e30 to infinity), so the reference reads what the kernel reads.
  const f32In = c.input === 'f32';
  const xRaw = randn(xLen, c.seed + 1, 1).map((v, i) => (i >= xLen - 13 ? 1e30 : v));
  const x = f32In ? xRaw : roundAct(ctx, xRaw);
  const yLen = yOffset + (mode === 'each' ? topk - 1 : tokens - 1) * yStride + N + 5;
  const f32Out = c.output === 'f32';
  const y0 = f32Out ? randn(yLen, c.seed + 2, 1) : roundAct(ctx, randn(yLen, c.seed + 2, 1));
  const scaleStride = tokens > 1 ? 3 : undefined;
  const scales = c.scale ? randn(3 + topk + (tokens - 1) * 3, c.seed + 3, 1) : undefined;
  const slots = c.experts ? slotTable(c.experts.E) : undefined;
  const ids = c.experts ? pickIds(c.experts.E, topk, c.seed) : undefined;
  const idsOffset = c.experts ? 1 : 0;

  const yBuf = f32Out ? upload(ctx, y0, 'y') : uploadAct(ctx, y0, 'y');
  const norm = c.norm ? { weight: randn(K, c.seed + 5, 0.3), eps: 1e-6 } : undefined;
  const dispatches = await matvec(ctx, {
    w,
    x: f32In ? upload(ctx, x, 'x') : uploadAct(ctx, x, 'x'),
    xOffset,
    xStride: c.xStride,
    y: yBuf,
    yOffset,
    yStride: c.yStride,
    input: c.input,
    output: c.output,
    epilogue: c.epilogue,
    scales: scales ? { buffer: upload(ctx, scales, 'scales'), index: 2, stride: scaleStride } : undefined,
    tokens: c.tokens,
    experts:
      c.experts && ids && slots ? { ids: upload(ctx, ids, 'ids'), idsOffset, slots: upload(ctx, slots, 'slots'), topk, mode: c.experts.mode } : undefined,
    tuning: c.tuning ?? (other ? otherTuning(ctx, c, w) : undefined),
    norm: norm && { weight: upload(ctx, norm.weight, 'norm'), eps: norm.eps },
  });
  expect(dispatches.length).toBe(w.parts.length);
  ctx.run(dispatches);
  // The quantiser's error is not the kernel's: q4 is checked against the weights it stands for.
  const wRef = c.dtype === 'f16' ? roundToF16(wValues) : c.dtype === 'q4' ? roundToQ4(wValues, c.shape) : wValues;
  let want = y0;
  for (let t = 0; t < tokens; t++) {
    want = reference({
      w: wRef,
      shape,
      x,
      xOffset: xOffset + t * xStride,
      xStride: c.xStride,
      y: want,
      yOffset: yOffset + t * yStride,
      yStride: c.yStride,
      epilogue: c.epilogue,
      scales: scales ? { values: scales, index: 2 + t * (scaleStride ?? 0) } : undefined,
      experts: c.experts && ids && slots ? { ids, idsOffset, slots, topk, mode: c.experts.mode } : undefined,
      norm,
    });
  }
  // f32 sums of K terms of size ~1/sqrt(K): error grows like sqrt(K) ulps; an f16 y adds its own rounding.
  // 'sum' over several parts adds each part's share to y in turn: an f16 y is rounded once per part.
  const partRoundings = mode === 'sum' && w.parts.length > 1 ? w.parts.length * 2 ** -11 * want.reduce((m, v) => Math.max(m, Math.abs(v)), 0) : 0;
  const tol: [number, number] = f32Out ? [2e-5 * Math.sqrt(K / 128), 1e-5] : actTolerance(ctx, 2e-5 * Math.sqrt(K / 128), 1e-5, { atol: partRoundings });
  expectClose(f32Out ? await readF32(ctx, yBuf, yLen) : await readAct(ctx, yBuf, yLen), want, ...tol);
}

function otherTuning(ctx: GpuContext, c: Case, w: { dtype: WeightDtype; itemStride: number }): MatvecArgs['tuning'] {
  const K = c.shape[c.shape.length - 1];
  const unit = c.dtype === 'q4' ? 32 : 8;
  const mode = c.experts?.mode;
  const rows = c.experts ? (c.epilogue === 'swiglu' ? c.shape[1] / 2 : c.shape[1]) : (c.leading ?? c.shape[0]);
  const units = (mode === 'sum' ? c.experts!.topk : 1) * Math.ceil(K / unit);
  return matvecTuning({ ...ctx.caps, cpu: !ctx.caps.cpu }, weightFormat(w), {
    units,
    rows,
    picks: mode === 'each' ? c.experts!.topk : 1,
    tokens: c.tokens ?? 1,
  });
}

const label = (c: Case) =>
  `${c.dtype} [${c.shape}] ${c.epilogue}${c.experts ? ` experts ${c.experts.mode} E=${c.experts.E} topk=${c.experts.topk}` : ''}` +
  `${c.scale ? ' scaled' : ''}${c.maxBindingBytes ? ` parts<=${c.maxBindingBytes}B` : ''}${c.tuning ? ` wg=${c.tuning.wg} tpr=${c.tuning.tpr} rps=${c.tuning.rps} xu=${c.tuning.xu} ru=${c.tuning.ru} xr=${c.tuning.xr}${c.tuning.stage ? ' staged' : ''}` : ''}` +
  `${c.xOffset || c.yOffset ? ` xOff=${c.xOffset ?? 0} yOff=${c.yOffset ?? 0}` : ''}${c.input ? ` input ${c.input}` : ''}${c.output ? ` output ${c.output}` : ''}${c.norm ? ' normed' : ''}${c.tokens ? ` tokens=${c.tokens}` : ''}` +
  `${c.leading ? ` leading ${c.leading} rows` : ''}`;

const cases: Case[] = [];
/** A float case that f32 weights run too: f32 differs from f16 only in how a unit of weights loads. */
type FloatCase = Case & { f32?: true };
for (const dtype of ['f32', 'f16'] as const) {
  const s = dtype === 'f32' ? 0 : 100;
  const b = dtype === 'f32' ? 4 : 2;
  // K in {128, 1024, 100 (not /8), 2560}, N in {1, 7, 256, 1000}; x and y at odd offsets. f32 keeps the cases whose
  // units load unaligned, past an x tile, split into parts or through experts.
  const floatCases: FloatCase[] = [
    { shape: [256, 128], dtype, epilogue: 'store', seed: s + 1 },
    { shape: [7, 1024], dtype, epilogue: 'add', seed: s + 2, xOffset: 3, yOffset: 5, otherShape: true },
    { shape: [1000, 100], dtype, epilogue: 'store', seed: s + 3, xOffset: 1, yOffset: 2, scale: true, f32: true, otherShape: true },
    { shape: [1, 2560], dtype, epilogue: 'add', seed: s + 4 },
    { shape: [256, 2560], dtype, epilogue: 'store', seed: s + 5, xOffset: 7 },
    { shape: [1000, 1024], dtype, epilogue: 'add', seed: s + 6, scale: true },
    // Past one x tile (2048 elements) and not a multiple of 8.
    { shape: [9, 4100], dtype, epilogue: 'add', seed: s + 7, xOffset: 2, f32: true, otherShape: true },
    // Dense swiglu [I, 2, K] (Qwen3_5MLP gate/up fused), scaled (the sigmoid-gated shared expert).
    { shape: [100, 2, 1024], dtype, epilogue: 'swiglu', seed: s + 8, scale: true, yOffset: 3 },
    { shape: [33, 2, 300], dtype, epilogue: 'swiglu', seed: s + 9, scale: true, f32: true },
    // MoE: E=16, topk 4, non-identity slots, 'each' swiglu with routing scales, 'sum' add.
    { shape: [16, 192, 256], dtype, epilogue: 'swiglu', seed: s + 10, scale: true, experts: { E: 16, topk: 4, mode: 'each' }, yStride: 100, yOffset: 1 },
    { shape: [16, 256, 260], dtype, epilogue: 'add', seed: s + 11, scale: true, experts: { E: 16, topk: 4, mode: 'sum' }, xOffset: 3, xStride: 265, f32: true },
    { shape: [16, 7, 1024], dtype, epilogue: 'add', seed: s + 12, scale: true, experts: { E: 16, topk: 4, mode: 'sum' } },
    { shape: [16, 100, 100], dtype, epilogue: 'store', seed: s + 13, experts: { E: 16, topk: 4, mode: 'each' }, f32: true },
    // Tensors forced into several parts (one dispatch per part).
    { shape: [300, 256], dtype, epilogue: 'add', seed: s + 14, maxBindingBytes: 64 * 1024, minParts: 3, yOffset: 4, f32: true },
    // Leading rows: ending inside a part, and on a part's end (the parts past it not dispatched).
    {
      shape: [300, 256],
      dtype,
      epilogue: 'store',
      seed: s + 18,
      maxBindingBytes: 64 * 1024,
      minParts: 2,
      leading: 77 + (64 * 1024) / (256 * b),
      output: 'f32',
    },
    { shape: [300, 256], dtype, epilogue: 'store', seed: s + 19, maxBindingBytes: 64 * 1024, leading: (64 * 1024) / (256 * b), input: 'f32', output: 'f32' },
    { shape: [100, 2, 300], dtype, epilogue: 'swiglu', seed: s + 15, scale: true, maxBindingBytes: 16 * 1024, minParts: 3 },
    {
      shape: [16, 192, 256],
      dtype,
      epilogue: 'swiglu',
      seed: s + 16,
      scale: true,
      experts: { E: 16, topk: 4, mode: 'each' },
      maxBindingBytes: 4 * 192 * 256 * b,
      minParts: 4,
    },
    {
      shape: [16, 256, 260],
      dtype,
      epilogue: 'add',
      seed: s + 17,
      scale: true,
      experts: { E: 16, topk: 4, mode: 'sum' },
      maxBindingBytes: 3 * 256 * 264 * b,
      minParts: 5,
      f32: true,
    },
  ];
  for (const { f32, ...c } of floatCases) if (dtype === 'f16' || f32) cases.push(c);
}
// q4 (rows padded to 64; blocks 16-byte aligned when itemStride is a multiple of 256, else read word by word):
// K 128/100/300/4100 unaligned, 256/1024/2560 aligned; parts hold whole items of itemStride * 9/16 bytes.
const q4 = (shape: number[]) => (shape.length === 3 ? shape[1] : 1) * Math.ceil(shape[shape.length - 1] / 64) * 36;
cases.push(
  { shape: [256, 128], dtype: 'q4', epilogue: 'store', seed: 201 },
  { shape: [7, 1024], dtype: 'q4', epilogue: 'add', seed: 202, xOffset: 3, yOffset: 5, otherShape: true },
  { shape: [1000, 100], dtype: 'q4', epilogue: 'store', seed: 203, xOffset: 1, yOffset: 2, scale: true, otherShape: true },
  { shape: [256, 2560], dtype: 'q4', epilogue: 'store', seed: 205, xOffset: 7 },
  { shape: [9, 4100], dtype: 'q4', epilogue: 'add', seed: 207, xOffset: 2 },
  { shape: [100, 2, 1024], dtype: 'q4', epilogue: 'swiglu', seed: 208, scale: true, yOffset: 3, otherShape: true },
  { shape: [33, 2, 300], dtype: 'q4', epilogue: 'swiglu', seed: 209, scale: true },
  {
    shape: [16, 192, 256],
    dtype: 'q4',
    epilogue: 'swiglu',
    seed: 210,
    scale: true,
    experts: { E: 16, topk: 4, mode: 'each' },
    otherShape: true,
    yStride: 100,
    yOffset: 1,
  },
  {
    shape: [16, 256, 260],
    dtype: 'q4',
    epilogue: 'add',
    seed: 211,
    scale: true,
    experts: { E: 16, topk: 4, mode: 'sum' },
    otherShape: true,
    xOffset: 3,
    xStride: 265,
  },
  { shape: [16, 7, 1024], dtype: 'q4', epilogue: 'add', seed: 212, scale: true, experts: { E: 16, topk: 4, mode: 'sum' } },
  { shape: [16, 100, 100], dtype: 'q4', epilogue: 'store', seed: 213, experts: { E: 16, topk: 4, mode: 'each' } },
  { shape: [300, 256], dtype: 'q4', epilogue: 'add', seed: 214, maxBindingBytes: 100 * q4([300, 256]), minParts: 3, yOffset: 4 },
  {
    shape: [300, 256],
    dtype: 'q4',
    epilogue: 'store',
    seed: 222,
    otherShape: true,
    maxBindingBytes: 100 * q4([300, 256]),
    minParts: 2,
    leading: 133,
    input: 'f32',
    output: 'f32',
  },
  { shape: [1000, 1024], dtype: 'q4', epilogue: 'store', seed: 223, leading: 999, yOffset: 3, input: 'f32', output: 'f32' },
  { shape: [100, 2, 300], dtype: 'q4', epilogue: 'swiglu', seed: 215, scale: true, maxBindingBytes: 40 * q4([100, 2, 300]), minParts: 3 },
  {
    shape: [16, 192, 256],
    dtype: 'q4',
    epilogue: 'swiglu',
    seed: 216,
    scale: true,
    experts: { E: 16, topk: 4, mode: 'each' },
    maxBindingBytes: 4 * q4([16, 192, 256]),
    minParts: 4,
  },
  {
    shape: [16, 256, 260],
    dtype: 'q4',
    epilogue: 'add',
    seed: 217,
    otherShape: true,
    scale: true,
    experts: { E: 16, topk: 4, mode: 'sum' },
    maxBindingBytes: 3 * q4([16, 256, 260]),
    minParts: 5,
  },
  { shape: [4000, 64], dtype: 'q4', epilogue: 'store', seed: 218, tuning: { wg: 64, tpr: 16, rps: 3, xu: 1, stage: false, ru: 3, xr: 1 } },
  // Several K tiles (x reloaded per tile), partial sums carried across them.
  { shape: [37, 2, 1100], dtype: 'q4', epilogue: 'swiglu', seed: 219, scale: true, tuning: { wg: 16, tpr: 4, rps: 5, xu: 2, stage: true, ru: 2, xr: 1 } },
  { shape: [37, 2, 1100], dtype: 'q4', epilogue: 'swiglu', seed: 221, scale: true, tuning: { wg: 16, tpr: 4, rps: 5, xu: 2, stage: false, ru: 4, xr: 1 } },
  {
    shape: [16, 33, 300],
    dtype: 'q4',
    epilogue: 'add',
    seed: 220,
    scale: true,
    experts: { E: 16, topk: 4, mode: 'sum' },
    tuning: { wg: 8, tpr: 8, rps: 7, xu: 1, stage: true, ru: 1, xr: 1 },
  },
);
// lm_head-like: many workgroups, short rows; logits stay f32 whatever the activations.
cases.push({ shape: [50000, 64], dtype: 'f16', epilogue: 'store', seed: 300, otherShape: true });
cases.push({ shape: [1000, 1024], dtype: 'f16', epilogue: 'store', seed: 302, output: 'f32', yOffset: 3 });
cases.push({ shape: [300, 256], dtype: 'q4', epilogue: 'store', seed: 303, output: 'f32', maxBindingBytes: 100 * q4([300, 256]), minParts: 3 });
// The residual stream: f32 in (its norm) and out (the add), whatever the activations; experts summed into it.
cases.push({ shape: [300, 1024], dtype: 'q4', epilogue: 'add', seed: 304, input: 'f32', output: 'f32', xOffset: 1, otherShape: true });
cases.push({ shape: [16, 128, 1024], dtype: 'f16', epilogue: 'swiglu', seed: 305, input: 'f32', scale: true, experts: { E: 16, topk: 4, mode: 'each' } });
cases.push({ shape: [16, 256, 260], dtype: 'f16', epilogue: 'add', seed: 306, output: 'f32', scale: true, experts: { E: 16, topk: 4, mode: 'sum' } });
// The residual stream RMS-normed on the way in (the norm before each projection, fused).
cases.push(
  { shape: [300, 1024], dtype: 'q4', epilogue: 'store', seed: 310, input: 'f32', norm: true, otherShape: true },
  { shape: [100, 2, 1024], dtype: 'f16', epilogue: 'swiglu', seed: 311, input: 'f32', scale: true, norm: true, otherShape: true },
  { shape: [16, 192, 256], dtype: 'q4', epilogue: 'swiglu', seed: 312, input: 'f32', scale: true, norm: true, experts: { E: 16, topk: 4, mode: 'each' } },
  { shape: [7, 100], dtype: 'f32', epilogue: 'add', seed: 313, input: 'f32', output: 'f32', xOffset: 3, norm: true },
  {
    shape: [37, 2, 1100],
    dtype: 'q4',
    epilogue: 'swiglu',
    seed: 314,
    input: 'f32',
    norm: true,
    tuning: { wg: 16, tpr: 4, rps: 5, xu: 2, stage: true, ru: 3, xr: 1 },
  },
  {
    shape: [37, 2, 1100],
    dtype: 'q4',
    epilogue: 'swiglu',
    seed: 316,
    input: 'f32',
    norm: true,
    tuning: { wg: 16, tpr: 4, rps: 5, xu: 2, stage: false, ru: 2, xr: 1 },
  },
  { shape: [300, 256], dtype: 'q4', epilogue: 'store', seed: 315, input: 'f32', output: 'f32', norm: true, maxBindingBytes: 100 * q4([300, 256]), minParts: 3 },
);
// Several tokens through one dispatch (prefill on CPU adapters): rows of x and y apart, scales per token.
cases.push(
  { shape: [300, 1024], dtype: 'q4', epilogue: 'store', seed: 320, tokens: 5, xStride: 1030, yStride: 301, xOffset: 2, otherShape: true },
  { shape: [100, 2, 300], dtype: 'f16', epilogue: 'swiglu', seed: 321, tokens: 3, xStride: 300, yStride: 100, scale: true, otherShape: true },
  { shape: [70, 260], dtype: 'f32', epilogue: 'add', seed: 322, tokens: 4, xStride: 270, yStride: 75, input: 'f32', output: 'f32', otherShape: true },
);
// Several tokens per workgroup (xr), each weight loaded once for all of them: a last job with fewer tokens, staged
// and held x, norms, scales, swiglu, and workgroups of one set (subgroups where the adapter has them).
cases.push(
  {
    shape: [300, 1024],
    dtype: 'q4',
    epilogue: 'store',
    seed: 330,
    tokens: 7,
    xStride: 1030,
    yStride: 301,
    input: 'f32',
    norm: true,
    scale: true,
    tuning: { wg: 8, tpr: 8, rps: 16, xu: 4, stage: true, ru: 1, xr: 3 },
  },
  {
    shape: [37, 2, 1100],
    dtype: 'q4',
    epilogue: 'swiglu',
    seed: 331,
    tokens: 5,
    xStride: 1100,
    yStride: 40,
    norm: true,
    scale: true,
    tuning: { wg: 16, tpr: 4, rps: 5, xu: 2, stage: false, ru: 3, xr: 2 },
  },
  {
    shape: [100, 300],
    dtype: 'f16',
    epilogue: 'add',
    seed: 332,
    tokens: 4,
    norm: true,
    tuning: { wg: 32, tpr: 32, rps: 4, xu: 1, stage: false, ru: 4, xr: 4 },
  },
  {
    shape: [50, 2, 260],
    dtype: 'f32',
    epilogue: 'swiglu',
    seed: 333,
    tokens: 6,
    input: 'f32',
    tuning: { wg: 8, tpr: 8, rps: 9, xu: 2, stage: true, ru: 1, xr: 4 },
  },
);
// More than 65,535 workgroups: a 2-D grid (flat_id).
cases.push({ shape: [70001, 8], dtype: 'f32', epilogue: 'store', seed: 301, tuning: { wg: 4, tpr: 4, rps: 1, xu: 1, stage: false, ru: 1, xr: 1 } });

/**
 * A token's result must not depend on the tokens beside it (a batch's rows, a verification's, decode the same as
 * alone): `tokens` tokens in one call, bit for bit against each token in a call of its own.
 */
async function tokensAsAlone(ctx: GpuContext, c: Case, other: boolean): Promise<void> {
  const K = c.shape[c.shape.length - 1];
  const N = c.shape[0];
  const tokens = c.tokens ?? 1;
  const w = uploadTensor(
    ctx,
    'w',
    c.shape,
    randn(
      c.shape.reduce((a, b) => a * b, 1),
      c.seed,
      1 / Math.sqrt(K),
    ),
    c.dtype,
  );
  const x = upload(ctx, randn(tokens * K, c.seed + 1, 1), 'x');
  const norm = c.norm ? { weight: upload(ctx, randn(K, c.seed + 5, 0.3), 'norm'), eps: 1e-6 } : undefined;
  const call = (first: number, count: number, y: GPUBuffer) =>
    matvec(ctx, {
      w,
      x,
      xOffset: first * K,
      y,
      yOffset: first * N,
      input: 'f32',
      output: 'f32',
      epilogue: c.epilogue,
      norm,
      tokens: count,
      tuning: other ? otherTuning(ctx, { ...c, tokens: count }, w) : undefined,
    });
  const together = ctx.storage('together', tokens * N * 4);
  const alone = ctx.storage('alone', tokens * N * 4);
  const dispatches = await call(0, tokens, together);
  for (let t = 0; t < tokens; t++) dispatches.push(...(await call(t, 1, alone)));
  ctx.run(dispatches);
  const bits = async (y: GPUBuffer) => new Uint32Array((await readF32(ctx, y, tokens * N)).buffer);
  expect(await bits(together)).toEqual(await bits(alone));
}

/** Shapes for tokensAsAlone: q4 with its norm (every projection of a decode row), f16 swiglu, several per workgroup. */
const asAlone: Case[] = [
  { shape: [200, 1024], dtype: 'q4', epilogue: 'store', seed: 340, tokens: 6, norm: true, otherShape: true },
  { shape: [64, 2, 4096], dtype: 'q4', epilogue: 'swiglu', seed: 341, tokens: 4 },
  { shape: [90, 2, 520], dtype: 'f16', epilogue: 'swiglu', seed: 342, tokens: 3, norm: true },
];

describeOnAdapters(
  'matvec',
  (ctx, adapter) => {
    const lavapipe = adapter.name === 'lavapipe' || adapter.name === 'lavapipe-portable';
    // Cases with a tuning of their own (the largest pipelines here) run where rows meet both ways, through subgroups
    // and through workgroup memory; SwiftShader and f16 activations run the default shapes, several tokens included.
    for (const c of cases) if (lavapipe || !c.tuning) it(label(c), () => runCase(ctx(), c));
    for (const c of asAlone) it(`${label(c)}: each token as alone, bit for bit`, () => tokensAsAlone(ctx(), c, false));
    // GPU shapes are only ever checked on a CPU adapter (CI has no GPU): on lavapipe, with subgroups (sums over
    // several 8-lane subgroups) and without.
    if (lavapipe) {
      for (const c of cases.filter((c) => c.otherShape)) it(`${label(c)} (the other adapter class's shape)`, () => runCase(ctx(), c, true));
      for (const c of asAlone.filter((c) => c.otherShape))
        it(`${label(c)}: each token as alone, bit for bit (the other adapter class's shape)`, () => tokensAsAlone(ctx(), c, true));
    }

    // One set per workgroup (every default shape) sums its rows through subgroups where the adapter has them: both
    // paths must stay covered, so an adapter that stops exposing them fails here rather than going untested.
    it(`${adapter.mask?.subgroups === false ? 'sums rows through workgroup memory' : 'sums rows through subgroups'}`, () => {
      expect(ctx().caps.subgroups).toBe(adapter.mask?.subgroups !== false);
    });

    it('rejects bad arguments', async () => {
      const c = ctx();
      const buf = (n: number) => c.storage('b', n * 4);
      // Sizes past 16 bytes (the smallest buffer): each check must fail with 2-byte activations too.
      const dense = uploadTensor(c, 'dense', [10, 16], new Float32Array(160), 'f32');
      const experts = uploadTensor(c, 'experts', [4, 3, 16], new Float32Array(192), 'f32');
      const ex = (mode: 'each' | 'sum') => ({ ids: buf(4), slots: buf(4), topk: 2, mode });
      const cases: [Partial<MatvecArgs>, RegExp][] = [
        [{ w: experts, epilogue: 'store', experts: ex('sum') }, /'sum'.*epilogue 'add'/],
        [{ w: experts, epilogue: 'swiglu', experts: ex('each') }, /even row count/],
        [{ w: dense, epilogue: 'swiglu' }, /\[I, 2, K\]/],
        [{ w: dense, x: buf(4), epilogue: 'store' }, /x needs 16 elements/],
        [{ w: dense, y: buf(4), epilogue: 'store' }, /y needs 10 elements/],
        [{ w: dense, y: buf(8), output: 'f32', epilogue: 'store' }, /y needs 10 elements \(40 bytes\)/],
        [{ w: experts, epilogue: 'store', experts: ex('each'), yStride: 2 }, /yStride 2/],
        [{ w: dense, epilogue: 'store', tuning: { wg: 100, tpr: 4, rps: 1, xu: 1, stage: false, ru: 1, xr: 1 } }, /powers of two/],
        [{ w: dense, epilogue: 'store', tuning: { wg: 256, tpr: 256, rps: 128, xu: 1, stage: false, ru: 1, xr: 4 } }, /rows per set fit the workgroup memory/],
        [{ w: experts, epilogue: 'add', experts: { ...ex('sum'), ids: buf(40), topk: 33 } }, /topk <= 32/],
        [{ w: dense, epilogue: 'store', tuning: { wg: 8, tpr: 8, rps: 1, xu: 1, stage: false, ru: 1, xr: 5 } }, /1 <= xr <= 4/],
        [{ w: experts, epilogue: 'store', experts: ex('each'), tuning: { wg: 8, tpr: 8, rps: 1, xu: 1, stage: false, ru: 1, xr: 2 } }, /dense weights only/],
        [{ w: experts, epilogue: 'add', experts: ex('sum'), norm: { weight: buf(16), eps: 1e-6 } }, /norm is not taken with experts 'sum'/],
        [{ w: dense, epilogue: 'store', norm: { weight: buf(8), eps: 1e-6 } }, /norm.weight needs 16 elements/],
      ];
      for (const [args, message] of cases) {
        await expect(matvec(c, { x: buf(64), y: buf(64), ...args } as MatvecArgs)).rejects.toThrow(message);
      }
      const same = buf(64);
      await expect(matvec(c, { w: dense, x: same, y: same, epilogue: 'store' })).rejects.toThrow(/distinct/);
    });
  },
  { act16: true },
);
