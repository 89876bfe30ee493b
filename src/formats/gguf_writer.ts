import { ContractError } from '../errors.ts';
import { f16BitsToF32, f32ToF16Bits } from '../numeric/half.ts';
import { ggmlTypeByName } from './gguf_types.ts';
import { FP4_LEVELS, IQ4_LEVELS } from './gguf_quants.ts';

/**
 * GGUF v3 writer in llama.cpp's layout (gguf-py GGUFWriter): header, metadata, tensor infos, then each
 * tensor's data at an offset aligned to `general.alignment`. Host-agnostic: it makes bytes and leaves where
 * they go to the caller, so a multi-GB file can be streamed in pieces (`ggufLayout` + `ggufPieces`) or a
 * small one built whole (`encodeGguf`). The quantisers make valid blocks with plain rounding, not
 * llama.cpp's search.
 */

/** The types this writer can quantise to. */
export type GgmlTypeName =
  | 'F32'
  | 'F16'
  | 'BF16'
  | 'Q8_0'
  | 'Q4_0'
  | 'Q4_1'
  | 'Q5_0'
  | 'Q5_1'
  | 'Q2_K'
  | 'Q3_K'
  | 'Q4_K'
  | 'Q5_K'
  | 'Q6_K'
  | 'IQ4_NL'
  | 'IQ4_XS'
  | 'MXFP4';

const TYPE_NAMES: GgmlTypeName[] = [
  'F32',
  'F16',
  'BF16',
  'Q8_0',
  'Q4_0',
  'Q4_1',
  'Q5_0',
  'Q5_1',
  'Q2_K',
  'Q3_K',
  'Q4_K',
  'Q5_K',
  'Q6_K',
  'IQ4_NL',
  'IQ4_XS',
  'MXFP4',
];

/** Elements and bytes per block, from the reader's table so the two cannot disagree. */
export const BLOCK = Object.fromEntries(
  TYPE_NAMES.map((name) => {
    const t = ggmlTypeByName(name);
    return [name, { size: t.blockSize, bytes: t.blockBytes }];
  }),
) as Record<GgmlTypeName, { size: number; bytes: number }>;

/** GGUF metadata value types. */
export const GgufType = { U8: 0, I8: 1, U16: 2, I16: 3, U32: 4, I32: 5, F32: 6, BOOL: 7, STRING: 8, ARRAY: 9, U64: 10, I64: 11, F64: 12 } as const;

const MAGIC = 0x46554747; // "GGUF" as a little-endian u32
const VERSION = 3;

// ---------------------------------------------------------------- bytes

/** Little-endian byte builder over one growing buffer (a vocabulary is ~500k small values). */
export class ByteWriter {
  private buf = new Uint8Array(4096);
  private view = new DataView(this.buf.buffer);
  length = 0;

  private reserve(n: number): number {
    const at = this.length;
    if (at + n > this.buf.length) {
      const next = new Uint8Array(Math.max(at + n, 2 * this.buf.length));
      next.set(this.buf.subarray(0, at));
      this.buf = next;
      this.view = new DataView(next.buffer);
    }
    this.length += n;
    return at;
  }
  bytes(b: Uint8Array): this {
    const at = this.reserve(b.length);
    this.buf.set(b, at);
    return this;
  }
  // The offset first: reserve() may replace the buffer and its view.
  private at(n: number): [DataView, number] {
    const at = this.reserve(n);
    return [this.view, at];
  }
  u8(v: number) {
    const [d, at] = this.at(1);
    d.setUint8(at, v);
    return this;
  }
  i8(v: number) {
    const [d, at] = this.at(1);
    d.setInt8(at, v);
    return this;
  }
  u16(v: number) {
    const [d, at] = this.at(2);
    d.setUint16(at, v, true);
    return this;
  }
  i16(v: number) {
    const [d, at] = this.at(2);
    d.setInt16(at, v, true);
    return this;
  }
  u32(v: number) {
    const [d, at] = this.at(4);
    d.setUint32(at, v, true);
    return this;
  }
  i32(v: number) {
    const [d, at] = this.at(4);
    d.setInt32(at, v, true);
    return this;
  }
  f32(v: number) {
    const [d, at] = this.at(4);
    d.setFloat32(at, v, true);
    return this;
  }
  f64(v: number) {
    const [d, at] = this.at(8);
    d.setFloat64(at, v, true);
    return this;
  }
  u64(v: number | bigint) {
    const [d, at] = this.at(8);
    d.setBigUint64(at, BigInt(v), true);
    return this;
  }
  i64(v: number | bigint) {
    const [d, at] = this.at(8);
    d.setBigInt64(at, BigInt(v), true);
    return this;
  }
  str(s: string) {
    const b = new TextEncoder().encode(s);
    return this.u64(b.length).bytes(b);
  }
  padTo(alignment: number) {
    this.reserve(ggufPadding(this.length, alignment)); // new bytes are zero: the buffer only grows
    return this;
  }
  finish(): Uint8Array {
    return this.buf.slice(0, this.length);
  }
}

