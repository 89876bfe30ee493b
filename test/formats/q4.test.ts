import { describe, expect, it } from 'vitest';
import { Q4_MAX_INPUT, dequantizeQ4Item, dequantizeQ4Tensor, q4ItemWords, quantizeQ4Item, quantizeQ4Tensor, roundToQ4 } from '../../src/numeric/q4.ts';
import { bf16BitsToF32, f16BitsToF32, f32ToF16Bits } from '../../src/numeric/half.ts';
import { openSafetensorsCheckpoint } from '../../src/formats/safetensors.ts';
import type { SourceTensor } from '../../src/formats/checkpoint.ts';
import type { Caps } from '../../src/gpu/caps.ts';
import { CapabilityError } from '../../src/errors.ts';
import { itemBytes, planTensorLayout, weightFormat } from '../../src/gpu/tensor.ts';
import { FileSource } from '../../src/storage/file.ts';
import { FIXTURES, fixtureDir } from '../helpers/fixtures.ts';
import { randn, rng } from '../helpers/random.ts';

/** Squared error of plain absmax/7 rounding of one group (f16 scale, q = round(x / scale) in [-7, 7]). */
function baselineError(x: Float32Array, at: number): number {
  let m = 0;
  for (let i = 0; i < 32; i++) m = Math.max(m, Math.abs(x[at + i]));
  const s = f16BitsToF32(f32ToF16Bits(m / 7));
  let err = 0;
  for (let i = 0; i < 32; i++) {
    const q = s === 0 ? 0 : Math.max(-7, Math.min(7, Math.round(x[at + i] / s)));
    err += (x[at + i] - q * s) ** 2;
  }
  return err;
}

/**
 * Quantises rows of `cols` (viewed as a [rows, cols] tensor) and compares every group with the baseline:
 * no group may be worse (beyond f64 rounding); returns the RMS error ratio over the tensor.
 */
function compareWithBaseline(values: Float32Array, cols: number, label: string): number {
  const rows = values.length / cols;
  const padded = Math.ceil(cols / 64) * 64;
  const x = new Float32Array(rows * padded);
  for (let r = 0; r < rows; r++) x.set(values.subarray(r * cols, (r + 1) * cols), r * padded);
  const q = dequantizeQ4Tensor(quantizeQ4Tensor(x, [rows, padded]), [rows, padded]);
  let ours = 0;
  let base = 0;
  for (let g = 0; g < x.length / 32; g++) {
    let e = 0;
    for (let i = 32 * g; i < 32 * g + 32; i++) e += (x[i] - q[i]) ** 2;
    const b = baselineError(x, 32 * g);
    if (e > b * (1 + 1e-9) + 1e-40) expect.fail(`${label}: group ${g} has squared error ${e}, plain absmax/7 ${b}`);
    ours += e;
    base += b;
  }
  return base === 0 ? 0 : Math.sqrt(ours / base);
}

async function readAll(t: SourceTensor): Promise<Float32Array> {
  const cols = t.shape[t.shape.length - 1];
  const rows = t.shape.reduce((a, b) => a * b, 1) / cols;
  const bytes = await t.readRows(0, rows);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return Float32Array.from({ length: rows * cols }, (_, i) =>
    t.dtype === 'f32' ? view.getFloat32(4 * i, true) : (t.dtype === 'f16' ? f16BitsToF32 : bf16BitsToF32)(view.getUint16(2 * i, true)),
  );
}

const caps = (maxStorageBindingBytes: number, maxBufferBytes = 2 ** 40): Caps => ({
  f16: false,
  subgroups: false,
  maxStorageBindingBytes,
  maxBufferBytes,
  maxWorkgroupsPerDim: 65535,
  cpu: false,
  maxInvocationsPerWorkgroup: 256,
  maxWorkgroupStorageBytes: 16384,
  maxStorageBuffersPerStage: 8,
});

