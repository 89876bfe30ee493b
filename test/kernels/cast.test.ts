import { expect, it } from 'vitest';
import { type CastArgs, cast } from '../../src/kernels/cast.ts';
import type { SourceDtype } from '../../src/numeric/source_dtype.ts';
import { cast as reference } from '../../src/reference/cast.ts';
import { paddedCols, type WeightDtype } from '../../src/gpu/tensor.ts';
import { bf16BitsToF32, f16BitsToF32, f32ToF16Bits } from '../../src/numeric/half.ts';
import type { GpuContext } from '../../src/gpu/context.ts';
import { describeOnAdapters, upload } from '../helpers/gpu.ts';
import { randn, rng } from '../helpers/random.ts';
import { expectClose } from '../helpers/compare.ts';

const SENTINEL = 0xa5a5a5a5;

/** Source bytes: random bit patterns (every class: NaN, inf, subnormals, ±0) plus rounding edge cases. */
function sourceBytes(dtype: SourceDtype, n: number, seed: number): Uint8Array {
  const r = rng(seed);
  const words = new Uint32Array(Math.ceil((n * (dtype === 'f32' ? 4 : 2)) / 4));
  const bytes = new Uint8Array(words.buffer);
  const view = new DataView(words.buffer);
  if (dtype !== 'f32') {
    const specials = [0x0000, 0x8000, 0x0001, 0x8001, 0x03ff, 0x0400, 0x7c00, 0xfc00, 0x7e00, 0xfd01, 0x7f80, 0xff80, 0x7bff, 0x477f, 0x4780, 0x3c00];
    for (let i = 0; i < n; i++) view.setUint16(2 * i, i < specials.length ? specials[i] : Math.floor(r() * 65536), true);
  } else {
    const specials = [
      0,
      -0,
      1,
      -1,
      65504,
      65519.996,
      65520,
      -65520,
      1e10,
      2 ** -24,
      2 ** -25,
      3 * 2 ** -26,
      2 ** -25 * 1.0001,
      1 + 2 ** -11,
      1 + 3 * 2 ** -11,
      1 + 2 ** -11 + 2 ** -20,
      2 ** -14,
      2 ** -14 - 2 ** -25,
      1e-40,
      Infinity,
      -Infinity,
      NaN,
      0.1,
      -2.5e-6,
    ];
    const normal = randn(n, seed + 1);
    for (let i = 0; i < n; i++) {
      if (i < specials.length) view.setFloat32(4 * i, specials[i], true);
      else if (i % 3 === 0) view.setUint32(4 * i, Math.floor(r() * 2 ** 32), true);
      else view.setFloat32(4 * i, normal[i] * 2 ** Math.floor(r() * 50 - 30), true);
    }
  }
  return bytes;
}

const isNaN32 = (b: number) => (b & 0x7f800000) === 0x7f800000 && (b & 0x7fffff) !== 0;
const isNaN16 = (h: number) => (h & 0x7c00) === 0x7c00 && (h & 0x3ff) !== 0;

/** Bit-exact, except that any NaN matches any NaN (payloads are not part of the contract). */
function expectBits(got: Uint32Array, want: Uint32Array, dtype: WeightDtype): void {
  expect(got.length).toBe(want.length);
  for (let i = 0; i < want.length; i++) {
    if (got[i] === want[i]) continue;
    if (dtype === 'f32' && isNaN32(want[i]) && isNaN32(got[i])) continue;
    if (dtype === 'f16') {
      const [gl, gh, wl, wh] = [got[i] & 0xffff, got[i] >>> 16, want[i] & 0xffff, want[i] >>> 16];
      if ((gl === wl || (isNaN16(gl) && isNaN16(wl))) && (gh === wh || (isNaN16(gh) && isNaN16(wh)))) continue;
    }
    expect.fail(`word ${i}: got 0x${got[i].toString(16)}, want 0x${want[i].toString(16)}`);
  }
}

interface Case {
  src: SourceDtype;
  dst: WeightDtype;
  rows: number;
  cols: number;
  dstOffset: number;
  extra: number;
  scale?: number;
  bias?: number;
}

async function runCase(ctx: GpuContext, c: Case, seed: number): Promise<{ got: Uint32Array; want: Uint32Array }> {
  const rowStride = paddedCols(c.cols);
  // extra > 0: interleaved placement (another piece owns the elements between this piece's rows).
  const dstRowStride = rowStride + c.extra;
  const elements = c.dstOffset + c.rows * dstRowStride + 8;
  const dstWords = new Uint32Array(c.dst === 'f16' ? elements / 2 : elements).fill(SENTINEL);
  const src = c.scale !== undefined ? normalSource(c.src, c.rows * c.cols, seed) : sourceBytes(c.src, c.rows * c.cols, seed);
  const dst = upload(ctx, dstWords, 'dst');
  const args: CastArgs = {
    src: upload(ctx, new Uint32Array(src.buffer), 'src'),
    srcDtype: c.src,
    rows: c.rows,
    cols: c.cols,
    dst,
    dstDtype: c.dst,
    dstOffset: c.dstOffset,
    dstRowStride,
    rowStride,
    scale: c.scale,
    bias: c.bias,
  };
  ctx.run([await cast(ctx, args)]);
  const got = new Uint32Array(await ctx.read(dst, 0, dstWords.byteLength));
  return { got, want: reference(src, dstWords, { ...args }) };
}

