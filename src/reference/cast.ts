import type { SourceDtype } from '../numeric/source_dtype.ts';
import type { WeightDtype } from '../gpu/tensor.ts';
import { bf16BitsToF32, f16BitsToF32, f32ToF16Bits } from '../numeric/half.ts';

export interface CastReferenceArgs {
  srcDtype: SourceDtype;
  rows: number;
  cols: number;
  dstDtype: WeightDtype;
  dstOffset: number;
  dstRowStride: number;
  rowStride: number;
  scale?: number;
  bias?: number;
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);
const f32Bits = (v: number) => {
  f32[0] = v;
  return u32[0];
};

/** Source element e of a little-endian piece as a number (f32 exactly: bf16 and f16 widen without rounding). */
function sourceValue(src: Uint8Array, dtype: SourceDtype, e: number): number {
  const view = new DataView(src.buffer, src.byteOffset, src.byteLength);
  switch (dtype) {
    case 'f32':
      return view.getFloat32(4 * e, true);
    case 'bf16':
      return bf16BitsToF32(view.getUint16(2 * e, true));
    case 'f16':
      return f16BitsToF32(view.getUint16(2 * e, true));
  }
}

/**
 * The cast op on the CPU: returns a copy of the destination part (as u32 words) with the piece written:
 * each row's cols values (optionally x * scale + bias, rounded to f32), then zeros up to rowStride; f16 packs
 * two per word, the even element in the lower half. NaNs come out as canonical quiet NaNs.
 */
export function cast(src: Uint8Array, dst: Uint32Array, a: CastReferenceArgs): Uint32Array {
  const out = dst.slice();
  const halves = new Uint16Array(out.buffer);
  const affine = (a.scale ?? 1) !== 1 || (a.bias ?? 0) !== 0;
  for (let r = 0; r < a.rows; r++) {
    const base = a.dstOffset + r * a.dstRowStride;
    for (let c = 0; c < a.rowStride; c++) {
      let v = c < a.cols ? sourceValue(src, a.srcDtype, r * a.cols + c) : 0;
      // Padding stays 0 (kernels read it as zero weights), affine or not.
      if (affine && c < a.cols) v = Math.fround(Math.fround(v * (a.scale ?? 1)) + (a.bias ?? 0));
      if (a.dstDtype === 'f16') halves[base + c] = f32ToF16Bits(v);
      else
        out[base + c] =
          a.srcDtype === 'f32' && !affine && c < a.cols ? new DataView(src.buffer, src.byteOffset).getUint32(4 * (r * a.cols + c), true) : f32Bits(v);
    }
  }
  return out;
}