/** Zero bytes that bring `length` to a multiple of `alignment`. */
export function ggufPadding(length: number, alignment: number): number {
  return (alignment - (length % alignment)) % alignment;
}

// ---------------------------------------------------------------- metadata

export interface KeyValue {
  key: string;
  type: number;
  value: unknown;
  /** Element type when type is ARRAY. */
  element?: number;
}

export const kv = {
  u32: (key: string, value: number): KeyValue => ({ key, type: GgufType.U32, value }),
  i32: (key: string, value: number): KeyValue => ({ key, type: GgufType.I32, value }),
  f32: (key: string, value: number): KeyValue => ({ key, type: GgufType.F32, value }),
  bool: (key: string, value: boolean): KeyValue => ({ key, type: GgufType.BOOL, value }),
  str: (key: string, value: string): KeyValue => ({ key, type: GgufType.STRING, value }),
  array: (key: string, element: number, value: unknown[]): KeyValue => ({ key, type: GgufType.ARRAY, element, value }),
};

function writeScalar(w: ByteWriter, type: number, value: unknown): void {
  switch (type) {
    case GgufType.U8:
      w.u8(value as number);
      break;
    case GgufType.I8:
      w.i8(value as number);
      break;
    case GgufType.U16:
      w.u16(value as number);
      break;
    case GgufType.I16:
      w.i16(value as number);
      break;
    case GgufType.U32:
      w.u32(value as number);
      break;
    case GgufType.I32:
      w.i32(value as number);
      break;
    case GgufType.F32:
      w.f32(value as number);
      break;
    case GgufType.BOOL:
      w.u8(value ? 1 : 0);
      break;
    case GgufType.STRING:
      w.str(value as string);
      break;
    case GgufType.U64:
      w.u64(value as number);
      break;
    case GgufType.I64:
      w.i64(value as number);
      break;
    case GgufType.F64:
      w.f64(value as number);
      break;
    default:
      throw new ContractError(`cannot write GGUF value type ${type}`, 'writeKeyValue');
  }
}

export function writeKeyValue(w: ByteWriter, entry: KeyValue): void {
  w.str(entry.key).u32(entry.type);
  if (entry.type !== GgufType.ARRAY) {
    writeScalar(w, entry.type, entry.value);
    return;
  }
  const values = entry.value as unknown[];
  w.u32(entry.element!).u64(values.length);
  for (const v of values) writeScalar(w, entry.element!, v);
}

// ---------------------------------------------------------------- layout

export interface GgufTensorSpec {
  name: string;
  /** ggml order (ne0, the contiguous dimension, first). */
  dims: number[];
  type: GgmlTypeName;
}

/** Bytes of a tensor's data (ne0 must be whole blocks, as ggml requires). */
export function ggufTensorBytes(t: GgufTensorSpec): number {
  const { size, bytes } = BLOCK[t.type];
  if (t.dims[0] % size !== 0) throw new ContractError(`${t.name}: ne0 = ${t.dims[0]} is not whole ${t.type} blocks of ${size}`, 'ggufTensorBytes');
  return (t.dims.reduce((a, b) => a * b, 1) / size) * bytes;
}

export interface GgufLayout {
  /** Magic, counts, metadata and tensor infos, padded: the file's first bytes. */
  head: Uint8Array;
  alignment: number;
  /** Each tensor's data offset from the end of `head`. */
  offsets: number[];
  sizes: number[];
  totalBytes: number;
}

/**
 * Everything but the tensor data. The alignment is `general.alignment` when the metadata sets it (readers
 * take it from there), else the argument.
 */
