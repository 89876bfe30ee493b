import { expect, it } from 'vitest';
import type { Dispatch, GpuContext } from '../../src/gpu/context.ts';
import {
  SAMPLE_BLOCK,
  SAMPLE_CANDIDATES,
  SAMPLE_LEVELS,
  SAMPLE_RESULT_ROWS,
  SAMPLE_RESULT_WORDS,
  type SampleOptionValues,
  type SampleScratch,
  createSampleScratch,
  sample,
  sampleLevels,
  samplePick,
  samplePrepare,
  sampleSearch,
  sampleUncount,
  writeDropped,
  writeSampleOptions,
} from '../../src/kernels/sample.ts';
import { keepMask, logSoftmax, penalize, scaleLogits, thresholds, uncount } from '../../src/reference/sample.ts';
import { describeOnAdapters, readF32, readU32, upload } from '../helpers/gpu.ts';
import { randn, rng } from '../helpers/random.ts';
import { expectClose } from '../helpers/compare.ts';

const OFF: SampleOptionValues = {
  greedy: 0,
  temperature: 1,
  top_k: 0,
  top_p: 1,
  min_p: 0,
  repetition: 1,
  presence: 0,
  frequency: 0,
  seed: 1,
  logprobs: 0,
};

/** The kernels' order-preserving key of an f32 (−0 as +0). */
function keyOf(v: number): number {
  const u = new Uint32Array(Float32Array.of(v === 0 ? 0 : v).buffer)[0];
  return u >= 0x80000000 ? ~u >>> 0 : (u | 0x80000000) >>> 0;
}

/** Logits on a grid of 1/8 (so many ids tie) in [-6, 6]. */
function tiedLogits(n: number, seed: number): Float32Array {
  const r = rng(seed);
  return Float32Array.from({ length: n }, () => Math.round((r() * 12 - 6) * 8) / 8);
}

