import { expect, it } from 'vitest';
import { MOE_TILE_TOKENS, matmul } from '../../src/kernels/matmul.ts';
import { type MatmulEpilogue, matmulDense, matmulGrouped } from '../../src/reference/matmul.ts';
import type { GpuContext } from '../../src/gpu/context.ts';
import type { WeightDtype } from '../../src/gpu/tensor.ts';
import { planTensorLayout } from '../../src/gpu/tensor.ts';
import { maskCaps } from '../../src/gpu/caps.ts';
import { uploadTensor } from '../helpers/upload.ts';
import { roundToF16 } from '../../src/numeric/half.ts';
import { roundToQ4 } from '../../src/numeric/q4.ts';
import { actTolerance, describeOnAdapters, readAct, readF32, roundAct, upload, uploadAct } from '../helpers/gpu.ts';
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
  maskCaps(c.caps, { maxStorageBindingBytes: items * planTensorLayout('w', shape, dtype, c.caps).itemBytes });

/** The weights a tensor of this dtype holds (the reference runs on them: the quantiser's error is not the kernel's). */
const stored = (values: Float32Array, shape: number[], dtype: WeightDtype) =>
  dtype === 'f16' ? roundToF16(values) : dtype === 'q4' ? roundToQ4(values, shape) : values;

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
  /** X and Y in f32 whatever the activations (the normed residual stream in, logits or the stream out). */
  input?: 'f32';
  output?: 'f32';
}

/** Y as read back: f32 logits, or activations (then judged with their rounding). */
async function readY(c: GpuContext, y: GPUBuffer, length: number, f32Out: boolean): Promise<Float32Array> {
  return f32Out ? readF32(c, y, length) : readAct(c, y, length);
}