/** Finite, moderate values for the affine cases (compared by value, since a GPU may fuse the multiply-add). */
function normalSource(dtype: SourceDtype, n: number, seed: number): Uint8Array {
  const values = randn(n, seed, 2);
  const words = new Uint32Array(Math.ceil((n * (dtype === 'f32' ? 4 : 2)) / 4));
  const view = new DataView(words.buffer);
  for (let i = 0; i < n; i++) {
    if (dtype === 'f32') view.setFloat32(4 * i, values[i], true);
    else if (dtype === 'bf16') view.setUint16(2 * i, new Uint32Array(Float32Array.of(values[i]).buffer)[0] >>> 16, true);
    else view.setUint16(2 * i, f32ToF16Bits(values[i]), true);
  }
  return new Uint8Array(words.buffer);
}

const decode = (words: Uint32Array, dtype: WeightDtype) =>
  dtype === 'f32' ? new Float32Array(words.buffer) : Float32Array.from(new Uint16Array(words.buffer), f16BitsToF32);

describeOnAdapters('cast', (ctx) => {
  let seed = 1;
  for (const src of ['bf16', 'f16', 'f32'] as const) {
    for (const dst of ['f32', 'f16'] as const) {
      // Odd and even widths; contiguous rows, and interleaved placement at a non-zero offset.
      for (const [rows, cols, dstOffset, extra] of [
        [3, 5, 0, 0],
        [4, 127, 16, 128],
        [2, 64, 64, 72],
        [9, 1, 8, 8],
      ] as const) {
        const s = seed++;
        it(`${src} -> ${dst} rows=${rows} cols=${cols} dstOffset=${dstOffset} dstRowStride=rowStride+${extra}`, async () => {
          const { got, want } = await runCase(ctx(), { src, dst, rows, cols, dstOffset, extra }, s);
          expectBits(got, want, dst);
        });
      }
    }
  }

  // GGUF-style norm (stored 1 + w, bias -1) and a general scale; rows padded and placed like the others.
  for (const c of [
    { src: 'bf16', dst: 'f32', rows: 3, cols: 37, dstOffset: 8, extra: 8, scale: 1, bias: -1 },
    { src: 'f32', dst: 'f16', rows: 2, cols: 100, dstOffset: 0, extra: 0, scale: 0.5, bias: 0.25 },
    { src: 'f16', dst: 'f16', rows: 2, cols: 9, dstOffset: 16, extra: 16, scale: -2, bias: 0 },
  ] as Case[]) {
    it(`affine ${c.src} -> ${c.dst} scale=${c.scale} bias=${c.bias}`, async () => {
      const { got, want } = await runCase(ctx(), c, 77);
      expectClose(decode(got, c.dst), decode(want, c.dst), 1e-6, c.dst === 'f16' ? 1e-3 : 1e-6);
    });
  }

  it('bf16 -> f32 is the bf16 value exactly', async () => {
    const { got } = await runCase(ctx(), { src: 'bf16', dst: 'f32', rows: 1, cols: 16, dstOffset: 0, extra: 0 }, 5);
    const src = new DataView(sourceBytes('bf16', 16, 5).buffer);
    const values = new Float32Array(got.buffer);
    for (let i = 0; i < 16; i++) {
      const want = bf16BitsToF32(src.getUint16(2 * i, true));
      if (Number.isNaN(want)) expect(values[i]).toBeNaN();
      else expect(Object.is(values[i], want)).toBe(true);
    }
  });

  it('rejects bad arguments', async () => {
    const c = ctx();
    const buf = (bytes: number) => c.storage('b', bytes);
    const ok: CastArgs = { src: buf(64), srcDtype: 'bf16', rows: 2, cols: 10, dst: buf(256), dstDtype: 'f32', dstOffset: 0, dstRowStride: 16, rowStride: 16 };
    const bad: [Partial<CastArgs>, RegExp][] = [
      [{ dstOffset: 4 }, /dstOffset = 4 must be a non-negative multiple of 8/],
      [{ rowStride: 8 }, /rowStride 8 is shorter than the 10 columns/],
      [{ dstRowStride: 8, rowStride: 16 }, /must be a non-negative multiple|shorter than rowStride/],
      [{ dstRowStride: 24, rowStride: 32 }, /dstRowStride 24 is shorter than rowStride 32/],
      [{ src: buf(16) }, /needs 40 source bytes/],
      [{ dst: buf(64) }, /ends at byte 128/],
      [{ rows: 0 }, /rows = 0/],
    ];
    for (const [patch, message] of bad) await expect(cast(c, { ...ok, ...patch })).rejects.toThrow(message);
  });
});
