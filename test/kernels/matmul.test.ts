import { expect, it } from 'vitest';
import { MOE_TILE_TOKENS, matmul } from '../../src/kernels/matmul.ts';
import { type MatmulEpilogue, matmulDense, matmulGrouped } from '../../src/reference/matmul.ts';
import type { GpuContext } from '../../src/gpu/context.ts';
import type { WeightDtype } from '../../src/gpu/tensor.ts';
import { bytesPerElement, paddedCols } from '../../src/gpu/tensor.ts';
import { maskCaps } from '../../src/gpu/caps.ts';
import { uploadTensor } from '../../src/gpu/upload.ts';
import { roundToF16 } from '../../src/formats/half.ts';
import { describeOnAdapters, readF32, upload } from '../helpers/gpu.ts';
import { randn, rng } from '../helpers/random.ts';
import { expectClose } from '../helpers/compare.ts';

const SENTINEL = 7.25;

/** rows × cols laid out at offset + r * stride in a buffer whose gaps hold `gap` (NaN for inputs: must never be read). */
function strided(data: Float32Array, rows: number, cols: number, offset: number, stride: number, gap: number): Float32Array {
  const out = new Float32Array(offset + (rows - 1) * stride + cols + 3).fill(gap);
  for (let r = 0; r < rows; r++) out.set(data.subarray(r * cols, (r + 1) * cols), offset + r * stride);
  return out;
}

/** The inverse of `strided`: the rows × cols block of a laid-out buffer. */
function gather(buf: Float32Array, rows: number, cols: number, offset: number, stride: number): Float32Array {
  const out = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) out.set(buf.subarray(offset + r * stride, offset + r * stride + cols), r * cols);
  return out;
}

/** Binding limit that leaves `items` items of the tensor per part. */
const partCaps = (c: GpuContext, shape: number[], dtype: WeightDtype, items: number) =>
  maskCaps(c.caps, { maxStorageBindingBytes: items * (shape.length === 3 ? shape[1] : 1) * paddedCols(shape[shape.length - 1]) * bytesPerElement(dtype) });

interface DenseCase {
  tokens: number;
  k: number;
  n: number;
  epilogue: MatmulEpilogue;
  xOffset?: number;
  xStride?: number;
  yOffset?: number;
  yStride?: number;
  scales?: { index: number; stride: number };
  itemsPerPart?: number;
  columnGroups?: 1 | 2;
}

async function dense(c: GpuContext, dtype: WeightDtype, t: DenseCase): Promise<void> {
  const { tokens, k, n, epilogue } = t;
  const seed = tokens * 1009 + k * 31 + n + epilogue.length;
  const shape = epilogue === 'swiglu' ? [n, 2, k] : [n, k];
  const wv = randn(shape.reduce((a, b) => a * b), seed, 1 / Math.sqrt(k));
  const w = uploadTensor(c, 'w', shape, wv, dtype, t.itemsPerPart ? partCaps(c, shape, dtype, t.itemsPerPart) : c.caps);
  if (t.itemsPerPart && w.parts.length < 3) throw new Error(`expected several parts, got ${w.parts.length}`);
  const x = randn(tokens * k, seed + 1);
  const [xOffset, xStride, yOffset, yStride] = [t.xOffset ?? 0, t.xStride ?? k, t.yOffset ?? 0, t.yStride ?? n];
  const y0 = randn(tokens * n, seed + 2);
  const yInit = strided(epilogue === 'add' ? y0 : new Float32Array(tokens * n).fill(SENTINEL), tokens, n, yOffset, yStride, SENTINEL);
  const y = upload(c, yInit, 'y');
  let scales: Float32Array | undefined;
  let scaleBuffer: GPUBuffer | undefined;
  if (t.scales) {
    scales = randn(tokens, seed + 3);
    scaleBuffer = upload(c, strided(scales, tokens, 1, t.scales.index, t.scales.stride, NaN), 'scales');
  }
  const dispatches = await matmul(c, {
    w, tokens, epilogue, x: upload(c, strided(x, tokens, k, xOffset, xStride, NaN), 'x'), xOffset, xStride, y, yOffset, yStride,
    scales: scaleBuffer && t.scales ? { buffer: scaleBuffer, ...t.scales } : undefined, columnGroups: t.columnGroups,
  });
  c.run(dispatches);
  const want = matmulDense(x, dtype === 'f16' ? roundToF16(wv) : wv, shape, tokens, epilogue, { y0, scales });
  const got = await readF32(c, y, yInit.length);
  expectClose(gather(got, tokens, n, yOffset, yStride), want, 2e-5, 1e-4, 'Y');
  // Everything outside Y's rows must be untouched.
  expectClose(got, strided(gather(got, tokens, n, yOffset, yStride), tokens, n, yOffset, yStride, SENTINEL), 1e-12, 0, 'gaps');
}

