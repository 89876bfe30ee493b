import { read, uniform, write } from '../gpu/kernel.ts';
import { defineKernel } from './define.ts';
import type { Dispatch, GpuContext } from '../gpu/context.ts';
import { Q4_ROW_ALIGN, q4ItemWords } from '../numeric/q4.ts';
import { HALF_BITS, SOURCE_BITS } from './cast.ts';
import { SOURCE_BYTES, type SourceDtype } from '../numeric/source_dtype.ts';
import { type Checks, checks } from './checks.ts';
import { grid } from './grid.ts';

export interface QuantizeQ4Args {
  src: GPUBuffer; // raw little-endian bytes of the source piece (buffer length padded to 4 bytes)
  srcDtype: SourceDtype;
  rows: number;
  cols: number; // source piece: rows x cols elements, row-major, starting at element 0
  dst: GPUBuffer; // a q4 GpuTensor part
  /** Logical element of the piece's first row in the part, and between its rows (multiples of rowStride). */
  dstOffset: number;
  dstRowStride: number;
  rowStride: number; // the tensor's padded row length (a multiple of 64): columns past cols quantise as 0
  itemStride: number; // the tensor's item stride (a multiple of rowStride)
  /** A one-off upload piece: its params go to a reused uniform buffer (GpuContext.dispatch's `transient`). */
  transient?: boolean;
}

const WG = 64;

/**
 * Checkpoint bytes (bf16 / f16 / f32) → the q4 blocks of those rows in a weight part: the GPU twin of
 * quantizeQ4Item (src/numeric/q4.ts), bit for bit. Grid: one invocation per 64 elements (two groups).
 */
export const quantizeQ4Kernel = defineKernel<{ src: SourceDtype }>({
  name: 'quantize_q4',
  bindings: () => [
    read('src', 'u32'),
    write('dst', 'u32'),
    uniform('params', { pairs: 'u32', row_pairs: 'u32', cols: 'u32', dst_off: 'u32', dst_row_stride: 'u32', item_stride: 'u32', item_words: 'u32' }),
  ],
  helpers: (v) => [HALF_BITS, SOURCE_BITS[v.src]].join('\n'),
  overrides: () => ({ WG }),
});

const check = checks('quantize_q4');

export async function quantizeQ4(ctx: GpuContext, args: QuantizeQ4Args): Promise<Dispatch> {
  const { src, srcDtype, rows, cols, rowStride } = args;
  if (!(srcDtype in SOURCE_BYTES)) check.fail(`unknown source dtype ${String(srcDtype)}`);
  check.counts({ rows, cols });
  if (rowStride < cols) check.fail(`rowStride ${rowStride} is shorter than the ${cols} columns`);
  const srcBytes = Math.ceil((rows * cols * SOURCE_BYTES[srcDtype]) / 4) * 4;
  if (srcBytes > src.size) check.fail(`${rows} x ${cols} ${srcDtype} needs ${srcBytes} source bytes, buffer ${src.label || '(unlabelled)'} has ${src.size}`);
  const params = placement(check, args);
  return ctx.dispatch(
    quantizeQ4Kernel,
    { src: srcDtype },
    { src, dst: args.dst, params: { ...params, cols } },
    grid(Math.ceil(params.pairs / WG), ctx.caps),
    args.transient,
  );
}

/** Rows already in the q4 format (a GGUF Q4_0 tensor: the same groups and scales) for placeQ4; no `cols`, no dtype. */
export type PlaceQ4Args = Omit<QuantizeQ4Args, 'srcDtype' | 'cols'>;

/** place_q4: src holds `rows` rows of q4ItemWords(rowStride) words each (a lone row's block), copied to their place. */
export const placeQ4Kernel = defineKernel({
  name: 'place_q4',
  bindings: () => [
    read('src', 'u32'),
    write('dst', 'u32'),
    uniform('params', { pairs: 'u32', row_pairs: 'u32', dst_off: 'u32', dst_row_stride: 'u32', item_stride: 'u32', item_words: 'u32' }),
  ],
  overrides: () => ({ WG }),
});

const placeCheck = checks('place_q4');

/** A piece of rows already in q4 form → their items' blocks in a weight part, bit for bit (no re-quantising). */
export async function placeQ4(ctx: GpuContext, args: PlaceQ4Args): Promise<Dispatch> {
  const { src, rows, rowStride } = args;
  placeCheck.counts({ rows });
  const params = placement(placeCheck, args);
  const srcBytes = rows * q4ItemWords(rowStride) * 4;
  if (srcBytes > src.size)
    placeCheck.fail(`${rows} q4 rows of ${rowStride} need ${srcBytes} source bytes, buffer ${src.label || '(unlabelled)'} has ${src.size}`);
  return ctx.dispatch(placeQ4Kernel, undefined, { src, dst: args.dst, params }, grid(Math.ceil(params.pairs / WG), ctx.caps), args.transient);
}

/** Checks where a piece's rows land in a q4 part (shared by quantize_q4 and place_q4); returns the kernels' params. */
function placement(check: Checks, args: PlaceQ4Args) {
  const { src, dst, rows, dstOffset, dstRowStride, rowStride, itemStride } = args;
  check.count('rowStride', rowStride);
  if (rowStride % Q4_ROW_ALIGN !== 0) check.fail(`rowStride = ${rowStride} must be a multiple of ${Q4_ROW_ALIGN}`);
  // Rows that start at multiples of rowStride never straddle two items.
  check.count('itemStride', itemStride);
  for (const [name, v] of [
    ['itemStride', itemStride],
    ['dstOffset', dstOffset],
    ['dstRowStride', dstRowStride],
  ] as const) {
    if (!Number.isInteger(v) || v < 0 || v % rowStride !== 0) check.fail(`${name} = ${v} must be a non-negative multiple of rowStride ${rowStride}`);
  }
  if (rows > 1 && dstRowStride < rowStride) check.fail(`dstRowStride ${dstRowStride} is shorter than rowStride ${rowStride}: rows would overlap`);
  check.distinct({ src, dst });
  const lastElement = dstOffset + (rows - 1) * dstRowStride + rowStride - 1;
  if (lastElement > 0xffffffff) check.fail(`the piece ends at logical element ${lastElement}, past u32 indexing`);
  const itemWords = q4ItemWords(itemStride);
  const dstEnd = (Math.floor(lastElement / itemStride) + 1) * itemWords * 4;
  if (dstEnd > dst.size) check.fail(`the piece ends at byte ${dstEnd} of buffer ${dst.label || '(unlabelled)'} (${dst.size} bytes)`);
  const rowPairs = rowStride / 64;
  const pairs = rows * rowPairs;
  if (pairs > 0xffffffff - WG) check.fail(`a piece of ${pairs} group pairs is too large for one dispatch`);
  return { pairs, row_pairs: rowPairs, dst_off: dstOffset, dst_row_stride: dstRowStride, item_stride: itemStride, item_words: itemWords };
}
