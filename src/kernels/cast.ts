import { read, uniform, write } from '../gpu/kernel.ts';
import { defineKernel } from './define.ts';
import type { Dispatch, GpuContext } from '../gpu/context.ts';
import { ROW_ALIGN, type WeightDtype, bytesPerElement } from '../gpu/tensor.ts';
import { checks } from './checks.ts';
import { grid } from './grid.ts';
import { SOURCE_BYTES, type SourceDtype } from '../numeric/source_dtype.ts';

export interface CastArgs {
  src: GPUBuffer; // raw little-endian bytes of the source piece (buffer length padded to 4 bytes)
  srcDtype: SourceDtype;
  rows: number;
  cols: number; // source piece: rows x cols elements, row-major, starting at element 0
  dst: GPUBuffer;
  dstDtype: WeightDtype; // a GpuTensor part buffer
  dstOffset: number; // element offset of the piece's first row in dst (a multiple of 8)
  dstRowStride: number; // elements between consecutive piece rows in dst (≥ rowStride, multiple of 8)
  rowStride: number; // the tensor's padded row length (multiple of 8): columns cols..rowStride-1 are written as 0
  /** Optional affine transform y = x * scale + bias, applied in f32 before storing (GGUF norms are stored as 1+w: bias -1). */
  scale?: number;
  bias?: number;
  /** A one-off upload piece: its params go to a reused uniform buffer (GpuContext.dispatch's `transient`). */
  transient?: boolean;
}

export interface CastVariant {
  src: SourceDtype;
  dst: WeightDtype;
  /** x * scale + bias in f32; without it values are moved bit-exactly (no float arithmetic at all). */
  affine: boolean;
}

const WG = 256;

/**
 * Exact f16 <-> f32 conversions on the bits (no dependence on an adapter's denormal or overflow handling in
 * unpack2x16float / pack2x16float): `f16_bits_to_f32_bits(h)` and `f32_bits_to_f16_bits(x)` (round to nearest
 * even, as f32ToF16Bits in src/numeric/half.ts). Shared by cast and quantize_q4.
 */
export const HALF_BITS = `// f32 bits of an f16 (exact: every f16, subnormals included, is a normal f32 or zero).
fn f16_bits_to_f32_bits(h: u32) -> u32 {
  let sign = (h & 0x8000u) << 16u;
  let exp = (h >> 10u) & 0x1fu;
  let mant = h & 0x3ffu;
  if (exp == 0x1fu) { return sign | 0x7f800000u | (mant << 13u); }
  if (exp != 0u) { return sign | ((exp + 112u) << 23u) | (mant << 13u); }
  if (mant == 0u) { return sign; }
  let shift = countLeadingZeros(mant) - 21u; // brings the leading 1 to bit 10
  return sign | ((113u - shift) << 23u) | (((mant << shift) & 0x3ffu) << 13u);
}

// f16 bits of an f32, round to nearest even (the same steps as f32ToF16Bits in src/numeric/half.ts).
fn f32_bits_to_f16_bits(x: u32) -> u32 {
  let sign = (x >> 16u) & 0x8000u;
  let exp = (x >> 23u) & 0xffu;
  let mant = x & 0x7fffffu;
  if (exp == 0xffu) { return sign | 0x7c00u | select(0u, 0x200u, mant != 0u); }
  let e = i32(exp) - 112;
  if (e >= 31) { return sign | 0x7c00u; }
  if (e <= 0) {
    if (e < -10) { return sign; }
    let m = mant | 0x800000u;
    let shift = u32(14 - e);
    let half = 1u << (shift - 1u);
    let rest = m & ((1u << shift) - 1u);
    var r = m >> shift;
    if (rest > half || (rest == half && (r & 1u) == 1u)) { r += 1u; }
    return sign | r;
  }
  var r = (u32(e) << 10u) | (mant >> 13u);
  let rest = mant & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (r & 1u) == 1u)) { r += 1u; }
  return sign | r;
}`;