export function ggufLayout(metadata: KeyValue[], tensors: GgufTensorSpec[], alignment = 32): GgufLayout {
  const set = metadata.find((e) => e.key === 'general.alignment');
  if (set) alignment = set.value as number;
  const w = new ByteWriter().u32(MAGIC).u32(VERSION).u64(tensors.length).u64(metadata.length);
  for (const entry of metadata) writeKeyValue(w, entry);
  const offsets: number[] = [];
  const sizes: number[] = [];
  let offset = 0;
  for (const t of tensors) {
    w.str(t.name).u32(t.dims.length);
    for (const d of t.dims) w.u64(d);
    w.u32(ggmlTypeByName(t.type).id).u64(offset);
    const size = ggufTensorBytes(t);
    offsets.push(offset);
    sizes.push(size);
    offset += size + ggufPadding(size, alignment);
  }
  w.padTo(alignment);
  const head = w.finish();
  return { head, alignment, offsets, sizes, totalBytes: head.length + offset };
}

/**
 * The file as a sequence of pieces: the head, then for each tensor the pieces `data(i)` yields (checked to
 * add up to its size) and its padding. Nothing is held beyond the piece being written.
 */
export function* ggufPieces(layout: GgufLayout, data: (index: number) => Iterable<Uint8Array>): Generator<Uint8Array> {
  yield layout.head;
  const zeros = new Uint8Array(layout.alignment);
  for (let i = 0; i < layout.sizes.length; i++) {
    let written = 0;
    for (const piece of data(i)) {
      written += piece.length;
      if (written > layout.sizes[i]) throw new ContractError(`tensor ${i}: more than its ${layout.sizes[i]} bytes`, 'ggufPieces');
      yield piece;
    }
    if (written !== layout.sizes[i]) throw new ContractError(`tensor ${i}: ${written} bytes written of ${layout.sizes[i]}`, 'ggufPieces');
    const pad = ggufPadding(written, layout.alignment);
    if (pad) yield zeros.subarray(0, pad);
  }
}

export interface TensorOut extends GgufTensorSpec {
  data: Uint8Array;
}

/** A whole GGUF v3 file in memory (tests, small files). */
export function encodeGguf(metadata: KeyValue[], tensors: TensorOut[], alignment = 32): Uint8Array {
  const layout = ggufLayout(metadata, tensors, alignment);
  const out = new Uint8Array(layout.totalBytes);
  let at = 0;
  for (const piece of ggufPieces(layout, (i) => [tensors[i].data])) {
    out.set(piece, at);
    at += piece.length;
  }
  return out;
}

// ---------------------------------------------------------------- quantisers

const f16Bytes = (out: Uint8Array, at: number, v: number) => {
  const h = f32ToF16Bits(v);
  out[at] = h & 255;
  out[at + 1] = h >> 8;
};
const roundF16 = (v: number) => f16BitsToF32(f32ToF16Bits(v));
const clamp = (v: number, lo: number, hi: number) => Math.min(hi, Math.max(lo, v));

function quantizeQ8_0(x: Float32Array, out: Uint8Array): void {
  let amax = 0;
  for (let i = 0; i < 32; i++) amax = Math.max(amax, Math.abs(x[i]));
  const d = amax / 127;
  f16Bytes(out, 0, d);
  for (let i = 0; i < 32; i++) out[2 + i] = (d ? Math.round(x[i] / d) : 0) & 255;
}

/** ggml's quantize_row_q4_0_ref: the largest-magnitude value maps to −8. */
export function quantizeQ4_0Block(x: Float32Array, out: Uint8Array): void {
  const d = signedMax(x, 0, 32) / -8;
  f16Bytes(out, 0, d);
  const q = (v: number) => (d ? Math.min(15, Math.trunc(v / d + 8.5)) : 8);
  for (let i = 0; i < 16; i++) out[2 + i] = q(x[i]) | (q(x[16 + i]) << 4);
}

/** The largest-magnitude value, with its sign. */
function signedMax(x: Float32Array, from = 0, count = x.length): number {
  let max = 0;
  for (let i = from; i < from + count; i++) if (Math.abs(x[i]) > Math.abs(max)) max = x[i];
  return max;
}

/** Q4_1 / Q5_1: the block's range in 2^bits − 1 steps from its minimum. */
function minStepBlock(x: Float32Array, out: Uint8Array, levels: number): number[] {
  let lo = Infinity;
  let hi = -Infinity;
  for (let i = 0; i < 32; i++) {
    lo = Math.min(lo, x[i]);
    hi = Math.max(hi, x[i]);
  }
  f16Bytes(out, 0, (hi - lo) / levels);
  f16Bytes(out, 2, lo);
  const [d, m] = [roundF16((hi - lo) / levels), roundF16(lo)];
  return Array.from(x.subarray(0, 32), (v) => (d ? clamp(Math.round((v - m) / d), 0, levels) : 0));
}

