import { f16BitsToF32, f32ToF16Bits } from './half.ts';
import { ContractError } from '../errors.ts';

/**
 * The INT4 weight format ('q4'): symmetric 4-bit, one f16 scale per group of 32 consecutive elements along
 * a row, x ≈ (n − 8) · scale for the nibble n ∈ [0, 15]. Rows are padded with zeros to a multiple of 64
 * elements (so that a scale word, two groups, never spans two rows). An item (a row of a 2-D tensor, an
 * expert of a 3-D one) is one contiguous block of itemStride · 9/16 bytes: itemStride / 8 nibble words
 * (word w holds elements 8w..8w+7, element 8w+k in bits 4k..4k+3), then itemStride / 64 scale words (two
 * f16 each, the even group in the low half).
 *
 * The quantiser, which shaders/quantize_q4.wgsl repeats bit for bit, per group of 32 (x clamped to ±Q4_MAX_INPUT):
 *  - m = max |x|. If f16(m / 7) is 0 the group is all zero (scale 0, every nibble 8).
 *  - Candidate scales, each an f16: m/7 (the plain absmax scale), m/7.5, m/8 (uses q = −8), m/8.5, then a least-
 *    squares refit of the best so far (Σ q·x / Σ q², rounded to f16), twice. The q of a scale are the nearest
 *    levels in [−8, 7]. The candidate with the least squared error Σ (x − q·scale)² wins (the first on a tie).
 *    Since m/7 is a candidate and its q are at least as close as clamping to [−7, 7], no group is worse than plain
 *    absmax/7 rounding (up to the resolution below); the others lower the RMS error by 8-15% (Gaussian groups
 *    14%, the fixtures' tensors 11%).
 *  - Everything that decides is exact, so the CPU and any GPU agree: f16(y) is found by comparing exact distances
 *    to neighbouring f16 values, and q and the errors are computed in integers, on x fixed to a grid of
 *    2^(e − 16) (2^e ≤ m < 2^(e + 1)), i.e. 17 bits of the group's range. Non-finite inputs give unspecified results.
 */

export const Q4_GROUP = 32;
/** Row padding of q4 tensors, in elements. */
export const Q4_ROW_ALIGN = 64;
/** |x| is clamped to this, so that every scale is a finite f16 (65504 · 7). */
export const Q4_MAX_INPUT = 458528;

export const q4RowStride = (cols: number): number => Math.ceil(cols / Q4_ROW_ALIGN) * Q4_ROW_ALIGN;
/** u32 words of one item: itemStride / 8 nibble words, then itemStride / 64 scale words. */
export const q4ItemWords = (itemStride: number): number => (itemStride * 9) / 64;

/** Fixed-point bits below the group's leading exponent. */
const FIX = 16;
/** Candidate scales m · 2^j / D, as [D, j]: 7, 7.5, 8, 8.5. */
const DIVISORS: readonly [number, number][] = [
  [7, 0],
  [15, 1],
  [8, 0],
  [17, 1],
];
const REFITS = 2;
const MAX_F16 = 0x7bff;
const SATURATED = 0xffffffff;
const MAX_FIXED_SCALE = 2 ** 19;

const fr = Math.fround;
const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

function checkItemStride(itemStride: number): void {
  if (!Number.isInteger(itemStride) || itemStride <= 0 || itemStride % Q4_ROW_ALIGN !== 0) {
    throw new ContractError(`itemStride ${itemStride} must be a positive multiple of ${Q4_ROW_ALIGN}`, 'q4');
  }
}

