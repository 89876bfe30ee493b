import { expect, it } from 'vitest';
import { type PlaceQ4Args, type QuantizeQ4Args, placeQ4, quantizeQ4 } from '../../src/kernels/quantize.ts';
import { placeQ4 as placeReference, quantizeQ4 as reference } from '../../src/reference/quantize.ts';
import type { SourceDtype } from '../../src/numeric/source_dtype.ts';
import { fillRandom } from '../../src/kernels/fill_random.ts';
import { dequantizeQ4Item, q4ItemWords, q4RowStride, quantizeQ4Item } from '../../src/numeric/q4.ts';
import { f16BitsToF32, f32ToF16Bits } from '../../src/numeric/half.ts';
import { maskCaps } from '../../src/gpu/caps.ts';
import { uploadTensor } from '../helpers/upload.ts';
import type { GpuContext } from '../../src/gpu/context.ts';
import { describeOnAdapters, upload } from '../helpers/gpu.ts';
import { randn, rng } from '../helpers/random.ts';

const SENTINEL = 0xa5a5a5a5;

/**
 * Source values that reach every branch of the quantiser: groups of very different magnitudes (f16 subnormal
 * scales, values near the zero-group threshold 7·2^-25, beyond the ±458528 clamp for f32 and bf16), zero and
 * constant groups, lone outliers, exact multiples of a power of two (ties), and plain Gaussian rows.
 */
function sourceValues(dtype: SourceDtype, n: number, seed: number): Float32Array {
  const r = rng(seed);
  const g = randn(n, seed + 1);
  const [lo, hi] = dtype === 'f16' ? [-22, 9] : [-28, 20];
  const out = new Float32Array(n);
  let kind = 0;
  let mag = 1;
  for (let i = 0; i < n; i++) {
    if (i % 32 === 0 || i % 32 === 17) {
      kind = Math.floor(r() * 8);
      mag = 2 ** (lo + Math.floor(r() * (hi - lo)));
    }
    switch (kind) {
      case 0:
        out[i] = 0;
        break;
      case 1:
        out[i] = 7 * 2 ** -25 * (1 + Math.floor(r() * 3) / 8) * (r() < 0.5 ? -1 : 1);
        break;
      case 2:
        out[i] = mag * 0.75;
        break;
      case 3:
        out[i] = ((Math.floor(r() * 17) - 8) * mag) / 4;
        break;
      case 4:
        out[i] = i % 7 === 0 ? g[i] * mag * 30 : g[i] * mag;
        break;
      default:
        out[i] = g[i] * mag;
    }
  }
  return out;
}

function encode(values: Float32Array, dtype: SourceDtype): Uint8Array {
  const words = new Uint32Array(Math.ceil((values.length * (dtype === 'f32' ? 4 : 2)) / 4));
  const view = new DataView(words.buffer);
  const bits = new Uint32Array(Float32Array.from(values).buffer);
  for (let i = 0; i < values.length; i++) {
    if (dtype === 'f32') view.setFloat32(4 * i, values[i], true);
    else if (dtype === 'f16') view.setUint16(2 * i, f32ToF16Bits(values[i]), true);
    else view.setUint16(2 * i, (bits[i] + 0x7fff + ((bits[i] >>> 16) & 1)) >>> 16, true);
  }
  return new Uint8Array(words.buffer);
}

/** A piece placed as the loader places them. rowsPerItem rows of rowStride per item; rows go to item `first`.. at `row`. */
interface Case {
  src: SourceDtype;
  rows: number;
  cols: number;
  rowsPerItem: number;
  placement: 'rows' | 'pair' | 'expert';
  items: number;
}

async function runCase(ctx: GpuContext, c: Case, seed: number): Promise<{ got: Uint32Array; want: Uint32Array }> {
  // 'rows': consecutive items of a 2-D tensor from item 2; 'pair': the up rows (row 1) of [I, 2, K] items from
  // item 1; 'expert': all rows of expert 1 of [E, rows, K].
  const { rowStride, itemStride, dstOffset, dstRowStride } = placed(c);
  const dstWords = new Uint32Array(c.items * q4ItemWords(itemStride) + 3).fill(SENTINEL);
  const src = encode(sourceValues(c.src, c.rows * c.cols, seed), c.src);
  const dst = upload(ctx, dstWords, 'dst');
  const args: QuantizeQ4Args = {
    src: upload(ctx, new Uint32Array(src.buffer), 'src'),
    srcDtype: c.src,
    rows: c.rows,
    cols: c.cols,
    dst,
    dstOffset,
    dstRowStride,
    rowStride,
    itemStride,
  };
  ctx.run([await quantizeQ4(ctx, args)]);
  const got = new Uint32Array(await ctx.read(dst, 0, dstWords.byteLength));
  return { got, want: reference(src, dstWords, args) };
}