/** `src_f32_bits(e) -> u32`: the f32 bits of source element e (u32 words `src`), per source dtype. */
export const SOURCE_BITS: Record<SourceDtype, string> = {
  f32: 'fn src_f32_bits(e: u32) -> u32 { return src[e]; }',
  bf16: 'fn src_f32_bits(e: u32) -> u32 { return ((src[e / 2u] >> (16u * (e % 2u))) & 0xffffu) << 16u; }',
  f16: 'fn src_f32_bits(e: u32) -> u32 { return f16_bits_to_f32_bits((src[e / 2u] >> (16u * (e % 2u))) & 0xffffu); }',
};

/**
 * Checkpoint bytes (bf16 / f16 / f32) → a weight tensor part (f32, or f16 packed in u32 pairs), rows padded
 * with zeros to rowStride and placed at a row stride. Grid: one invocation per destination word.
 */
export const castKernel = defineKernel<CastVariant>({
  name: 'cast',
  bindings: () => [
    read('src', 'u32'),
    write('dst', 'u32'),
    uniform('params', { words: 'u32', row_words: 'u32', cols: 'u32', dst_off: 'u32', dst_row_stride: 'u32', scale: 'f32', bias: 'f32' }),
  ],
  helpers: (v) => [`const DST_F16 = ${v.dst === 'f16'};`, `const AFFINE = ${v.affine};`, HALF_BITS, SOURCE_BITS[v.src]].join('\n'),
  overrides: () => ({ WG }),
});

const check = checks('cast');

export async function cast(ctx: GpuContext, args: CastArgs): Promise<Dispatch> {
  const { src, dst, rows, cols, dstOffset, dstRowStride, rowStride, srcDtype, dstDtype } = args;
  if (!(srcDtype in SOURCE_BYTES)) check.fail(`unknown source dtype ${String(srcDtype)}`);
  if (dstDtype === 'q4') check.fail('a q4 destination is written by quantizeQ4 (src/kernels/quantize.ts)');
  if (dstDtype !== 'f32' && dstDtype !== 'f16') check.fail(`unknown destination dtype ${String(dstDtype)}`);
  check.counts({ rows, cols });
  for (const [name, v] of [
    ['dstOffset', dstOffset],
    ['dstRowStride', dstRowStride],
    ['rowStride', rowStride],
  ] as const) {
    if (!Number.isInteger(v) || v < 0 || v % ROW_ALIGN !== 0) check.fail(`${name} = ${v} must be a non-negative multiple of ${ROW_ALIGN}`);
  }
  if (rowStride < cols) check.fail(`rowStride ${rowStride} is shorter than the ${cols} columns`);
  if (dstRowStride < rowStride) check.fail(`dstRowStride ${dstRowStride} is shorter than rowStride ${rowStride}: rows would overlap`);
  check.distinct({ src, dst });
  const srcBytes = Math.ceil((rows * cols * SOURCE_BYTES[srcDtype]) / 4) * 4;
  if (srcBytes > src.size) check.fail(`${rows} x ${cols} ${srcDtype} needs ${srcBytes} source bytes, buffer ${src.label || '(unlabelled)'} has ${src.size}`);
  const dstEnd = (dstOffset + (rows - 1) * dstRowStride + rowStride) * bytesPerElement(dstDtype);
  if (dstEnd > dst.size) check.fail(`the piece ends at byte ${dstEnd} of buffer ${dst.label || '(unlabelled)'} (${dst.size} bytes)`);
  const scale = args.scale ?? 1;
  const bias = args.bias ?? 0;
  if (!Number.isFinite(scale) || !Number.isFinite(bias)) check.fail(`scale ${scale} and bias ${bias} must be finite`);
  const rowWords = dstDtype === 'f16' ? rowStride / 2 : rowStride;
  const words = rows * rowWords;
  if (words > 0xffffffff - WG) check.fail(`a piece of ${words} words is too large for one dispatch`);
  const variant: CastVariant = { src: srcDtype, dst: dstDtype, affine: scale !== 1 || bias !== 0 };
  return ctx.dispatch(
    castKernel,
    variant,
    { src, dst, params: { words, row_words: rowWords, cols, dst_off: dstOffset, dst_row_stride: dstRowStride, scale, bias } },
    grid(Math.ceil(words / WG), ctx.caps),
    args.transient,
  );
}