describe('q4 format', () => {
  it('stores element 8w+k in bits 4k of nibble word w, then the scales two per word (even group low)', () => {
    // Group g holds exact multiples q * s_g, q spanning [-8, 7]: the m/8 candidate reproduces them with no error.
    const itemStride = 128;
    const scales = [0.125, 2, 2 ** -10, 3];
    const q = (g: number, i: number) => ((i * 5 + g) % 16) - 8;
    const values = Float32Array.from({ length: itemStride }, (_, e) => q(e >> 5, e & 31) * scales[e >> 5]);
    const words = quantizeQ4Item(values, itemStride);
    expect(words.length).toBe(q4ItemWords(itemStride));
    expect(words.length * 4).toBe((itemStride * 9) / 16);
    for (let e = 0; e < itemStride; e++) expect((words[e >> 3] >>> (4 * (e & 7))) & 15).toBe(q(e >> 5, e & 31) + 8);
    for (let g = 0; g < 4; g++) expect(f16BitsToF32((words[16 + (g >> 1)] >>> (16 * (g & 1))) & 0xffff)).toBe(scales[g]);
    expect(dequantizeQ4Item(words, itemStride)).toEqual(values);
  });

  it('dequantises hand-made blocks', () => {
    const words = new Uint32Array(q4ItemWords(64));
    words[0] = 0x76543210; // elements 0..7: nibbles 0..7 → q = -8..-1
    words[7] = 0xf0000000; // element 63: nibble 15 → q = 7
    words[8] = f32ToF16Bits(0.5) | (f32ToF16Bits(-3) << 16);
    const out = dequantizeQ4Item(words, 64);
    expect(Array.from(out.subarray(0, 8))).toEqual([-4, -3.5, -3, -2.5, -2, -1.5, -1, -0.5]);
    expect(out[8]).toBe(-8 * 0.5); // nibble 0 elsewhere
    expect(out[62]).toBe(24);
    expect(out[63]).toBe(-21);
  });

  it('quantises zero, tiny and out-of-range groups predictably', () => {
    const values = new Float32Array(128);
    values.fill(1e-8, 32, 64); // f16(m / 7) is 0: a zero group
    values.fill(1e30, 64, 65); // clamped to 65504 * 7
    values.fill(-3, 65, 96);
    values.fill(0.001, 96, 128);
    const words = quantizeQ4Item(values, 128);
    expect(Array.from(words.subarray(0, 8))).toEqual(new Array(8).fill(0x88888888));
    expect(words[16] & 0xffff).toBe(0);
    expect(words[16] >>> 16).toBe(0);
    const back = dequantizeQ4Item(words, 128);
    expect(back[64]).toBe(Q4_MAX_INPUT);
    expect(back[65]).toBeCloseTo(0, 0);
    expect(Math.abs(back[100] - 0.001)).toBeLessThan(1e-6);
  });

  it('is no worse than absmax/7 on any group of random tensors, and about 10% better on Gaussian ones', () => {
    const r = rng(5);
    const n = 32 * 4096;
    const gauss = randn(n, 1);
    const distributions: Record<string, Float32Array> = {
      gaussian: gauss,
      uniform: Float32Array.from({ length: n }, () => r() * 2 - 1),
      laplace: Float32Array.from({ length: n }, () => (r() < 0.5 ? -1 : 1) * Math.log(Math.max(r(), 1e-12))),
      'gaussian with outliers': gauss.map((v, i) => (i % 97 === 0 ? v * 20 : v)),
      'magnitudes 2^-30 .. 2^16': gauss.map((v, i) => v * 2 ** (((i >> 5) % 47) - 30)),
      'f16-rounded, odd width': Float32Array.from(randn(999 * 33, 2, 0.02), (v) => f16BitsToF32(f32ToF16Bits(v))),
    };
    const ratios: Record<string, number> = {};
    for (const [name, x] of Object.entries(distributions)) ratios[name] = compareWithBaseline(x, name.includes('odd') ? 999 : 256, name);
    for (const ratio of Object.values(ratios)) expect(ratio).toBeLessThan(1);
    expect(ratios.gaussian).toBeLessThan(0.9);
  });

  it('is no worse than absmax/7 on any group of every 2-D+ tensor of both fixtures', async () => {
    let tensors = 0;
    for (const fixture of FIXTURES) {
      const checkpoint = await openSafetensorsCheckpoint(new FileSource(fixtureDir(fixture)));
      for (const t of checkpoint.tensors.values()) {
        if (t.shape.length < 2) continue;
        const ratio = compareWithBaseline(await readAll(t), t.shape[t.shape.length - 1], `${fixture} ${t.name}`);
        expect(ratio, t.name).toBeLessThan(1);
        tensors++;
      }
    }
    expect(tensors).toBeGreaterThan(50);
  });

  it('tensors are their items back to back; round trips keep the shape', () => {
    const shape = [3, 5, 70];
    const values = randn(3 * 5 * 70, 9);
    const words = quantizeQ4Tensor(values, shape);
    const itemStride = 5 * 128;
    for (let e = 0; e < 3; e++) {
      const item = new Float32Array(itemStride);
      for (let r = 0; r < 5; r++) item.set(values.subarray((e * 5 + r) * 70, (e * 5 + r + 1) * 70), r * 128);
      const w = q4ItemWords(itemStride);
      expect(words.subarray(e * w, (e + 1) * w)).toEqual(quantizeQ4Item(item, itemStride));
    }
    const back = roundToQ4(values, shape);
    expect(back.length).toBe(values.length);
    let err = 0;
    for (let i = 0; i < values.length; i++) err = Math.max(err, Math.abs(back[i] - values[i]));
    expect(err).toBeGreaterThan(0);
    expect(err).toBeLessThan(0.5);
  });

  it('rejects bad item strides and lengths', () => {
    expect(() => quantizeQ4Item(new Float32Array(32), 32)).toThrow(/multiple of 64/);
    expect(() => quantizeQ4Item(new Float32Array(64), 128)).toThrow(/needs 128 values/);
    expect(() => dequantizeQ4Item(new Uint32Array(8), 64)).toThrow(/has 9 words/);
    expect(() => quantizeQ4Tensor(new Float32Array(10), [2, 3, 4])).toThrow(/needs 24 values/);
  });
});