/** Q4_0-order nibbles of 32 levels at `at`: element l low, element 16 + l high. */
function packNibbles(out: Uint8Array, at: number, q: ArrayLike<number>): void {
  for (let l = 0; l < 16; l++) out[at + l] = (q[l] & 15) | ((q[16 + l] & 15) << 4);
}

/** The fifth bits of 32 levels as Q5_0 / Q5_1's little-endian u32 qh at `at`. */
function packFifthBits(out: Uint8Array, at: number, q: number[]): void {
  for (let i = 0; i < 32; i++) if (q[i] & 16) out[at + (i >> 3)] |= 1 << (i & 7);
}

function quantizeQ4_1(x: Float32Array, out: Uint8Array): void {
  packNibbles(out, 4, minStepBlock(x, out, 15));
}

function quantizeQ5_1(x: Float32Array, out: Uint8Array): void {
  const q = minStepBlock(x, out, 31);
  packFifthBits(out, 4, q);
  packNibbles(out, 8, q);
}

/** As Q4_0 with 32 levels: the largest-magnitude value maps to −16. */
function quantizeQ5_0(x: Float32Array, out: Uint8Array): void {
  const d = signedMax(x, 0, 32) / -16;
  f16Bytes(out, 0, d);
  const step = roundF16(d);
  const q = Array.from(x.subarray(0, 32), (v) => (step ? clamp(Math.round(v / step) + 16, 0, 31) : 16));
  packFifthBits(out, 2, q);
  packNibbles(out, 6, q);
}

/** Q2_K: per sub-block of 16 a 4-bit step and a 4-bit offset (min), in units of d and dmin. */
function quantizeQ2_K(x: Float32Array, out: Uint8Array): void {
  const steps: number[] = [];
  const mins: number[] = [];
  for (let j = 0; j < 16; j++) {
    let lo = 0;
    let hi = -Infinity;
    for (let i = 16 * j; i < 16 * j + 16; i++) {
      lo = Math.min(lo, x[i]);
      hi = Math.max(hi, x[i]);
    }
    steps.push((hi - lo) / 3);
    mins.push(-lo);
  }
  const d = Math.max(...steps) / 15;
  const dmin = Math.max(...mins) / 15;
  f16Bytes(out, 80, d);
  f16Bytes(out, 82, dmin);
  const ls = steps.map((v) => (d ? clamp(Math.round(v / d), 0, 15) : 0));
  const lm = mins.map((v) => (dmin ? clamp(Math.round(v / dmin), 0, 15) : 0));
  for (let j = 0; j < 16; j++) {
    out[j] = ls[j] | (lm[j] << 4);
    const step = roundF16(d) * ls[j];
    const offset = roundF16(dmin) * lm[j];
    // Sub-block j = 8n + 2k + h holds elements 128n + 32k + 16h + l, at bits 2k of qs[32n + 16h + l].
    const [n, k, h] = [j >> 3, (j >> 1) & 3, j & 1];
    for (let l = 0; l < 16; l++) {
      const q = step ? clamp(Math.round((x[128 * n + 32 * k + 16 * h + l] + offset) / step), 0, 3) : 0;
      out[16 + 32 * n + 16 * h + l] |= q << (2 * k);
    }
  }
}

/** Q3_K: per sub-block of 16 a signed 6-bit scale of d; levels −4..3 (the largest-magnitude value maps to −4). */
function quantizeQ3_K(x: Float32Array, out: Uint8Array): void {
  const scales = Array.from({ length: 16 }, (_, j) => signedMax(x, 16 * j, 16) / -4);
  const d = signedMax(Float32Array.from(scales)) / -32;
  f16Bytes(out, 108, d);
  const ls = scales.map((v) => (d ? clamp(Math.round(v / d), -32, 31) : 0));
  for (let j = 0; j < 16; j++) {
    const stored = ls[j] + 32;
    out[96 + (j < 8 ? j : j - 8)] |= (stored & 15) << (j < 8 ? 0 : 4);
    out[96 + 8 + (j & 3)] |= (stored >> 4) << (2 * (j >> 2));
    const step = roundF16(d) * ls[j];
    const [n, k, h] = [j >> 3, (j >> 1) & 3, j & 1];
    for (let l = 0; l < 16; l++) {
      const q = (step ? clamp(Math.round(x[128 * n + 32 * k + 16 * h + l] / step), -4, 3) : 0) + 4;
      out[32 + 32 * n + 16 * h + l] |= (q & 3) << (2 * k);
      if (q & 4) out[16 * h + l] |= 1 << (4 * n + k);
    }
  }
}

