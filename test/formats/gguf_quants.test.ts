import { describe, expect, it } from 'vitest';
import { f32ToF16Bits } from '../../src/numeric/half.ts';
import { DEQUANTIZERS, q4_0ToQ4Row } from '../../src/formats/gguf_quants.ts';
import { dequantizeQ4Item, q4ItemWords, q4RowStride } from '../../src/numeric/q4.ts';
import { ggmlTypeByName } from '../../src/formats/gguf_types.ts';
import { BLOCK, type GgmlTypeName, QUANT_BITS, dequantizeReference, quantize } from '../helpers/gguf_writer.ts';
import { randn } from '../helpers/random.ts';

/** Deterministic bytes (xorshift), so a failure reproduces. */
function randomBytes(n: number, seed: number): Uint8Array {
  let s = seed >>> 0 || 1;
  return Uint8Array.from({ length: n }, () => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return s & 255;
  });
}

const setF16 = (block: Uint8Array, at: number, value: number) => {
  const h = f32ToF16Bits(value);
  block[at] = h & 255;
  block[at + 1] = h >> 8;
};

/** Blocks with random quants and hand-set scales: positive, negative, zero and large d; K-quant mins of both signs. */
function handBuiltBlocks(type: GgmlTypeName, seed: number): Uint8Array {
  const { bytes } = BLOCK[type];
  const scales: [number, number][] = [
    [0.5, 0.25],
    [-0.75, 0.125],
    [0.001, -0.5],
    [0, 0],
    [-3.5, -2],
    [1e-4, 7.5],
  ];
  const out = randomBytes(bytes * scales.length, seed);
  scales.forEach(([d, dmin], b) => {
    const block = out.subarray(b * bytes, (b + 1) * bytes);
    if (type === 'Q8_0' || type === 'Q4_0' || type === 'Q5_0' || type === 'IQ4_NL' || type === 'IQ4_XS') setF16(block, 0, d);
    if (type === 'Q4_K' || type === 'Q5_K' || type === 'Q4_1' || type === 'Q5_1') {
      setF16(block, 0, d);
      setF16(block, 2, dmin);
    }
    if (type === 'Q2_K') {
      setF16(block, 80, d);
      setF16(block, 82, dmin);
    }
    if (type === 'Q3_K') setF16(block, 108, d);
    if (type === 'Q6_K') setF16(block, 208, d);
    // MXFP4's scale is a power of two: 2^(e − 127) for e around 127, and the two smallest (subnormal in f32).
    if (type === 'MXFP4') block[0] = [127, 125, 0, 1, 131, 140][b];
  });
  return out;
}

function dequantize(type: GgmlTypeName, bytes: Uint8Array, count: number): Float32Array {
  const out = new Float32Array(count);
  DEQUANTIZERS[type](bytes, out, count / BLOCK[type].size);
  return out;
}

const QUANTS = Object.keys(QUANT_BITS) as GgmlTypeName[];