async function dense(c: GpuContext, dtype: WeightDtype, t: DenseCase): Promise<void> {
  const { tokens, k, n, epilogue } = t;
  const seed = tokens * 1009 + k * 31 + n + epilogue.length;
  const shape = epilogue === 'swiglu' ? [n, 2, k] : [n, k];
  const wv = randn(
    shape.reduce((a, b) => a * b),
    seed,
    1 / Math.sqrt(k),
  );
  const w = uploadTensor(c, 'w', shape, wv, dtype, t.itemsPerPart ? partCaps(c, shape, dtype, t.itemsPerPart) : c.caps);
  if (t.itemsPerPart && w.parts.length < 3) throw new Error(`expected several parts, got ${w.parts.length}`);
  // Activations are rounded first (f16 activations), so the reference reads what the kernel reads.
  const f32Out = t.output === 'f32';
  const x = t.input === 'f32' ? randn(tokens * k, seed + 1) : roundAct(c, randn(tokens * k, seed + 1));
  const [xOffset, xStride, yOffset, yStride] = [t.xOffset ?? 0, t.xStride ?? k, t.yOffset ?? 0, t.yStride ?? n];
  const y0 = f32Out ? randn(tokens * n, seed + 2) : roundAct(c, randn(tokens * n, seed + 2));
  const yInit = strided(epilogue === 'add' ? y0 : new Float32Array(tokens * n).fill(SENTINEL), tokens, n, yOffset, yStride, SENTINEL);
  const y = f32Out ? upload(c, yInit, 'y') : uploadAct(c, yInit, 'y');
  let scales: Float32Array | undefined;
  let scaleBuffer: GPUBuffer | undefined;
  if (t.scales) {
    scales = randn(tokens, seed + 3);
    scaleBuffer = upload(c, strided(scales, tokens, 1, t.scales.index, t.scales.stride, NaN), 'scales');
  }
  const dispatches = await matmul(c, {
    w,
    tokens,
    epilogue,
    x: (t.input === 'f32' ? upload : uploadAct)(c, strided(x, tokens, k, xOffset, xStride, NaN), 'x'),
    xOffset,
    xStride,
    y,
    yOffset,
    yStride,
    scales: scaleBuffer && t.scales ? { buffer: scaleBuffer, ...t.scales } : undefined,
    columnGroups: t.columnGroups,
    input: t.input,
    output: t.output,
  });
  c.run(dispatches);
  const want = matmulDense(x, stored(wv, shape, dtype), shape, tokens, epilogue, { y0, scales });
  const got = await readY(c, y, yInit.length, f32Out);
  const [atol, rtol] = f32Out ? [2e-5, 1e-4] : actTolerance(c, 2e-5, 1e-4);
  expectClose(gather(got, tokens, n, yOffset, yStride), want, atol, rtol, 'Y');
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
  /** X / Y element types other than activations (the model reads the normed stream and writes expert outputs in f32). */
  xType?: 'f32';
  yType?: 'f32';
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
  // The GPU tensor is indexed by slot; unused slots hold NaN (q4: large values, since NaN does not quantise).
  const slotted = new Float32Array(SLOTS * rows * k).fill(dtype === 'q4' ? 1e4 : NaN);
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
  const x = g.xType === 'f32' ? randn(xRows * k, seed + 1) : roundAct(c, randn(xRows * k, seed + 1));
  const yInit = strided(new Float32Array(pairs * n).fill(SENTINEL), pairs, n, g.yOffset, g.yStride, SENTINEL);
  const y = (g.yType === 'f32' ? upload : uploadAct)(c, yInit, 'y');
  let scales: Float32Array | undefined;
  if (g.scaled) {
    scales = randn(T * (TOPK + 1), seed + 3);
    for (let t = 0; t < T; t++) scales[t * (TOPK + 1) + TOPK] = NaN; // the shared expert's column
  }
  const dispatches = await matmul(c, {
    w,
    tokens: T,
    epilogue,
    x: (g.xType === 'f32' ? upload : uploadAct)(c, strided(x, xRows, k, 0, g.xStride, NaN), 'x'),
    xStride: g.xStride,
    y,
    yOffset: g.yOffset,
    yStride: g.yStride,
    input: g.xType,
    output: g.yType,
    scales: scales ? { buffer: upload(c, scales, 'scales'), index: 0, stride: 0 } : undefined,
    grouped: {
      order: upload(c, order, 'order'),
      tiles: upload(c, tiles, 'tiles'),
      args,
      argsOffset: g.argsOffset,
      slots: upload(c, slots, 'slots'),
      topk: TOPK,
      input,
    },
    columnGroups: g.columnGroups,
  });
  c.run(dispatches);
  const want = matmulGrouped(x, stored(wv, shape, dtype), shape, ids, TOPK, input, epilogue, { scales });
  const got = await readY(c, y, yInit.length, g.yType === 'f32');
  expectClose(
    gather(got, pairs, n, g.yOffset, g.yStride),
    want,
    ...(g.yType === 'f32' ? ([2e-5, 1e-4] as [number, number]) : actTolerance(c, 2e-5, 1e-4)),
    'Y',
  );
  expectClose(got, strided(gather(got, pairs, n, g.yOffset, g.yStride), pairs, n, g.yOffset, g.yStride, SENTINEL), 1e-12, 0, 'gaps');
}