/** The index of the level nearest `v` (levels as in gguf_quants.ts). */
function nearestLevel(levels: Int8Array, v: number): number {
  let best = 0;
  for (let i = 1; i < levels.length; i++) if (Math.abs(levels[i] - v) < Math.abs(levels[best] - v)) best = i;
  return best;
}

/** 32 values to the nearest of IQ4's levels times `step`, as nibbles at `at`. */
function iq4Nibbles(x: Float32Array, from: number, step: number, out: Uint8Array, at: number): void {
  packNibbles(
    out,
    at,
    Array.from(x.subarray(from, from + 32), (v) => (step ? nearestLevel(IQ4_LEVELS, v / step) : 8)),
  );
}

/** IQ4_NL: the largest-magnitude value maps to the level −127. */
function quantizeIQ4_NL(x: Float32Array, out: Uint8Array): void {
  const d = signedMax(x, 0, 32) / -127;
  f16Bytes(out, 0, d);
  iq4Nibbles(x, 0, roundF16(d), out, 2);
}

/** IQ4_XS: IQ4_NL sub-blocks of 32 whose steps are signed 6-bit multiples of d. */
function quantizeIQ4_XS(x: Float32Array, out: Uint8Array): void {
  const steps = Array.from({ length: 8 }, (_, j) => signedMax(x, 32 * j, 32) / -127);
  const d = signedMax(Float32Array.from(steps)) / -32;
  f16Bytes(out, 0, d);
  let high = 0;
  for (let j = 0; j < 8; j++) {
    const ls = d ? clamp(Math.round(steps[j] / d), -32, 31) : 0;
    out[4 + (j >> 1)] |= ((ls + 32) & 15) << (4 * (j & 1));
    high |= ((ls + 32) >> 4) << (2 * j);
    iq4Nibbles(x, 32 * j, roundF16(d) * ls, out, 8 + 16 * j);
  }
  out[2] = high & 255;
  out[3] = high >> 8;
}

/** MXFP4: the smallest power-of-two scale that puts the block's largest magnitude within FP4's ±6. */
function quantizeMXFP4(x: Float32Array, out: Uint8Array): void {
  const amax = Math.abs(signedMax(x, 0, 32));
  const e = amax ? clamp(Math.ceil(Math.log2(amax / 6)) + 127, 0, 254) : 0;
  out[0] = e;
  const step = 2 ** (e - 128); // FP4_LEVELS are doubled
  packNibbles(
    out,
    1,
    Array.from(x.subarray(0, 32), (v) => nearestLevel(FP4_LEVELS, v / step)),
  );
}

/** Packs 8 six-bit scales and mins as get_scale_min_k4 reads them. */
function packScales(out: Uint8Array, at: number, ls: number[], lm: number[]): void {
  for (let j = 0; j < 8; j++) {
    if (j < 4) {
      out[at + j] = ls[j];
      out[at + j + 4] = lm[j];
    } else {
      out[at + j + 4] = (ls[j] & 15) | ((lm[j] & 15) << 4);
      out[at + j - 4] |= (ls[j] >> 4) << 6;
      out[at + j] |= (lm[j] >> 4) << 6;
    }
  }
}

/** Q4_K / Q5_K levels: per sub-block of 32 an offset (min) and step, both as 6-bit multiples of d / dmin. */
function kLevels(x: Float32Array, out: Uint8Array, maxLevel: number): number[] {
  const scales: number[] = [];
  const mins: number[] = [];
  for (let j = 0; j < 8; j++) {
    let lo = 0;
    let hi = -Infinity;
    for (let i = 0; i < 32; i++) {
      lo = Math.min(lo, x[32 * j + i]);
      hi = Math.max(hi, x[32 * j + i]);
    }
    scales.push((hi - lo) / maxLevel);
    mins.push(-lo);
  }
  const d = Math.max(...scales) / 63;
  const dmin = Math.max(...mins) / 63;
  const ls = scales.map((s) => (d ? clamp(Math.round(s / d), 0, 63) : 0));
  const lm = mins.map((m) => (dmin ? clamp(Math.round(m / dmin), 0, 63) : 0));
  f16Bytes(out, 0, d);
  f16Bytes(out, 2, dmin);
  packScales(out, 4, ls, lm);
  const levels: number[] = [];
  for (let j = 0; j < 8; j++) {
    const step = roundF16(d) * ls[j];
    const offset = roundF16(dmin) * lm[j];
    for (let i = 0; i < 32; i++) levels.push(step ? clamp(Math.round((x[32 * j + i] + offset) / step), 0, maxLevel) : 0);
  }
  return levels;
}