/** Rows already in q4 form: random nibbles, random finite f16 scales of either sign (a Q4_0 scale may be negative). */
function q4Rows(rows: number, rowStride: number, seed: number): Uint32Array {
  const r = rng(seed);
  const rowWords = q4ItemWords(rowStride);
  const words = new Uint32Array(rows * rowWords);
  for (let i = 0; i < words.length; i++) {
    const scale = i % rowWords >= rowStride / 8;
    const half = () => (Math.floor(r() * 0x7c00) | (r() < 0.5 ? 0x8000 : 0)) >>> 0;
    words[i] = scale ? (half() | (half() << 16)) >>> 0 : Math.floor(r() * 2 ** 32) >>> 0;
  }
  return words;
}

/** Where the loader puts a piece's rows: consecutive items, the up rows of [I, 2, K] items, or an expert's rows. */
function placed(c: { cols: number; rowsPerItem: number; placement: 'rows' | 'pair' | 'expert' }) {
  const rowStride = q4RowStride(c.cols);
  const itemStride = c.rowsPerItem * rowStride;
  const [dstOffset, dstRowStride] =
    c.placement === 'rows' ? [2 * itemStride, itemStride] : c.placement === 'pair' ? [itemStride + rowStride, itemStride] : [itemStride, rowStride];
  return { rowStride, itemStride, dstOffset, dstRowStride };
}

function expectWords(got: Uint32Array, want: Uint32Array): void {
  expect(got.length).toBe(want.length);
  let untouched = 0;
  for (let i = 0; i < want.length; i++) {
    if (got[i] !== want[i]) expect.fail(`word ${i}: got 0x${got[i].toString(16)}, want 0x${want[i].toString(16)}`);
    if (want[i] === SENTINEL) untouched++;
  }
  expect(untouched).toBeGreaterThan(0); // the other rows' words are left alone
}

