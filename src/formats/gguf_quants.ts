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
 * Q4_0 blocks as one row of the engine's q4 format (src/numeric/q4.ts: groups of 32, an f16 scale each, x = (n − 8) ·
 * scale): the same values, so a Q4_0 tensor is held as int4 without re-quantising. Group g of the row is file block
 * blockOf[g] (whole-block column permutations); the groups that pad the row to 64 elements are zero. `out` holds
 * q4RowStride(groups · 32) / 8 nibble words, then one scale word per two groups.
 */
export function q4_0ToQ4Row(src: Uint8Array, groups: number, out: Uint32Array, blockOf?: Int32Array): void {
  const pairs = Math.ceil(groups / 2);
  out.fill(0, 8 * pairs);
  for (let g = 0; g < 2 * pairs; g++) {
    if (g >= groups) {
      out.fill(0x88888888, 4 * g, 4 * g + 4);
      continue;
    }
    const s = 18 * (blockOf ? blockOf[g] : g);
    for (let w = 0; w < 2; w++) {
      let low = 0;
      let high = 0;
      for (let k = 0; k < 8; k++) {
        const q = src[s + 2 + 8 * w + k];
        low |= (q & 15) << (4 * k);
        high |= (q >> 4) << (4 * k);
      }
      out[4 * g + w] = low >>> 0;
      out[4 * g + 2 + w] = high >>> 0;
    }
    out[8 * pairs + (g >> 1)] |= (src[s] | (src[s + 1] << 8)) << (16 * (g & 1));
  }
}

/** block_q4_1 (20 bytes): f16 d, f16 m, qs[16] as in Q4_0; x = d·q + m. */
function q4_1(src: Uint8Array, dst: Float32Array, blocks: number): void {
  const table = f16Table();
  for (let b = 0, s = 0, y = 0; b < blocks; b++, s += 20, y += 32) {
    const d = half(table, src, s);
    const m = half(table, src, s + 2);
    for (let l = 0; l < 16; l++) {
      const q = src[s + 4 + l];
      dst[y + l] = d * (q & 15) + m;
      dst[y + 16 + l] = d * (q >> 4) + m;
    }
  }
}

/**
 * Q5_0 (22 bytes: f16 d, u32 qh, qs[16]; x = d·(q − 16)) and Q5_1 (24 bytes: f16 d, f16 m, u32 qh, qs[16];
 * x = d·q + m): the nibbles as in Q4_0, and the fifth bit of element l from bit l of qh.
 */
function q5(src: Uint8Array, dst: Float32Array, blocks: number, withMin: boolean): void {
  const table = f16Table();
  const blockBytes = withMin ? 24 : 22;
  const qhAt = withMin ? 4 : 2;
  for (let b = 0, s = 0, y = 0; b < blocks; b++, s += blockBytes, y += 32) {
    const d = half(table, src, s);
    const m = withMin ? half(table, src, s + 2) : 0;
    const qh = (src[s + qhAt] | (src[s + qhAt + 1] << 8) | (src[s + qhAt + 2] << 16) | (src[s + qhAt + 3] << 24)) >>> 0;
    const qs = s + qhAt + 4;
    for (let i = 0; i < 32; i++) {
      const nibble = i < 16 ? src[qs + i] & 15 : src[qs + i - 16] >> 4;
      const q = nibble | (((qh >>> i) & 1) << 4);
      // As ggml: Q5_0 adds no offset (adding a zero would turn d·0 = −0 into +0).
      dst[y + i] = withMin ? d * q + m : d * (q - 16);
    }
  }
}

const q5_0: Dequantizer = (src, dst, blocks) => q5(src, dst, blocks, false);
const q5_1: Dequantizer = (src, dst, blocks) => q5(src, dst, blocks, true);

/**
 * block_q2_K (84 bytes): scales[16] (4-bit scale | 4-bit min << 4), qs[64], f16 d, f16 dmin; 16 sub-blocks of 16,
 * x = d·sc·q − dmin·m. Element 128n + 32j + 16h + l is bits 2j of qs[32n + 16h + l], sub-block 8n + 2j + h.
 */
function q2_K(src: Uint8Array, dst: Float32Array, blocks: number): void {
  const table = f16Table();
  for (let b = 0, s = 0, y = 0; b < blocks; b++, s += 84, y += 256) {
    const d = half(table, src, s + 80);
    const dmin = half(table, src, s + 82);
    for (let n = 0; n < 2; n++) {
      for (let j = 0; j < 4; j++) {
        for (let h = 0; h < 2; h++) {
          const sc = src[s + 8 * n + 2 * j + h];
          const step = d * (sc & 15);
          const min = dmin * (sc >> 4);
          const qs = s + 16 + 32 * n + 16 * h;
          const out = y + 128 * n + 32 * j + 16 * h;
          for (let l = 0; l < 16; l++) dst[out + l] = step * ((src[qs + l] >> (2 * j)) & 3) - min;
        }
      }
    }
  }
}