/** Round half to even, as WGSL round(). */
function roundEven(v: number): number {
  const r = Math.round(v);
  return r - v === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** f16 bits nearest to t / D (t ≥ 0 an f32, D·v exact in f32), ties to even; saturates at 65504. */
function f16Nearest(t: number, D: number): number {
  const h0 = Math.min(f32ToF16Bits(fr(t / D)), MAX_F16);
  let best = -1;
  let bestDist = Infinity;
  for (let h = Math.max(0, h0 - 1); h <= Math.min(MAX_F16, h0 + 1); h++) {
    const dist = fr(Math.abs(fr(t - D * f16BitsToF32(h))));
    if (dist < bestDist || (dist === bestDist && (h & 1) === 0)) {
      best = h;
      bestDist = dist;
    }
  }
  return best;
}

/**
 * The scale in fixed-point units (v · 2^(FIX − e)), or 0 when that is not an integer in [1, 2^19) (the bound
 * keeps every integer product below 2^31; useful scales are below 2^17 / 7).
 */
function fixedScale(h: number, e: number): number {
  const s = f16BitsToF32(h) * 2 ** (FIX - e);
  return Number.isInteger(s) && s >= 1 && s < MAX_FIXED_SCALE ? s : 0;
}

/** Nibbles of X for the fixed-point scale S into `nib`; returns Σ (X − q·S)², saturated at 2^32 − 1. */
function assign(X: Int32Array, S: number, nib: Uint8Array): number {
  let err = 0;
  for (let i = 0; i < Q4_GROUP; i++) {
    const num = 2 * X[i] + 17 * S;
    const n = num < 0 ? 0 : Math.min(15, Math.floor(num / (2 * S)));
    nib[i] = n;
    const d = Math.abs(X[i] - (n - 8) * S);
    err = d >= 65536 ? SATURATED : Math.min(SATURATED, err + d * d);
  }
  return err;
}

/** f16 bits nearest to the least-squares scale Σ q·X / Σ q² of these nibbles (in fixed point), or -1. */
function refit(X: Int32Array, nib: Uint8Array, e: number): number {
  let num = 0;
  let den = 0;
  for (let i = 0; i < Q4_GROUP; i++) {
    const q = nib[i] - 8;
    num += q * X[i];
    den += q * q;
  }
  if (num <= 0 || den === 0) return -1;
  // Approximate, then the exact neighbour check on |num − den · S_h| (integers).
  const h0 = Math.min(f32ToF16Bits(fr(fr(fr(num) / fr(den)) * 2 ** (e - FIX))), MAX_F16);
  let best = -1;
  let bestDist = Infinity;
  for (let h = Math.max(1, h0 - 1); h <= Math.min(MAX_F16, h0 + 1); h++) {
    const S = fixedScale(h, e);
    if (S === 0) continue;
    const dist = Math.abs(num - den * S);
    if (dist < bestDist || (dist === bestDist && (h & 1) === 0)) {
      best = h;
      bestDist = dist;
    }
  }
  return best;
}

const scratch = { X: new Int32Array(Q4_GROUP), nib: new Uint8Array(Q4_GROUP), bestNib: new Uint8Array(Q4_GROUP) };

/**
 * Quantises values[at .. at + 32) (f32 values): the nibbles go to nib[0..32), the f16 scale bits are returned.
 */
export function quantizeQ4Group(values: ArrayLike<number>, at: number, nib: Uint8Array): number {
  const { X, nib: cand, bestNib } = scratch;
  let m = 0;
  for (let i = 0; i < Q4_GROUP; i++) m = Math.max(m, Math.min(Math.abs(fr(values[at + i])), Q4_MAX_INPUT));
  const base = f16Nearest(m, 7);
  if (base === 0 || !(m > 0)) {
    nib.fill(8, 0, Q4_GROUP);
    return 0;
  }
  f32[0] = m;
  const e = ((u32[0] >>> 23) & 0xff) - 127;
  for (let i = 0; i < Q4_GROUP; i++) {
    const x = Math.max(-Q4_MAX_INPUT, Math.min(Q4_MAX_INPUT, fr(values[at + i])));
    X[i] = roundEven(x * 2 ** (FIX - e));
  }
  let bestH = 0;
  let bestErr = Infinity;
  const consider = (h: number) => {
    const S = h > 0 ? fixedScale(h, e) : 0;
    if (S === 0) return;
    const err = assign(X, S, cand);
    if (err < bestErr) {
      bestErr = err;
      bestH = h;
      bestNib.set(cand);
    }
  };
  for (const [D, j] of DIVISORS) consider(D === 7 && j === 0 ? base : f16Nearest(fr(m * 2 ** j), D));
  for (let r = 0; r < REFITS; r++) consider(refit(X, bestNib, e));
  nib.set(bestNib);
  return bestH;
}

/**
 * Quantises one item: `values` are its itemStride elements (rows padded with zeros to a multiple of 64).
 * Returns its block: itemStride / 8 nibble words, then itemStride / 64 scale words.
 */
export function quantizeQ4Item(values: Float32Array, itemStride: number): Uint32Array {
  checkItemStride(itemStride);
  if (values.length !== itemStride) throw new ContractError(`an item of stride ${itemStride} needs ${itemStride} values, got ${values.length}`, 'q4');
  const words = new Uint32Array(q4ItemWords(itemStride));
  const nib = new Uint8Array(Q4_GROUP);
  const scaleBase = itemStride / 8;
  for (let g = 0; g < itemStride / Q4_GROUP; g++) {
    const h = quantizeQ4Group(values, g * Q4_GROUP, nib);
    for (let w = 0; w < 4; w++) {
      let word = 0;
      for (let k = 0; k < 8; k++) word |= nib[8 * w + k] << (4 * k);
      words[4 * g + w] = word >>> 0;
    }
    words[scaleBase + (g >> 1)] |= h << (16 * (g & 1));
  }
  return words;
}

/** The values an item's block stands for: itemStride f32 values (each (n − 8) · scale, exact in f32). */
export function dequantizeQ4Item(words: Uint32Array, itemStride: number): Float32Array {
  checkItemStride(itemStride);
  if (words.length !== q4ItemWords(itemStride))
    throw new ContractError(`an item of stride ${itemStride} has ${q4ItemWords(itemStride)} words, got ${words.length}`, 'q4');
  const out = new Float32Array(itemStride);
  const scaleBase = itemStride / 8;
  for (let g = 0; g < itemStride / Q4_GROUP; g++) {
    const scale = f16BitsToF32((words[scaleBase + (g >> 1)] >>> (16 * (g & 1))) & 0xffff);
    for (let i = 0; i < Q4_GROUP; i++) {
      const e = g * Q4_GROUP + i;
      out[e] = (((words[e >> 3] >>> (4 * (e & 7))) & 0xf) - 8) * scale;
    }
  }
  return out;
}

/** A tensor's q4 geometry: shape [rows, cols] (items are rows) or [items, rows, cols]. */
export function q4Geometry(shape: readonly number[]): { items: number; rowsPerItem: number; cols: number; rowStride: number; itemStride: number } {
  if (shape.length !== 2 && shape.length !== 3) throw new ContractError(`shape [${shape}] is not 2-D or 3-D`, 'q4');
  const cols = shape[shape.length - 1];
  const rowsPerItem = shape.length === 3 ? shape[1] : 1;
  const rowStride = q4RowStride(cols);
  return { items: shape[0], rowsPerItem, cols, rowStride, itemStride: rowsPerItem * rowStride };
}

/** Quantises a whole tensor (values row-major, unpadded): its items' blocks back to back. */
export function quantizeQ4Tensor(values: Float32Array, shape: readonly number[]): Uint32Array {
  const { items, rowsPerItem, cols, rowStride, itemStride } = q4Geometry(shape);
  if (values.length !== items * rowsPerItem * cols)
    throw new ContractError(`[${shape}] needs ${items * rowsPerItem * cols} values, got ${values.length}`, 'q4');
  const itemWords = q4ItemWords(itemStride);
  const out = new Uint32Array(items * itemWords);
  const padded = new Float32Array(itemStride);
  for (let it = 0; it < items; it++) {
    padded.fill(0);
    for (let r = 0; r < rowsPerItem; r++) {
      const src = (it * rowsPerItem + r) * cols;
      padded.set(values.subarray(src, src + cols), r * rowStride);
    }
    out.set(quantizeQ4Item(padded, itemStride), it * itemWords);
  }
  return out;
}

/** The inverse of quantizeQ4Tensor: the dequantised values, row-major and unpadded. */
export function dequantizeQ4Tensor(words: Uint32Array, shape: readonly number[]): Float32Array {
  const { items, rowsPerItem, cols, rowStride, itemStride } = q4Geometry(shape);
  const itemWords = q4ItemWords(itemStride);
  if (words.length !== items * itemWords) throw new ContractError(`[${shape}] takes ${items * itemWords} words, got ${words.length}`, 'q4');
  const out = new Float32Array(items * rowsPerItem * cols);
  for (let it = 0; it < items; it++) {
    const item = dequantizeQ4Item(words.subarray(it * itemWords, (it + 1) * itemWords), itemStride);
    for (let r = 0; r < rowsPerItem; r++) out.set(item.subarray(r * rowStride, r * rowStride + cols), (it * rowsPerItem + r) * cols);
  }
  return out;
}

/** Quantise then dequantise: what a q4 copy of these values holds. */
export function roundToQ4(values: Float32Array, shape: readonly number[]): Float32Array {
  return dequantizeQ4Tensor(quantizeQ4Tensor(values, shape), shape);
}