describeOnAdapters('quantize_q4', (ctx) => {
  let seed = 1;
  for (const src of ['bf16', 'f16', 'f32'] as const) {
    for (const c of [
      { rows: 40, cols: 256, rowsPerItem: 1, placement: 'rows', items: 45 },
      { rows: 9, cols: 127, rowsPerItem: 2, placement: 'pair', items: 11 },
      { rows: 6, cols: 333, rowsPerItem: 6, placement: 'expert', items: 3 },
      { rows: 5, cols: 1, rowsPerItem: 1, placement: 'rows', items: 8 },
    ] as const) {
      const s = seed++;
      it(`${src} rows=${c.rows} cols=${c.cols} ${c.placement} == the CPU quantiser, bit for bit`, async () => {
        const { got, want } = await runCase(ctx(), { src, ...c }, s);
        expectWords(got, want);
      });
    }
  }

  for (const c of [
    { rows: 40, cols: 256, rowsPerItem: 1, placement: 'rows', items: 45 },
    { rows: 9, cols: 96, rowsPerItem: 2, placement: 'pair', items: 11 },
    { rows: 6, cols: 320, rowsPerItem: 6, placement: 'expert', items: 3 },
  ] as const) {
    it(`place_q4 rows=${c.rows} cols=${c.cols} ${c.placement} == the CPU placement, bit for bit`, async () => {
      const x = ctx();
      const { rowStride, ...at } = placed(c);
      const dstWords = new Uint32Array(c.items * q4ItemWords(at.itemStride) + 3).fill(SENTINEL);
      const src = q4Rows(c.rows, rowStride, c.rows);
      const dst = upload(x, dstWords, 'dst');
      const args: PlaceQ4Args = { src: upload(x, src, 'src'), rows: c.rows, dst, rowStride, ...at };
      x.run([await placeQ4(x, args)]);
      expectWords(new Uint32Array(await x.read(dst, 0, dstWords.byteLength)), placeReference(src, dstWords, args));
    });
  }

  it("place_q4 of rows quantised one by one == quantize_q4 of the rows (the loader's two paths agree)", async () => {
    const x = ctx();
    const c = { rows: 7, cols: 200, rowsPerItem: 2, placement: 'pair', items: 9 } as const;
    const { rowStride, ...at } = placed(c);
    const values = sourceValues('f32', c.rows * c.cols, 77);
    const rowWords = q4ItemWords(rowStride);
    const rows = new Uint32Array(c.rows * rowWords);
    for (let r = 0; r < c.rows; r++) {
      const row = new Float32Array(rowStride);
      row.set(values.subarray(r * c.cols, (r + 1) * c.cols));
      rows.set(quantizeQ4Item(row, rowStride), r * rowWords);
    }
    const dstWords = new Uint32Array(c.items * q4ItemWords(at.itemStride)).fill(SENTINEL);
    const viaPlace = upload(x, dstWords, 'place');
    const viaQuantize = upload(x, dstWords, 'quantize');
    const src = upload(x, new Uint32Array(encode(values, 'f32').buffer), 'src');
    x.run([
      await placeQ4(x, { src: upload(x, rows, 'rows'), rows: c.rows, dst: viaPlace, rowStride, ...at }),
      await quantizeQ4(x, { src, srcDtype: 'f32', rows: c.rows, cols: c.cols, dst: viaQuantize, rowStride, ...at }),
    ]);
    const read = async (b: GPUBuffer) => new Uint32Array(await x.read(b, 0, dstWords.byteLength));
    expectWords(await read(viaPlace), await read(viaQuantize));
  });

  it('place_q4 rejects bad arguments', async () => {
    const c = ctx();
    const ok: PlaceQ4Args = {
      src: c.storage('s', 2 * 36),
      rows: 2,
      dst: c.storage('d', 2 * 36),
      dstOffset: 0,
      dstRowStride: 64,
      rowStride: 64,
      itemStride: 64,
    };
    await expect(placeQ4(c, ok)).resolves.toBeDefined();
    await expect(placeQ4(c, { ...ok, src: c.storage('s', 48) })).rejects.toThrow(/2 q4 rows of 64 need 72 source bytes/);
    await expect(placeQ4(c, { ...ok, rowStride: 32, dstRowStride: 32, itemStride: 32 })).rejects.toThrow(/rowStride = 32 must be a multiple of 64/);
    await expect(placeQ4(c, { ...ok, dst: c.storage('d', 48) })).rejects.toThrow(/ends at byte 72/);
  });

  it('the GPU quantiser of a whole tensor is the CPU one of uploadTensor; an expert is one contiguous block', async () => {
    const c = ctx();
    const [E, R, K] = [5, 3, 200];
    const values = randn(E * R * K, 17, 0.05);
    const tensor = uploadTensor(c, 'experts', [E, R, K], values, 'q4', maskCaps(c.caps, { maxStorageBindingBytes: ((2 * R * 256 * 36) / 64) * 1.001 }));
    expect(tensor.parts.map((p) => p.count)).toEqual([2, 2, 1]);
    const itemStride = R * 256;
    const words = q4ItemWords(itemStride);
    for (const part of tensor.parts) {
      const got = new Uint32Array(await c.read(part.buffer, 0, part.count * words * 4));
      const dst = c.storage('dst', part.count * words * 4);
      c.run([
        await quantizeQ4(c, {
          src: upload(c, new Uint32Array(encode(values.subarray(part.first * R * K, (part.first + part.count) * R * K), 'f32').buffer)),
          srcDtype: 'f32',
          rows: part.count * R,
          cols: K,
          dst,
          dstOffset: 0,
          dstRowStride: 256,
          rowStride: 256,
          itemStride,
        }),
      ]);
      expect(new Uint32Array(await c.read(dst, 0, part.count * words * 4))).toEqual(got);
      for (let i = 0; i < part.count; i++) {
        const e = part.first + i;
        const item = new Float32Array(itemStride);
        for (let r = 0; r < R; r++) item.set(values.subarray((e * R + r) * K, (e * R + r + 1) * K), r * 256);
        expect(got.subarray(i * words, (i + 1) * words)).toEqual(quantizeQ4Item(item, itemStride));
      }
    }
  });

  it('fill_random writes q4 blocks: random nibbles, scales of scale / 8', async () => {
    const c = ctx();
    const itemStride = 192;
    const words = q4ItemWords(itemStride);
    const y = c.storage('y', 4 * words * 4);
    c.run([await fillRandom(c, { y, dtype: 'q4', seed: 3, scale: 0.5, itemStride })]);
    const got = new Uint32Array(await c.read(y, 0, 4 * words * 4));
    const values = Array.from({ length: 4 }, (_, i) => Array.from(dequantizeQ4Item(got.subarray(i * words, (i + 1) * words), itemStride))).flat();
    expect(Math.min(...values)).toBe(-0.5);
    expect(Math.max(...values)).toBe(0.4375);
    expect(new Set(values).size).toBe(16);
    expect(f16BitsToF32(got[itemStride / 8] & 0xffff)).toBe(0.0625);
    await expect(fillRandom(c, { y, dtype: 'q4', seed: 3, scale: 0.5 })).rejects.toThrow(/itemStride/);
  });

  it('rejects bad arguments', async () => {
    const c = ctx();
    const buf = (bytes: number) => c.storage('b', bytes);
    const ok: QuantizeQ4Args = {
      src: buf(64),
      srcDtype: 'bf16',
      rows: 2,
      cols: 10,
      dst: buf(2 * 36),
      dstOffset: 0,
      dstRowStride: 64,
      rowStride: 64,
      itemStride: 64,
    };
    await expect(quantizeQ4(c, ok)).resolves.toBeDefined();
    const bad: [Partial<QuantizeQ4Args>, RegExp][] = [
      [{ rowStride: 32 }, /rowStride = 32 must be a multiple of 64/],
      [{ cols: 70 }, /rowStride 64 is shorter than the 70 columns/],
      [{ dstOffset: 32 }, /dstOffset = 32 must be a non-negative multiple of rowStride 64/],
      [{ itemStride: 96 }, /itemStride = 96 must be/],
      [{ dstRowStride: 0 }, /dstRowStride 0 is shorter than rowStride 64/],
      [{ src: buf(16) }, /needs 40 source bytes/],
      [{ dst: buf(48) }, /ends at byte 72/],
      [{ rows: 0 }, /rows = 0/],
    ];
    for (const [patch, message] of bad) await expect(quantizeQ4(c, { ...ok, ...patch })).rejects.toThrow(message);
    const same = buf(256);
    await expect(quantizeQ4(c, { ...ok, src: same, dst: same })).rejects.toThrow(/distinct/);
  });
});