/**
 * block_q3_K (110 bytes): hmask[32], qs[64], scales[12] (sixteen 6-bit scales), f16 d; x = d·(sc − 32)·(q − 4), where
 * q's low 2 bits sit as in Q2_K and its third bit is bit 4n + j of hmask[16h + l].
 */
function q3_K(src: Uint8Array, dst: Float32Array, blocks: number): void {
  const table = f16Table();
  const scales = new Int32Array(16);
  for (let b = 0, s = 0, y = 0; b < blocks; b++, s += 110, y += 256) {
    const d = half(table, src, s + 108);
    const sc = s + 96;
    for (let i = 0; i < 16; i++) {
      const low = i < 8 ? src[sc + i] & 15 : src[sc + i - 8] >> 4;
      const high = (src[sc + 8 + (i & 3)] >> (2 * (i >> 2))) & 3;
      scales[i] = (low | (high << 4)) - 32;
    }
    for (let n = 0; n < 2; n++) {
      for (let j = 0; j < 4; j++) {
        const bit = 1 << (4 * n + j);
        for (let h = 0; h < 2; h++) {
          const step = d * scales[8 * n + 2 * j + h];
          const qs = s + 32 + 32 * n + 16 * h;
          const out = y + 128 * n + 32 * j + 16 * h;
          for (let l = 0; l < 16; l++) {
            const q = ((src[qs + l] >> (2 * j)) & 3) - (src[s + 16 * h + l] & bit ? 0 : 4);
            dst[out + l] = step * q;
          }
        }
      }
    }
  }
}

/** The 16 levels of IQ4_NL and IQ4_XS (ggml's kvalues_iq4nl). */
export const IQ4_LEVELS = Int8Array.of(-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113);
/** FP4 (E2M1) values, doubled as ggml stores them for MXFP4. */
export const FP4_LEVELS = Int8Array.of(0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12);

/** 32 values from 16 bytes of nibbles at `qs` (low nibbles first, as Q4_0), each level[q]·step. */
function nibbleLevels(src: Uint8Array, qs: number, levels: Int8Array, step: number, dst: Float32Array, out: number): void {
  for (let l = 0; l < 16; l++) {
    dst[out + l] = step * levels[src[qs + l] & 15];
    dst[out + 16 + l] = step * levels[src[qs + l] >> 4];
  }
}

/** block_iq4_nl (18 bytes): f16 d, qs[16]; x = d·level[q]. */
function iq4_nl(src: Uint8Array, dst: Float32Array, blocks: number): void {
  const table = f16Table();
  for (let b = 0, s = 0; b < blocks; b++, s += 18) nibbleLevels(src, s + 2, IQ4_LEVELS, half(table, src, s), dst, 32 * b);
}

/**
 * block_iq4_xs (136 bytes): f16 d, u16 scales_h, scales_l[4], qs[128]; 8 sub-blocks of 32 as IQ4_NL, each with the
 * 6-bit scale ls (low 4 bits from scales_l, high 2 from scales_h): x = d·(ls − 32)·level[q].
 */
function iq4_xs(src: Uint8Array, dst: Float32Array, blocks: number): void {
  const table = f16Table();
  for (let b = 0, s = 0; b < blocks; b++, s += 136) {
    const d = half(table, src, s);
    const high = src[s + 2] | (src[s + 3] << 8);
    for (let i = 0; i < 8; i++) {
      const ls = ((src[s + 4 + (i >> 1)] >> (4 * (i & 1))) & 15) | (((high >> (2 * i)) & 3) << 4);
      nibbleLevels(src, s + 8 + 16 * i, IQ4_LEVELS, d * (ls - 32), dst, 256 * b + 32 * i);
    }
  }
}

/** block_mxfp4 (17 bytes): an E8M0 exponent e, qs[16]; x = fp4[q]·2^(e − 127), with ggml's doubled levels halved. */
function mxfp4(src: Uint8Array, dst: Float32Array, blocks: number): void {
  for (let b = 0, s = 0; b < blocks; b++, s += 17) nibbleLevels(src, s + 1, FP4_LEVELS, 2 ** (src[s] - 128), dst, 32 * b);
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
  Q4_1: q4_1,
  Q5_0: q5_0,
  Q5_1: q5_1,
  Q2_K: q2_K,
  Q3_K: q3_K,
  Q4_K: q4_K,
  Q5_K: q5_K,
  Q6_K: q6_K,
  IQ4_NL: iq4_nl,
  IQ4_XS: iq4_xs,
  MXFP4: mxfp4,
};
