import type { SourceDtype } from '../numeric/source_dtype.ts';
import { bf16BitsToF32, f16BitsToF32 } from '../numeric/half.ts';
import { Q4_GROUP, q4ItemWords, quantizeQ4Group } from '../numeric/q4.ts';

export interface QuantizeReferenceArgs {
  srcDtype: SourceDtype;
  rows: number;
  cols: number;
  dstOffset: number;
  dstRowStride: number;
  rowStride: number;
  itemStride: number;
}

/**
 * The quantize_q4 op on the CPU: returns a copy of the destination part (u32 words) with the piece's rows
 * quantised into their items' blocks (src/numeric/q4.ts), every other word as it was.
 */
export function quantizeQ4(src: Uint8Array, dst: Uint32Array, a: QuantizeReferenceArgs): Uint32Array {
  const out = dst.slice();
  const view = new DataView(src.buffer, src.byteOffset, src.byteLength);
  const value = (e: number) =>
    a.srcDtype === 'f32'
      ? view.getFloat32(4 * e, true)
      : a.srcDtype === 'bf16'
        ? bf16BitsToF32(view.getUint16(2 * e, true))
        : f16BitsToF32(view.getUint16(2 * e, true));
  const itemWords = q4ItemWords(a.itemStride);
  const row = new Float32Array(a.rowStride);
  const nib = new Uint8Array(Q4_GROUP);
  for (let r = 0; r < a.rows; r++) {
    for (let c = 0; c < a.rowStride; c++) row[c] = c < a.cols ? value(r * a.cols + c) : 0;
    const l = a.dstOffset + r * a.dstRowStride;
    const item = Math.floor(l / a.itemStride);
    const base = item * itemWords;
    const at = l - item * a.itemStride;
    for (let g = 0; g < a.rowStride / Q4_GROUP; g++) {
      const h = quantizeQ4Group(row, g * Q4_GROUP, nib);
      const e = at + g * Q4_GROUP;
      for (let w = 0; w < 4; w++) {
        let word = 0;
        for (let k = 0; k < 8; k++) word |= nib[8 * w + k] << (4 * k);
        out[base + e / 8 + w] = word >>> 0;
      }
      const s = base + a.itemStride / 8 + (e >> 6);
      out[s] = (g & 1 ? (out[s] & 0xffff) | (h << 16) : (out[s] & 0xffff0000) | h) >>> 0;
    }
  }
  return out;
}

/**
 * The place_q4 op on the CPU: `src` holds the piece's rows already in q4 form (q4ItemWords(rowStride) words each:
 * nibble words, then scale words); returns a copy of the destination part with them in their items' blocks.
 */
export function placeQ4(src: Uint32Array, dst: Uint32Array, a: Omit<QuantizeReferenceArgs, 'srcDtype' | 'cols'>): Uint32Array {
  const out = dst.slice();
  const itemWords = q4ItemWords(a.itemStride);
  const rowWords = q4ItemWords(a.rowStride);
  for (let r = 0; r < a.rows; r++) {
    const l = a.dstOffset + r * a.dstRowStride;
    const item = Math.floor(l / a.itemStride);
    const at = l - item * a.itemStride;
    const row = src.subarray(r * rowWords, (r + 1) * rowWords);
    out.set(row.subarray(0, a.rowStride / 8), item * itemWords + at / 8);
    out.set(row.subarray(a.rowStride / 8), item * itemWords + a.itemStride / 8 + at / 64);
  }
  return out;
}