interface GroupedCase {
  k: number;
  /** Output columns (I for swiglu). */
  n: number;
  epilogue: MatmulEpilogue;
  input: 'token' | 'pair';
  scaled: boolean;
  argsOffset: number;
  xStride: number;
  yOffset: number;
  yStride: number;
  itemsPerPart: number;
  columnGroups?: 1 | 2;
}

const E = 16;
const TOPK = 4;
const T = 37;
const SLOTS = 20;
/** Non-identity, with unused slots in between. */
const slotOf = (e: number) => (e * 7 + 3) % SLOTS;

/** Every token picks expert 3 (so that it needs more than one tile) and three other distinct experts. */
function route(seed: number): Uint32Array {
  const r = rng(seed);
  const ids = new Uint32Array(T * TOPK);
  for (let t = 0; t < T; t++) {
    const chosen = new Set<number>([3]);
    while (chosen.size < TOPK) chosen.add(Math.floor(r() * E));
    const list = [...chosen];
    [list[0], list[t % TOPK]] = [list[t % TOPK], list[0]];
    ids.set(list, t * TOPK);
  }
  return ids;
}

/** What moe_group produces: pairs grouped by expert, tiles of ≤ MOE_TILE_TOKENS, plus a 0-count tile and junk past the count. */
function group(ids: Uint32Array): { order: Uint32Array; tiles: Uint32Array; count: number } {
  const order: number[] = [];
  const tiles: number[] = [];
  for (let e = 0; e < E; e++) {
    const start = order.length;
    ids.forEach((id, p) => id === e && order.push(p));
    for (let s = start; s < order.length; s += MOE_TILE_TOKENS) tiles.push(e, s, Math.min(MOE_TILE_TOKENS, order.length - s), 0);
    if (e === 5) tiles.push(9, 0, 0, 0);
  }
  const count = tiles.length / 4;
  // Never dispatched: would overwrite the first tile's pairs with another expert's results.
  tiles.push((tiles[0] + 1) % E, tiles[1], tiles[2], 0);
  return { order: Uint32Array.from(order), tiles: Uint32Array.from(tiles), count };
}

async function grouped(c: GpuContext, dtype: WeightDtype, g: GroupedCase): Promise<void> {
  const { k, n, epilogue, input } = g;
  const seed = k * 13 + n + input.length;
  const rows = epilogue === 'swiglu' ? 2 * n : n;
  const shape = [E, rows, k];
  const wv = randn(E * rows * k, seed, 1 / Math.sqrt(k));
  // The GPU tensor is indexed by slot; unused slots hold NaN.
  const slotted = new Float32Array(SLOTS * rows * k).fill(NaN);
  for (let e = 0; e < E; e++) slotted.set(wv.subarray(e * rows * k, (e + 1) * rows * k), slotOf(e) * rows * k);
  const w = uploadTensor(c, 'experts', [SLOTS, rows, k], slotted, dtype, partCaps(c, [SLOTS, rows, k], dtype, g.itemsPerPart));
  if (w.parts.length < 3) throw new Error(`expected several parts, got ${w.parts.length}`);
  const slots = Uint32Array.from({ length: E }, (_, e) => slotOf(e));

  const ids = route(seed);
  const { order, tiles, count } = group(ids);
  const args = c.indirect('args', 24);
  const argWords = new Uint32Array(6).fill(999);
  argWords[g.argsOffset / 4] = count;
  c.write(args, 0, argWords);

  const pairs = T * TOPK;
  const xRows = input === 'token' ? T : pairs;
  const x = randn(xRows * k, seed + 1);
  const yInit = strided(new Float32Array(pairs * n).fill(SENTINEL), pairs, n, g.yOffset, g.yStride, SENTINEL);
  const y = upload(c, yInit, 'y');
  let scales: Float32Array | undefined;
  if (g.scaled) {
    scales = randn(T * (TOPK + 1), seed + 3);
    for (let t = 0; t < T; t++) scales[t * (TOPK + 1) + TOPK] = NaN; // the shared expert's column
  }
  const dispatches = await matmul(c, {
    w, tokens: T, epilogue, x: upload(c, strided(x, xRows, k, 0, g.xStride, NaN), 'x'), xStride: g.xStride,
    y, yOffset: g.yOffset, yStride: g.yStride,
    scales: scales ? { buffer: upload(c, scales, 'scales'), index: 0, stride: 0 } : undefined,
    grouped: { order: upload(c, order, 'order'), tiles: upload(c, tiles, 'tiles'), args, argsOffset: g.argsOffset, slots: upload(c, slots, 'slots'), topk: TOPK, input },
    columnGroups: g.columnGroups,
  });
  c.run(dispatches);
  const want = matmulGrouped(x, dtype === 'f16' ? roundToF16(wv) : wv, shape, ids, TOPK, input, epilogue, { scales });
  const got = await readF32(c, y, yInit.length);
  expectClose(gather(got, pairs, n, g.yOffset, g.yStride), want, 2e-5, 1e-4, 'Y');
  expectClose(got, strided(gather(got, pairs, n, g.yOffset, g.yStride), pairs, n, g.yOffset, g.yStride, SENTINEL), 1e-12, 0, 'gaps');
}