describe('GGUF dequantisers', () => {
  it('block sizes agree with ggml', () => {
    for (const type of [...QUANTS, 'F32', 'F16', 'BF16'] as GgmlTypeName[]) {
      const t = ggmlTypeByName(type);
      expect([t.blockSize, t.blockBytes]).toEqual([BLOCK[type].size, BLOCK[type].bytes]);
    }
  });

  for (const type of QUANTS) {
    it(`${type} equals the element-wise reference on hand-built blocks`, () => {
      const bytes = handBuiltBlocks(type, 7 + type.length);
      const count = (bytes.length / BLOCK[type].bytes) * BLOCK[type].size;
      const actual = dequantize(type, bytes, count);
      const expected = dequantizeReference(type, bytes, count);
      expect(Array.from(actual)).toEqual(Array.from(expected));
      // The blocks exercise what they should: negative values and, for K-quants, the mins.
      expect(actual.some((v) => v < 0)).toBe(true);
      expect(actual.some((v) => v > 0)).toBe(true);
    });
  }

  it('decodes values worked out by hand', () => {
    // Q8_0: d = -0.5, q = [0, 1, -1, 127, -128, ...].
    const q8 = new Uint8Array(34);
    setF16(q8, 0, -0.5);
    q8.set([0, 1, 255, 127, 128], 2);
    expect(Array.from(dequantize('Q8_0', q8, 32).slice(0, 5))).toEqual([-0, -0.5, 0.5, -63.5, 64]);
    // Q4_0: d = 2; byte 0 = 0xF0 → element 0 is (0 − 8)·2, element 16 is (15 − 8)·2.
    const q4 = new Uint8Array(18);
    setF16(q4, 0, 2);
    q4[2] = 0xf0;
    const q4v = dequantize('Q4_0', q4, 32);
    expect([q4v[0], q4v[16], q4v[1]]).toEqual([-16, 14, -16]);
    // Q4_K: d = 1, dmin = 0.5; sub-block 0 scale 3 min 2, sub-block 5 scale 0b010001 = 17, min 0b100001 = 33.
    const q4k = new Uint8Array(144);
    setF16(q4k, 0, 1);
    setF16(q4k, 2, 0.5);
    q4k[4 + 0] = 3; // scale 0
    q4k[4 + 4] = 2; // min 0
    q4k[4 + 9] = (17 & 15) | ((33 & 15) << 4); // low bits of scale 5 and min 5
    q4k[4 + 1] |= (17 >> 4) << 6; // high bits of scale 5 ride on scale 1's byte
    q4k[4 + 5] |= (33 >> 4) << 6; // high bits of min 5 ride on min 1's byte
    q4k[16 + 0] = 0x5a; // element 0: low nibble 10; element 32: high nibble 5
    q4k[16 + 64 + 7] = 0xc0; // chunk 2, l = 7: element 128 + 32 + 7 = 167 is in sub-block 5, q = 12
    const q4kv = dequantize('Q4_K', q4k, 256);
    expect(q4kv[0]).toBe(3 * 10 - 0.5 * 2);
    expect(q4kv[167]).toBe(17 * 12 - 0.5 * 33);
    // Q6_K: d = 0.25, scale 0 = −4; element 0: low 4 bits 0xF, high 2 bits 3 → q = 63 − 32 = 31.
    const q6k = new Uint8Array(210);
    setF16(q6k, 208, 0.25);
    q6k[192] = 256 - 4;
    q6k[0] = 0x0f;
    q6k[128] = 3;
    expect(dequantize('Q6_K', q6k, 256)[0]).toBe(0.25 * -4 * 31);
    // Q5_0: d = 0.5; qh bits 0 and 16 give elements 0 and 16 their fifth bit: q = 1 + 16 and 2 + 16.
    const q5 = new Uint8Array(22);
    setF16(q5, 0, 0.5);
    q5[2] = 1; // qh bit 0
    q5[4] = 1; // qh bit 16
    q5[6] = 0x21;
    const q5v = dequantize('Q5_0', q5, 32);
    expect([q5v[0], q5v[16], q5v[1]]).toEqual([0.5 * (17 - 16), 0.5 * (18 - 16), 0.5 * -16]);
    // Q2_K: d = 1, dmin = 0.5; sub-block 3 (elements 48..63) scale 5 min 2; element 50 is bits 2..3 of qs[18] (byte 34) = 3.
    const q2k = new Uint8Array(84);
    setF16(q2k, 80, 1);
    setF16(q2k, 82, 0.5);
    q2k[3] = 0x25;
    q2k[34] = 0b1100;
    expect(dequantize('Q2_K', q2k, 256)[50]).toBe(1 * 5 * 3 - 0.5 * 2);
    // Q3_K: d = 0.25; sub-block 9 (elements 144..159) scale 40: low nibble in byte 96 + 1's high half, top bits 2 in
    // byte 104 + 1 at bits 4..5. Element 150: low bits 3 (qs[32 + 54]) and its hmask bit (byte 22, bit 4) set → q = 3;
    // element 151: low bits 1, hmask bit clear → q = 1 − 4.
    const q3k = new Uint8Array(110);
    setF16(q3k, 108, 0.25);
    q3k[97] = 8 << 4;
    q3k[105] = 2 << 4;
    q3k[32 + 54] = 3;
    q3k[32 + 55] = 1;
    q3k[22] = 1 << 4;
    const q3kv = dequantize('Q3_K', q3k, 256);
    expect([q3kv[150], q3kv[151]]).toEqual([0.25 * 8 * 3, 0.25 * 8 * -3]);
    // IQ4_XS: d = 0.5; sub-block 3's scale 37 (low nibble 5 in scales_l[1]'s high half, top bits 2 at scales_h bits
    // 6..7); element 96 + 17 is the high nibble of qs[48 + 1] = 15, the level 113.
    const iq4 = new Uint8Array(136);
    setF16(iq4, 0, 0.5);
    iq4[5] = 5 << 4;
    iq4[2] = 2 << 6;
    iq4[8 + 49] = 0xf0;
    expect(dequantize('IQ4_XS', iq4, 256)[113]).toBe(0.5 * (37 - 32) * 113);
    // MXFP4: e = 129 is a scale of 4; levels 7 (6), 15 (−6) and 9 (−0.5).
    const fp4 = new Uint8Array(17);
    fp4[0] = 129;
    fp4[1] = 0xf7;
    fp4[2] = 0x09;
    const fp4v = dequantize('MXFP4', fp4, 32);
    expect([fp4v[0], fp4v[16], fp4v[1]]).toEqual([24, -24, -2]);
  });

  for (const type of QUANTS) {
    it(`${type}: the test writer's quantiser round-trips within its block error`, () => {
      const values = randn(1024, 3, 0.05);
      const back = dequantize(type, quantize(type, values), values.length);
      const bits = QUANT_BITS[type]!;
      let err = 0;
      let amax = 0;
      values.forEach((v, i) => {
        err = Math.max(err, Math.abs(v - back[i]));
        amax = Math.max(amax, Math.abs(v));
      });
      // A step is about (range / 2^bits); K-quants add 6-bit scale rounding.
      expect(err).toBeLessThan((2 * amax) / 2 ** bits);
    });
  }

  it('Q4_0 rows become q4 rows of exactly the same values (whole-block column permutations, odd block counts)', () => {
    for (const blocks of [6, 5, 1]) {
      const bytes = handBuiltBlocks('Q4_0', blocks).subarray(0, 18 * blocks);
      const want = dequantize('Q4_0', bytes, 32 * blocks);
      const order = Int32Array.from({ length: blocks }, (_, g) => (g * 2 + 1) % blocks);
      const rowStride = q4RowStride(32 * blocks);
      for (const blockOf of [undefined, order]) {
        const words = new Uint32Array(q4ItemWords(rowStride)).fill(0xdeadbeef);
        q4_0ToQ4Row(bytes, blocks, words, blockOf);
        const got = dequantizeQ4Item(words, rowStride);
        for (let c = 0; c < rowStride; c++) {
          const g = Math.floor(c / 32);
          const expected = g >= blocks ? 0 : want[32 * (blockOf ? blockOf[g] : g) + (c % 32)];
          if (!Object.is(got[c], expected) && !(got[c] === 0 && expected === 0)) expect.fail(`blocks=${blocks} column ${c}: got ${got[c]}, want ${expected}`);
        }
      }
    }
  });
});