describeOnAdapters('sample', (ctx) => {
  async function run(c: GpuContext, s: SampleScratch, logits: GPUBuffer, o: SampleOptionValues, out = c.storage('out', 16)) {
    writeSampleOptions(c, s, o);
    c.run(await sample(c, { logits, out, scratch: s, levels: sampleLevels(o) }));
    return out;
  }

  it('penalties and temperature change exactly the ids they should (z vs the reference)', async () => {
    const c = ctx();
    const vocab = 3000;
    const n = 2900;
    const s = createSampleScratch(c, vocab, n);
    const raw = randn(vocab, 11, 3);
    raw[5] = 0; // repetition leaves a zero logit at zero
    const logits = upload(c, raw);
    const prompt = [5, 7, 100, 1500, 2899, 7];
    const forced = [9, 9, 2000];
    const sampled = new Map([
      [7, 2],
      [9, 1],
      [31, 3],
      [2048, 1],
    ]);
    const seen = new Uint32Array(n);
    for (const id of prompt) seen[id] = 0x80000000;
    for (const id of forced) seen[id] += 1;
    const counts = new Uint32Array(n);
    for (const [id, k] of sampled) counts[id] = k;
    c.write(s.seen, 0, seen);
    const generated = [...forced, ...[...sampled].flatMap(([id, k]) => Array<number>(k).fill(id))];
    const touched = new Set([...prompt, ...generated]);
    for (const o of [
      { repetitionPenalty: 1.7 },
      { presencePenalty: 0.75 },
      { frequencyPenalty: 0.4 },
      { repetitionPenalty: 1.3, presencePenalty: -0.5, frequencyPenalty: 0.25, temperature: 0.7 },
    ]) {
      const T = o.temperature ?? 1;
      c.write(s.counts, 0, counts); // each run's pick counts its token
      await run(c, s, logits, {
        ...OFF,
        temperature: T,
        repetition: o.repetitionPenalty ?? 1,
        presence: o.presencePenalty ?? 0,
        frequency: o.frequencyPenalty ?? 0,
      });
      const z = await readF32(c, s.z, n);
      const want = scaleLogits(penalize(raw, n, o, prompt, generated), T);
      expectClose(z, want, 1e-6, 1e-6, JSON.stringify(o));
      // Only seen ids moved; which ones depends on the penalty kind.
      const moved = [...touched].filter((i) => Math.abs(want[i] - raw[i] / T) > 1e-6);
      const expected = o.repetitionPenalty ? [...touched].filter((i) => raw[i] !== 0) : [...new Set(generated)];
      expect(
        moved.sort((a, b) => a - b),
        JSON.stringify(o),
      ).toEqual(expected.sort((a, b) => a - b));
      for (let i = 0; i < n; i++) if (!touched.has(i)) expect(Math.abs(z[i] - raw[i] / T)).toBeLessThanOrEqual(1e-6 * Math.abs(raw[i]));
    }
  });

  it('top-k and top-p thresholds are exact, ties kept, on several blocks', async () => {
    const c = ctx();
    const n = 5 * SAMPLE_BLOCK - 300;
    const s = createSampleScratch(c, n + 8, n);
    const raw = tiedLogits(n + 8, 3);
    const logits = upload(c, raw);
    const z = Float64Array.from(raw.subarray(0, n));
    const sorted = [...z].sort((a, b) => b - a);
    // A k whose k-th value is tied with its neighbours; a k on a group's first member; k = n - 1.
    const tiedK = sorted.findIndex((v, i) => i > 40 && v === sorted[i - 1] && v === sorted[i + 1]) + 1;
    for (const o of [
      { topK: 1 },
      { topK: tiedK },
      { topK: 200 },
      { topK: n - 1 },
      { topP: 0.5 },
      { topP: 0.9 },
      { topP: 0.999 },
      { topP: 1e-6 },
      { topK: 300, topP: 0.6 },
      { topK: tiedK, topP: 0.95, minP: 0.01 },
      { minP: 0.3 },
      {},
    ]) {
      const label = JSON.stringify(o);
      await run(c, s, logits, { ...OFF, top_k: o.topK ?? 0, top_p: o.topP ?? 1, min_p: o.minP ?? 0 });
      const state = await readU32(c, s.state, 6);
      const want = thresholds(z, o);
      expect(state[4], `${label} top-k key`).toBe(want.topK === undefined ? 0 : keyOf(want.topK));
      expect(state[5], `${label} top-p key`).toBe(want.topP === undefined ? 0 : keyOf(want.topP));
      // Each block's surviving mass (level 16) against the reference's kept ids.
      const keep = keepMask(z, o);
      const m = sorted[0];
      const blockMass = Array.from({ length: s.blocks }, (_, g) => {
        let t = 0;
        for (let i = g * SAMPLE_BLOCK; i < Math.min(n, (g + 1) * SAMPLE_BLOCK); i++) if (keep[i]) t += Math.exp(z[i] - m);
        return t;
      });
      const part = await readF32(c, s.part, s.blocks * SAMPLE_CANDIDATES);
      expectClose(
        Array.from({ length: s.blocks }, (_, g) => part[g * SAMPLE_CANDIDATES]),
        blockMass,
        1e-6,
        1e-5,
        `${label} survivor mass`,
      );
    }
  });

  it('greedy on 248,320 rows: argmax over ids < tokenizer size, padding never chosen, ties to the lowest id; logprobs', async () => {
    const c = ctx();
    const vocab = 248320;
    const n = 248077;
    const s = createSampleScratch(c, vocab, n);
    const raw = randn(vocab, 21, 4);
    raw[n + 3] = 1000; // padding row larger than everything
    // Six equal maxima: the lowest, 12345, shares a block and an invocation with 12345 + 96 and a lane with 12345 + 1024.
    for (const i of [200001, 77777, 12345 + 1024, 99999, 12345 + 96]) raw[i] = 40;
    raw[12345] = 40;
    const logits = upload(c, raw);
    const out = await run(c, s, logits, { ...OFF, greedy: 1, logprobs: 5 });
    expect((await readU32(c, out, 1))[0]).toBe(12345);
    const result = await c.read(s.result, 0, 48);
    const u = new Uint32Array(result);
    const f = new Float32Array(result);
    const lp = logSoftmax(Float64Array.from(raw.subarray(0, n)));
    expect(u[0]).toBe(12345);
    expect(f[1]).toBeCloseTo(lp[12345], 4);
    expect(Array.from({ length: 5 }, (_, k) => u[2 + 2 * k])).toEqual([12345, 12345 + 96, 12345 + 1024, 77777, 99999]);
    expectClose(
      Array.from({ length: 5 }, (_, k) => f[3 + 2 * k]),
      Array(5).fill(lp[12345]),
      1e-4,
      1e-5,
    );
  });

  it('248,320 rows: top-k exact, top-p within f32 summation error, survivors and draw in range', async () => {
    const c = ctx();
    const vocab = 248320;
    const n = 248077;
    const s = createSampleScratch(c, vocab, n);
    const raw = randn(vocab, 22, 2.5);
    raw.fill(500, n); // padding
    const logits = upload(c, raw);
    const z = Float64Array.from(raw.subarray(0, n));
    const m = z.reduce((a, b) => Math.max(a, b), -Infinity);
    for (const o of [{ topK: 50 }, { topP: 0.9 }, { topK: 5000, topP: 0.8, minP: 0.02 }, { topK: n - 1 }]) {
      const label = JSON.stringify(o);
      const out = await run(c, s, logits, { ...OFF, top_k: o.topK ?? 0, top_p: o.topP ?? 1, min_p: o.minP ?? 0, seed: 5 });
      const state = await readU32(c, s.state, 6);
      const want = thresholds(z, o);
      expect(state[4], label).toBe(want.topK === undefined ? 0 : keyOf(want.topK));
      if (o.topP) {
        // The GPU's threshold t: the survivors of top-k strictly above t hold < topP of their mass, those ≥ t hold ≥ topP.
        const zs = await readF32(c, s.z, n);
        const t = zs[[...zs.keys()].find((i) => keyOf(zs[i]) === state[5])!];
        const floor = want.topK ?? -Infinity;
        let total = 0;
        let above = 0;
        let atOrAbove = 0;
        for (const v of z) {
          if (v < floor) continue;
          const e = Math.exp(v - m);
          total += e;
          if (v > t) above += e;
          if (v >= t) atOrAbove += e;
        }
        expect(above / total, label).toBeLessThan(o.topP * (1 + 1e-5));
        expect(atOrAbove / total, label).toBeGreaterThanOrEqual(o.topP * (1 - 1e-5));
      }
      const id = (await readU32(c, out, 1))[0];
      expect(id, label).toBeLessThan(n);
      expect(keepMask(z, o)[id], `${label}: drew ${id}, which the filters remove`).toBe(1);
    }
  });

  it('logprobs: the top n over all blocks by (logprob desc, id asc), and the chosen token', async () => {
    const c = ctx();
    const n = 3 * SAMPLE_BLOCK + 17;
    const s = createSampleScratch(c, n, n);
    const raw = tiedLogits(n, 8);
    for (const i of [3, SAMPLE_BLOCK + 1, 2 * SAMPLE_BLOCK + 5, 3 * SAMPLE_BLOCK + 16]) raw[i] = 9; // tied maxima across blocks
    const logits = upload(c, raw);
    const out = await run(c, s, logits, { ...OFF, temperature: 0.7, logprobs: 20, seed: 3 });
    const bytes = await c.read(s.result, 0, 8 + 8 * 20);
    const u = new Uint32Array(bytes);
    const f = new Float32Array(bytes);
    const lp = logSoftmax(scaleLogits(raw, 0.7));
    const order = [...lp.keys()].sort((a, b) => lp[b] - lp[a] || a - b).slice(0, 20);
    expect(Array.from({ length: 20 }, (_, k) => u[2 + 2 * k])).toEqual(order);
    expectClose(
      Array.from({ length: 20 }, (_, k) => f[3 + 2 * k]),
      order.map((i) => lp[i]),
      1e-5,
      1e-5,
    );
    const id = (await readU32(c, out, 1))[0];
    expect(u[0]).toBe(id);
    expect(f[1]).toBeCloseTo(lp[id], 5);
  });

  it('picks into result rows of their own: each row its own id and logprobs, counted one after the other', async () => {
    const c = ctx();
    const n = SAMPLE_BLOCK + 40;
    const s = createSampleScratch(c, n, n);
    const rows = Array.from({ length: SAMPLE_RESULT_ROWS }, (_, r) => tiedLogits(n, 30 + r));
    const logits = upload(c, Float32Array.from(rows.flatMap((r) => Array.from(r))));
    const out = c.storage('out', 4 * SAMPLE_RESULT_ROWS);
    const o = { ...OFF, greedy: 1, logprobs: 3, presence: 2.5 };
    writeSampleOptions(c, s, o);
    const dispatches: Dispatch[] = [];
    for (let r = 0; r < SAMPLE_RESULT_ROWS; r++)
      dispatches.push(...(await sample(c, { logits, out, scratch: s, levels: sampleLevels(o), logitsRow: r, outRow: r, resultRow: r })));
    c.run(dispatches);
    const bytes = await c.read(s.result, 0, SAMPLE_RESULT_ROWS * SAMPLE_RESULT_WORDS * 4);
    const ids = await readU32(c, out, SAMPLE_RESULT_ROWS);
    const generated: number[] = [];
    for (let r = 0; r < SAMPLE_RESULT_ROWS; r++) {
      // Row r is penalised by the picks of the rows before it.
      const z = penalize(rows[r], n, { presencePenalty: 2.5 }, [], generated);
      const lp = logSoftmax(z);
      const want = [...lp.keys()].sort((a, b) => lp[b] - lp[a] || a - b);
      const u = new Uint32Array(bytes, r * SAMPLE_RESULT_WORDS * 4, 8);
      const f = new Float32Array(bytes, r * SAMPLE_RESULT_WORDS * 4, 8);
      expect([u[0], ids[r]]).toEqual([want[0], want[0]]);
      expect(f[1]).toBeCloseTo(lp[want[0]], 5);
      expect([u[2], u[4], u[6]]).toEqual(want.slice(0, 3));
      generated.push(want[0]);
    }
    // Every pick is counted.
    const counts = await readU32(c, s.counts, n);
    expect(Array.from(counts).reduce((a, b) => a + b, 0)).toBe(SAMPLE_RESULT_ROWS);
  });

  it('sample_uncount takes back one count per dropped id (repeats too, never below 0), as the reference', async () => {
    const c = ctx();
    const n = 300;
    const s = createSampleScratch(c, n, n);
    const before = Uint32Array.from({ length: n }, (_, i) => (i * 7) % 4);
    for (const dropped of [[], [5], [1, 1, 2], [0, 4, 8, 299], [3, 3, 3, 3]]) {
      c.write(s.counts, 0, before);
      writeDropped(c, s, dropped);
      c.run([await sampleUncount(c, { scratch: s })]);
      expect(Array.from(await readU32(c, s.counts, n)), dropped.join(',')).toEqual(Array.from(uncount(before, dropped)));
    }
    expect(() => writeDropped(c, s, [1, 2, 3, 4, 5])).toThrow(/5 dropped picks/);
    expect(() => writeDropped(c, s, [300])).toThrow(/dropped id 300/);
  });

  it('checks its arguments', async () => {
    const c = ctx();
    expect(() => createSampleScratch(c, 10, 11)).toThrow(/sample: n = 11/);
    expect(() => createSampleScratch(c, 10, 0)).toThrow(/sample: n = 0/);
    const s = createSampleScratch(c, 100, 90);
    expect(() => writeSampleOptions(c, s, { ...OFF, temperature: 0 })).toThrow(/temperature/);
    expect(() => writeSampleOptions(c, s, { ...OFF, top_k: 90 })).toThrow(/top_k/);
    expect(() => writeSampleOptions(c, s, { ...OFF, logprobs: 21 })).toThrow(/logprobs/);
    expect(() => sampleSearch(c, { scratch: s, level: 17 })).toThrow(/level = 17/);
    expect(() => samplePrepare(c, { logits: c.storage('small', 300), scratch: s })).toThrow(/logits/);
    expect(() => samplePick(c, { scratch: s, out: s.counts })).toThrow(/out must not be a scratch buffer/);
    expect(() => samplePick(c, { scratch: s, out: c.storage('o', 16), resultRow: SAMPLE_RESULT_ROWS })).toThrow(/resultRow/);
    await expect(sample(c, { logits: upload(c, new Float32Array(100)), out: c.storage('o', 16), scratch: s, levels: [3, 1] })).rejects.toThrow(/rise/);
    expect(sampleLevels({ ...OFF, greedy: 1, top_k: 5 })).toEqual([]);
    expect(sampleLevels({ ...OFF, top_p: 0.9 })).toEqual([8, 9, 10, 11, 12, 13, 14, 15, 16]);
    expect(sampleLevels({ ...OFF, top_k: 5 })).toEqual([...Array(SAMPLE_LEVELS).keys(), 16]);
  });

  it('levels of a filter that is off may run: they change nothing', async () => {
    const c = ctx();
    const n = 2 * SAMPLE_BLOCK + 9;
    const s = createSampleScratch(c, n, n);
    const raw = tiedLogits(n, 12);
    const logits = upload(c, raw);
    const out = c.storage('out', 16);
    for (const o of [{ top_k: 77 }, { top_p: 0.7 }]) {
      const values = { ...OFF, ...o, seed: 9 };
      writeSampleOptions(c, s, values);
      c.run(await sample(c, { logits, out, scratch: s, levels: sampleLevels(values) }));
      const some = await readU32(c, s.state, 6);
      const idSome = (await readU32(c, out, 1))[0];
      c.write(s.state, 0, Uint32Array.of(0)); // same RNG step
      c.run(await sample(c, { logits, out, scratch: s, levels: [...Array(2 * SAMPLE_LEVELS + 1).keys()] }));
      const all = await readU32(c, s.state, 6);
      expect([all[4], all[5]]).toEqual([some[4], some[5]]);
      expect((await readU32(c, out, 1))[0]).toBe(idSome);
      c.write(s.state, 0, Uint32Array.of(0));
    }
  });
});
