import { defineKernel, read, uniform, write } from '../gpu/kernel.ts';
import type { Dispatch, GpuContext } from '../gpu/context.ts';
import { ROW_ALIGN, type WeightDtype, bytesPerElement } from '../gpu/tensor.ts';
import { checks } from './checks.ts';
import { grid } from './grid.ts';

export type SourceDtype = 'bf16' | 'f16' | 'f32';

export interface CastArgs {
  src: GPUBuffer;            // raw little-endian bytes of the source piece (buffer length padded to 4 bytes)
  srcDtype: SourceDtype;
  rows: number; cols: number;          // source piece: rows x cols elements, row-major, starting at element 0
  dst: GPUBuffer; dstDtype: WeightDtype;  // a GpuTensor part buffer
  dstOffset: number;         // element offset of the piece's first row in dst (a multiple of 8)
  dstRowStride: number;      // elements between consecutive piece rows in dst (≥ rowStride, multiple of 8)
  rowStride: number;         // the tensor's padded row length (multiple of 8): columns cols..rowStride-1 are written as 0
  /** Optional affine transform y = x * scale + bias, applied in f32 before storing (GGUF norms are stored as 1+w: bias -1). */
  scale?: number; bias?: number;
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

const SOURCE_BITS: Record<SourceDtype, string> = {
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
    read('src', 'u32'), write('dst', 'u32'),
    uniform('params', { words: 'u32', row_words: 'u32', cols: 'u32', dst_off: 'u32', dst_row_stride: 'u32', scale: 'f32', bias: 'f32' }),
  ],
  helpers: (v) => [`const DST_F16 = ${v.dst === 'f16'};`, `const AFFINE = ${v.affine};`, SOURCE_BITS[v.src]].join('\n'),
  overrides: () => ({ WG }),
});

const SOURCE_BYTES: Record<SourceDtype, number> = { bf16: 2, f16: 2, f32: 4 };

const check = checks('cast');

export async function cast(ctx: GpuContext, args: CastArgs): Promise<Dispatch> {
  const { src, dst, rows, cols, dstOffset, dstRowStride, rowStride, srcDtype, dstDtype } = args;
  if (!(srcDtype in SOURCE_BYTES)) check.fail(`unknown source dtype ${String(srcDtype)}`);
  if (dstDtype !== 'f32' && dstDtype !== 'f16') check.fail(`unknown destination dtype ${String(dstDtype)}`);
  check.counts({ rows, cols });
  for (const [name, v] of [['dstOffset', dstOffset], ['dstRowStride', dstRowStride], ['rowStride', rowStride]] as const) {
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