describeOnAdapters(
  'matmul',
  (ctx) => {
    for (const dtype of ['f32', 'f16', 'q4'] as const) {
      // Real widths (hidden 1024, head 256) and sizes that are not multiples of the 64 × 64 (or 64 × 128) tile or the
      // 16-wide K chunk; columnGroups 2 is the 128-column tile that large prefills get.
      for (const [tokens, k, n, columnGroups] of [
        [2, 128, 33, 1],
        [5, 100, 1, 1],
        [64, 1024, 256, 1],
        [130, 100, 600, 2],
        [130, 1024, 33, 1],
      ] as const) {
        it(`${dtype} store T=${tokens} K=${k} N=${n} columnGroups=${columnGroups}`, () =>
          dense(ctx(), dtype, { tokens, k, n, epilogue: 'store', columnGroups }));
      }
      for (const columnGroups of [1, 2] as const) {
        it(`${dtype} add, strided and offset X and Y, columnGroups=${columnGroups}`, () =>
          dense(ctx(), dtype, { tokens: 5, k: 128, n: 256, epilogue: 'add', xOffset: 3, xStride: 137, yOffset: 5, yStride: 259, columnGroups }));
      }
      it(`${dtype} swiglu with per-token scales T=64 K=1024 I=256`, () =>
        dense(ctx(), dtype, { tokens: 64, k: 1024, n: 256, epilogue: 'swiglu', scales: { index: 1, stride: 3 } }));
      it(`${dtype} swiglu strided, scales T=130 K=100 I=33`, () =>
        dense(ctx(), dtype, {
          tokens: 130,
          k: 100,
          n: 33,
          epilogue: 'swiglu',
          xOffset: 1,
          xStride: 101,
          yOffset: 2,
          yStride: 40,
          scales: { index: 0, stride: 1 },
        }));
      it(`${dtype} store, tensor in parts T=5 K=100 N=600`, () =>
        dense(ctx(), dtype, { tokens: 5, k: 100, n: 600, epilogue: 'store', itemsPerPart: 47, columnGroups: 2 }));
      // lm_head: logits stay f32 whatever the activations.
      it(`${dtype} store into f32 logits, offset Y, in parts T=9 K=128 N=300`, () =>
        dense(ctx(), dtype, { tokens: 9, k: 128, n: 300, epilogue: 'store', output: 'f32', yOffset: 3, itemsPerPart: 100 }));
      // The residual stream: f32 in (its norm) and out (the add), whatever the activations.
      it(`${dtype} add from and into f32, in parts T=7 K=256 N=300`, () =>
        dense(ctx(), dtype, { tokens: 7, k: 256, n: 300, epilogue: 'add', input: 'f32', output: 'f32', itemsPerPart: 100 }));
      it(`${dtype} swiglu, tensor in parts T=64 K=128 I=33`, () =>
        dense(ctx(), dtype, { tokens: 64, k: 128, n: 33, epilogue: 'swiglu', itemsPerPart: 5, yStride: 50 }));
      it(`${dtype} grouped experts: token input, swiglu, scales`, () =>
        grouped(ctx(), dtype, {
          k: 256,
          n: 40,
          epilogue: 'swiglu',
          input: 'token',
          scaled: true,
          argsOffset: 12,
          xStride: 256,
          yOffset: 0,
          yStride: 40,
          itemsPerPart: 3,
          xType: 'f32',
        }));
      it(`${dtype} grouped experts: token input in activations`, () =>
        grouped(ctx(), dtype, {
          k: 128,
          n: 24,
          epilogue: 'swiglu',
          input: 'token',
          scaled: true,
          argsOffset: 0,
          xStride: 130,
          yOffset: 1,
          yStride: 30,
          itemsPerPart: 5,
        }));
      it(`${dtype} grouped experts: pair input, store`, () =>
        grouped(ctx(), dtype, {
          k: 100,
          n: 72,
          epilogue: 'store',
          input: 'pair',
          scaled: false,
          argsOffset: 0,
          xStride: 103,
          yOffset: 3,
          yStride: 75,
          itemsPerPart: 6,
          columnGroups: 2,
          yType: 'f32',
        }));
    }
    it('rejects mismatched shapes, strides and buffers', async () => {
      const c = ctx();
      const w = uploadTensor(c, 'w', [8, 16], randn(128, 1), 'f32');
      const x = c.storage('x', 4 * 64);
      const y = c.storage('y', 4 * 64);
      const base = { w, tokens: 4, x, xStride: 16, y, yStride: 8, epilogue: 'store' } as const;
      await expect(matmul(c, { ...base, epilogue: 'swiglu' })).rejects.toThrow(/matmul\(w\): dense swiglu needs a \[I, 2, K\]/);
      await expect(matmul(c, { ...base, xStride: 15 })).rejects.toThrow(/xStride 15 < K 16/);
      // Checks that fail with 2- and 4-byte activations alike; f32 logits are sized at 4 bytes.
      await expect(matmul(c, { ...base, tokens: 9 })).rejects.toThrow(/x holds 256 bytes, 9 rows need/);
      await expect(matmul(c, { ...base, output: 'f32', y: c.storage('y', 96) })).rejects.toThrow(/y holds 96 bytes, 4 rows need 128/);
      await expect(matmul(c, { ...base, y: x })).rejects.toThrow(/distinct/);
    });
  },
  { act16: true },
);