function quantizeQ4_K(x: Float32Array, out: Uint8Array): void {
  const L = kLevels(x, out, 15);
  for (let c = 0; c < 4; c++) for (let l = 0; l < 32; l++) out[16 + 32 * c + l] = L[64 * c + l] | (L[64 * c + 32 + l] << 4);
}

function quantizeQ5_K(x: Float32Array, out: Uint8Array): void {
  const L = kLevels(x, out, 31);
  for (let c = 0; c < 4; c++) {
    for (let l = 0; l < 32; l++) {
      const a = L[64 * c + l];
      const b = L[64 * c + 32 + l];
      if (a > 15) out[16 + l] |= 1 << (2 * c);
      if (b > 15) out[16 + l] |= 2 << (2 * c);
      out[48 + 32 * c + l] = (a & 15) | ((b & 15) << 4);
    }
  }
}

function quantizeQ6_K(x: Float32Array, out: Uint8Array): void {
  const scales: number[] = [];
  for (let j = 0; j < 16; j++) {
    let max = 0;
    for (let i = 0; i < 16; i++) if (Math.abs(x[16 * j + i]) > Math.abs(max)) max = x[16 * j + i];
    scales.push(max / -32);
  }
  const maxScale = scales.reduce((a, s) => (Math.abs(s) > Math.abs(a) ? s : a), 0);
  const d = maxScale ? maxScale / -128 : 0;
  f16Bytes(out, 208, d);
  const sc = scales.map((s) => (d ? clamp(Math.round(s / d), -128, 127) : 0));
  sc.forEach((s, j) => (out[192 + j] = s & 255));
  const L: number[] = [];
  for (let j = 0; j < 16; j++) {
    const step = roundF16(d) * sc[j];
    for (let i = 0; i < 16; i++) L.push((step ? clamp(Math.round(x[16 * j + i] / step), -32, 31) : 0) + 32);
  }
  for (let n = 0; n < 2; n++) {
    for (let l = 0; l < 32; l++) {
      const [q1, q2, q3, q4] = [0, 32, 64, 96].map((k) => L[128 * n + l + k]);
      out[64 * n + l] = (q1 & 15) | ((q3 & 15) << 4);
      out[64 * n + l + 32] = (q2 & 15) | ((q4 & 15) << 4);
      out[128 + 32 * n + l] = (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6);
    }
  }
}

const BLOCK_QUANTIZERS: Partial<Record<GgmlTypeName, (x: Float32Array, out: Uint8Array) => void>> = {
  Q8_0: quantizeQ8_0,
  Q4_0: quantizeQ4_0Block,
  Q4_1: quantizeQ4_1,
  Q5_0: quantizeQ5_0,
  Q5_1: quantizeQ5_1,
  Q2_K: quantizeQ2_K,
  Q3_K: quantizeQ3_K,
  Q4_K: quantizeQ4_K,
  Q5_K: quantizeQ5_K,
  Q6_K: quantizeQ6_K,
  IQ4_NL: quantizeIQ4_NL,
  IQ4_XS: quantizeIQ4_XS,
  MXFP4: quantizeMXFP4,
};

/** Encodes values (a whole number of blocks) as `type`. */
export function quantize(type: GgmlTypeName, values: Float32Array): Uint8Array {
  const { size, bytes } = BLOCK[type];
  if (values.length % size !== 0) throw new ContractError(`${values.length} values are not whole ${type} blocks`, 'quantize');
  const out = new Uint8Array((values.length / size) * bytes);
  const view = new DataView(out.buffer);
  if (type === 'F32') values.forEach((v, i) => view.setFloat32(4 * i, v, true));
  else if (type === 'F16') values.forEach((v, i) => view.setUint16(2 * i, f32ToF16Bits(v), true));
  else if (type === 'BF16') {
    const u = new Uint32Array(Float32Array.from(values).buffer);
    u.forEach((bits, i) => view.setUint16(2 * i, (bits + 0x7fff + ((bits >>> 16) & 1)) >>> 16, true));
  } else {
    const quantizer = BLOCK_QUANTIZERS[type]!;
    for (let b = 0; b < values.length / size; b++) quantizer(values.subarray(b * size, (b + 1) * size), out.subarray(b * bytes, (b + 1) * bytes));
  }
  return out;
}
