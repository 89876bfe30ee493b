import { f16Table } from '../numeric/half.ts';

/**
 * CPU dequantisers for the GGUF types we read, block layouts exactly as ggml-common.h defines them and values
 * as ggml-quants.c's dequantize_row_* compute them. Every product in those formulas is exact in f64, so
 * computing in f64 and storing to f32 rounds once, as ggml's f32 arithmetic does: results are bit-identical.
 */
export type Dequantizer = (src: Uint8Array, dst: Float32Array, blocks: number) => void;

const half = (table: Float32Array, src: Uint8Array, at: number): number => table[src[at] | (src[at + 1] << 8)];
const int8 = (byte: number): number => (byte << 24) >> 24;

function f32(src: Uint8Array, dst: Float32Array, n: number): void {
  const view = new DataView(src.buffer, src.byteOffset, src.byteLength);
  for (let i = 0; i < n; i++) dst[i] = view.getFloat32(4 * i, true);
}

function f16Row(src: Uint8Array, dst: Float32Array, n: number): void {
  const table = f16Table();
  for (let i = 0; i < n; i++) dst[i] = half(table, src, 2 * i);
}

const bf16Bits = new Uint32Array(1);
const bf16Value = new Float32Array(bf16Bits.buffer);

function bf16Row(src: Uint8Array, dst: Float32Array, n: number): void {
  for (let i = 0; i < n; i++) {
    bf16Bits[0] = (src[2 * i] | (src[2 * i + 1] << 8)) << 16;
    dst[i] = bf16Value[0];
  }
}

/** block_q8_0 (34 bytes): f16 d, int8 qs[32]; x = d·q. */
function q8_0(src: Uint8Array, dst: Float32Array, blocks: number): void {
  const table = f16Table();
  for (let b = 0, s = 0, y = 0; b < blocks; b++, s += 34, y += 32) {
    const d = half(table, src, s);
    for (let l = 0; l < 32; l++) dst[y + l] = d * int8(src[s + 2 + l]);
  }
}

/** block_q4_0 (18 bytes): f16 d, qs[16]; low nibbles are elements 0..15, high nibbles 16..31; x = d·(q − 8). */
function q4_0(src: Uint8Array, dst: Float32Array, blocks: number): void {
  const table = f16Table();
  for (let b = 0, s = 0, y = 0; b < blocks; b++, s += 18, y += 32) {
    const d = half(table, src, s);
    for (let l = 0; l < 16; l++) {
      const q = src[s + 2 + l];
      dst[y + l] = d * ((q & 15) - 8);
      dst[y + 16 + l] = d * ((q >> 4) - 8);
    }
  }
}

/**
 * get_scale_min_k4 for all 8 sub-blocks of a Q4_K/Q5_K block: unpacks the 6-bit scales and mins from the
 * 12 bytes at `at` (sub-blocks 4..7 keep their top 2 bits in the high bits of bytes 0..7) and stores
 * d·scale in `scales` and dmin·min in `mins`.
 */
function scalesMinsK4(src: Uint8Array, at: number, d: number, dmin: number, scales: Float64Array, mins: Float64Array): void {
  for (let j = 0; j < 8; j++) {
    const scale = j < 4 ? src[at + j] & 63 : (src[at + j + 4] & 15) | ((src[at + j - 4] >> 6) << 4);
    const min = j < 4 ? src[at + j + 4] & 63 : (src[at + j + 4] >> 4) | ((src[at + j] >> 6) << 4);
    scales[j] = d * scale;
    mins[j] = dmin * min;
  }
}

/** block_q4_K (144 bytes): f16 d, f16 dmin, scales[12], qs[128]; 8 sub-blocks of 32, x = d·sc·q − dmin·m. */
const q4_K: Dequantizer = (src, dst, blocks) => kQuant(src, dst, blocks, 144, 16);

/** block_q5_K (176 bytes): f16 d, f16 dmin, scales[12], qh[32], qs[128]; the fifth bit of q comes from qh. */
const q5_K: Dequantizer = (src, dst, blocks) => kQuant(src, dst, blocks, 176, 48, 16);

/**
 * Q4_K and Q5_K: 4-bit quants at `qs` (low nibbles, then high nibbles, 64 values per pair of sub-blocks),
 * and for Q5_K a fifth bit per value from the 32 bytes at `qh`.
 */
function kQuant(src: Uint8Array, dst: Float32Array, blocks: number, blockBytes: number, qs: number, qh?: number): void {
  const table = f16Table();
  const scales = new Float64Array(8); // f64, so d·scale stays exact until the store to f32
  const mins = new Float64Array(8);
  for (let b = 0, s = 0, y = 0; b < blocks; b++, s += blockBytes, y += 256) {
    scalesMinsK4(src, s + 4, half(table, src, s), half(table, src, s + 2), scales, mins);
    for (let j = 0; j < 4; j++) {
      const q = s + qs + 32 * j;
      const out = y + 64 * j;
      for (let l = 0; l < 32; l++) {
        const h = qh === undefined ? 0 : src[s + qh + l] >> (2 * j);
        dst[out + l] = scales[2 * j] * ((src[q + l] & 15) | ((h & 1) << 4)) - mins[2 * j];
        dst[out + 32 + l] = scales[2 * j + 1] * ((src[q + l] >> 4) | ((h & 2) << 3)) - mins[2 * j + 1];
      }
    }
  }
}

/** block_q6_K (210 bytes): ql[128], qh[64], int8 scales[16], f16 d; x = d·sc·(q − 32), q = 4 low + 2 high bits. */
function q6_K(src: Uint8Array, dst: Float32Array, blocks: number): void {
  const table = f16Table();
  for (let b = 0, s = 0, y = 0; b < blocks; b++, s += 210, y += 256) {
    const d = half(table, src, s + 208);
    for (let n = 0; n < 2; n++) {
      const ql = s + 64 * n;
      const qh = s + 128 + 32 * n;
      const sc = s + 192 + 8 * n;
      const out = y + 128 * n;
      for (let l = 0; l < 32; l++) {
        const is = l >> 4;
        const h = src[qh + l];
        const lo = src[ql + l];
        const hi = src[ql + l + 32];
        dst[out + l] = d * int8(src[sc + is]) * (((lo & 15) | ((h & 3) << 4)) - 32);
        dst[out + l + 32] = d * int8(src[sc + is + 2]) * (((hi & 15) | (((h >> 2) & 3) << 4)) - 32);
        dst[out + l + 64] = d * int8(src[sc + is + 4]) * (((lo >> 4) | (((h >> 4) & 3) << 4)) - 32);
        dst[out + l + 96] = d * int8(src[sc + is + 6]) * (((hi >> 4) | (((h >> 6) & 3) << 4)) - 32);
      }
    }
  }
}

/** The types readRows decodes, by ggml name; `blocks` counts blocks (elements for the plain types). */
export const DEQUANTIZERS: Readonly<Record<string, Dequantizer>> = {
  F32: f32,
  F16: f16Row,
  BF16: bf16Row,
  Q8_0: q8_0,
  Q4_0: q4_0,
  Q4_K: q4_K,
  Q5_K: q5_K,
  Q6_K: q6_K,
};