describeOnAdapters('matmul', (ctx) => {
  for (const dtype of ['f32', 'f16'] as const) {
    // Real widths (hidden 1024, head 256) and sizes that are not multiples of the 64 × 64 (or 64 × 128) tile or the
    // 16-wide K chunk; columnGroups 2 is the 128-column tile that large prefills get.
    for (const [tokens, k, n, columnGroups] of [[2, 128, 33, 1], [5, 100, 1, 1], [64, 1024, 256, 1], [130, 100, 600, 2], [130, 1024, 33, 1]] as const) {
      it(`${dtype} store T=${tokens} K=${k} N=${n} columnGroups=${columnGroups}`, () => dense(ctx(), dtype, { tokens, k, n, epilogue: 'store', columnGroups }));
    }
    for (const columnGroups of [1, 2] as const) {
      it(`${dtype} add, strided and offset X and Y, columnGroups=${columnGroups}`, () =>
        dense(ctx(), dtype, { tokens: 5, k: 128, n: 256, epilogue: 'add', xOffset: 3, xStride: 137, yOffset: 5, yStride: 259, columnGroups }));
    }
    it(`${dtype} swiglu with per-token scales T=64 K=1024 I=256`, () =>
      dense(ctx(), dtype, { tokens: 64, k: 1024, n: 256, epilogue: 'swiglu', scales: { index: 1, stride: 3 } }));
    it(`${dtype} swiglu strided, scales T=130 K=100 I=33`, () =>
      dense(ctx(), dtype, { tokens: 130, k: 100, n: 33, epilogue: 'swiglu', xOffset: 1, xStride: 101, yOffset: 2, yStride: 40, scales: { index: 0, stride: 1 } }));
    it(`${dtype} store, tensor in parts T=5 K=100 N=600`, () =>
      dense(ctx(), dtype, { tokens: 5, k: 100, n: 600, epilogue: 'store', itemsPerPart: 47, columnGroups: 2 }));
    it(`${dtype} swiglu, tensor in parts T=64 K=128 I=33`, () =>
      dense(ctx(), dtype, { tokens: 64, k: 128, n: 33, epilogue: 'swiglu', itemsPerPart: 5, yStride: 50 }));
    it(`${dtype} grouped experts: token input, swiglu, scales`, () =>
      grouped(ctx(), dtype, { k: 256, n: 40, epilogue: 'swiglu', input: 'token', scaled: true, argsOffset: 12, xStride: 256, yOffset: 0, yStride: 40, itemsPerPart: 3 }));
    it(`${dtype} grouped experts: pair input, store`, () =>
      grouped(ctx(), dtype, { k: 100, n: 72, epilogue: 'store', input: 'pair', scaled: false, argsOffset: 0, xStride: 103, yOffset: 3, yStride: 75, itemsPerPart: 6, columnGroups: 2 }));
  }
  it('rejects mismatched shapes, strides and buffers', async () => {
    const c = ctx();
    const w = uploadTensor(c, 'w', [8, 16], randn(128, 1), 'f32');
    const x = c.storage('x', 4 * 64);
    const y = c.storage('y', 4 * 64);
    const base = { w, tokens: 4, x, xStride: 16, y, yStride: 8, epilogue: 'store' } as const;
    await expect(matmul(c, { ...base, epilogue: 'swiglu' })).rejects.toThrow(/matmul\(w\): dense swiglu needs a \[I, 2, K\]/);
    await expect(matmul(c, { ...base, xStride: 15 })).rejects.toThrow(/xStride 15 < K 16/);
    await expect(matmul(c, { ...base, tokens: 5 })).rejects.toThrow(/x holds 256 bytes/);
    await expect(matmul(c, { ...base, y: x })).rejects.toThrow(/distinct/);
  });
});