describe('q4 tensor layout', () => {
  it('pads rows to 64, sizes items at 9/16 byte per element, and keeps every part within the limit', () => {
    for (const shape of [
      [1000, 100],
      [7, 4100],
      [16, 192, 260],
      [3, 2, 64],
      [50, 1],
    ]) {
      for (const limit of [4096, 10_000, 65_536, 1 << 20, 1000 * 1000 + 4]) {
        let layout;
        try {
          layout = planTensorLayout('t', shape, 'q4', caps(limit));
        } catch (error) {
          expect(error).toBeInstanceOf(CapabilityError);
          expect((shape.length === 3 ? shape[1] : 1) * Math.ceil(shape[shape.length - 1] / 64) * 36).toBeGreaterThan(limit);
          continue;
        }
        expect(layout.rowStride % 64).toBe(0);
        expect(layout.rowStride - shape[shape.length - 1]).toBeLessThan(64);
        expect(layout.itemStride).toBe((shape.length === 3 ? shape[1] : 1) * layout.rowStride);
        expect(layout.itemBytes).toBe((layout.itemStride * 9) / 16);
        expect(layout.itemBytes).toBe(itemBytes('q4', layout.itemStride));
        // Buffers are allocated in multiples of 16 bytes and bound whole.
        expect(Math.ceil((layout.itemsPerPart * layout.itemBytes) / 16) * 16).toBeLessThanOrEqual(limit);
        expect(Math.ceil(((layout.itemsPerPart + 1) * layout.itemBytes) / 16) * 16 > limit || layout.itemsPerPart >= shape[0]).toBe(true);
      }
    }
  });

  it('respects the buffer limit and u32 element indexing too', () => {
    // 10 rows of 36 bytes are 360, but buffers are whole multiples of 16 bytes.
    expect(planTensorLayout('t', [100, 64], 'q4', caps(1 << 20, 360)).itemsPerPart).toBe(9);
    const huge = planTensorLayout('t', [1 << 20, 8192], 'q4', caps(2 ** 40));
    expect(huge.itemsPerPart * huge.itemStride).toBeLessThanOrEqual(2 ** 32 - 1);
  });

  it('gives the kernels the format they are compiled for', () => {
    expect(weightFormat({ dtype: 'q4', itemStride: 640 })).toEqual({ dtype: 'q4', itemStride: 640 });
    expect(weightFormat({ dtype: 'f16', itemStride: 640 })).toEqual({ dtype: 'f16' });
    expect(planTensorLayout('t', [10, 100], 'f16', caps(1 << 20)).rowStride).toBe(104);
  });
});
