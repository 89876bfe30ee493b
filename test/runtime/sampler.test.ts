import { chiSquare, chiSquareSurvival } from '../helpers/chi_square.ts';
import { describe, expect, it } from 'vitest';
import type { GpuContext } from '../../src/gpu/context.ts';
import { GpuSampler, type SamplingOptions } from '../../src/runtime/sampler.ts';
import { keepMask, penalize, sampleStep, sampleUniform, samplingProbs, scaleLogits } from '../../src/reference/sample.ts';
import { describeOnAdapters, readF32, readU32, upload } from '../helpers/gpu.ts';
import { randn } from '../helpers/random.ts';
import { expectClose } from '../helpers/compare.ts';

describe('chi-square survival function', () => {
  it('matches tabulated quantiles', () => {
    expect(chiSquareSurvival(3.841459, 1)).toBeCloseTo(0.05, 5);
    expect(chiSquareSurvival(11.344867, 3)).toBeCloseTo(0.01, 5);
    expect(chiSquareSurvival(18.307038, 10)).toBeCloseTo(0.05, 5);
    expect(chiSquareSurvival(124.342113, 100)).toBeCloseTo(0.05, 5);
    expect(chiSquareSurvival(0.0001, 4)).toBeCloseTo(1, 5);
  });
  it('rejects a wrong distribution', () => {
    const probs = [0.25, 0.25, 0.25, 0.25];
    expect(chiSquare([1250, 1250, 1250, 1250], probs, 5000).p).toBeCloseTo(1, 6);
    expect(chiSquare([1350, 1200, 1200, 1250], probs, 5000).p).toBeLessThan(0.01);
  });
});

// ---- GpuSampler ----

const VOCAB = 64;
const N = 60;

/** Fixed logits for the statistical tests; the padding rows (≥ N) are the largest. */
function smallLogits(): Float32Array {
  const x = randn(VOCAB, 4242, 1.3);
  x.fill(30, N);
  return x;
}

/** Runs `steps` sampling steps in one submit; returns each step's result words (the first `words` of them). */
async function runSteps(c: GpuContext, s: GpuSampler, logits: GPUBuffer, out: GPUBuffer, steps: number, words = 1): Promise<Uint32Array> {
  const plan = await s.dispatches(logits, out);
  const collect = c.storage('collect', steps * words * 4);
  const encoder = c.device.createCommandEncoder();
  for (let i = 0; i < steps; i++) {
    const pass = encoder.beginComputePass();
    c.encode(pass, plan);
    pass.end();
    encoder.copyBufferToBuffer(s.result, 0, collect, i * words * 4, words * 4);
  }
  c.device.queue.submit([encoder.finish()]);
  const got = await readU32(c, collect, steps * words);
  collect.destroy();
  return got;
}

describeOnAdapters('GpuSampler', (ctx) => {
  const settings: { name: string; o: SamplingOptions }[] = [
    { name: 'T=1', o: { temperature: 1 } },
    { name: 'T=0.7 + top-k 10', o: { temperature: 0.7, topK: 10 } },
    { name: 'top-p 0.8', o: { topP: 0.8 } },
    { name: 'min-p 0.05', o: { minP: 0.05 } },
    { name: 'all together', o: { temperature: 0.8, topK: 20, topP: 0.9, minP: 0.03 } },
  ];
  for (const { name, o } of settings) {
    it(`chi-square of 5,000 draws: ${name}; filtered ids and padding never drawn`, async () => {
      const c = ctx();
      const raw = smallLogits();
      const s = GpuSampler.create(c, { vocabSize: VOCAB, tokenizerSize: N });
      const logits = upload(c, raw);
      s.begin({ ...o, seed: 1234 }, []);
      const plan = await s.dispatches(logits, c.storage('out', 16));
      const draws = 5000;
      c.run(Array.from({ length: draws }, () => plan).flat(), 'draws');
      // With no penalties the counts are the histogram; they sum to the draws only if no padding id was drawn.
      const counts = await readU32(c, s.scratch.counts, N);
      const z = scaleLogits(raw.subarray(0, N), o.temperature ?? 1);
      const probs = samplingProbs(z, o);
      // The filters' boundaries are not within f32 rounding of a threshold (else the test would test rounding).
      for (const f of [1 - 1e-5, 1 + 1e-5])
        expect(
          keepMask(
            z.map((v) => v * f),
            o,
          ),
        ).toEqual(keepMask(z, o));
      expect(counts.reduce((a, b) => a + b, 0)).toBe(draws);
      const filtered = [...probs.keys()].filter((i) => probs[i] === 0);
      expect(
        filtered.filter((i) => counts[i] > 0),
        'filtered ids drawn',
      ).toEqual([]);
      if (o.topK || o.topP || o.minP) expect(filtered.length).toBeGreaterThan(10);
      const test = chiSquare(counts, probs, draws);
      expect(test.p, `chi2 = ${test.stat.toFixed(1)} on ${test.dof} dof`).toBeGreaterThan(0.001);
      s.destroy();
    });
  }

  it('same seed → same tokens, other seed → others; the sequence is the reference one (RNG and inverse CDF)', async () => {
    const c = ctx();
    const raw = smallLogits();
    const s = GpuSampler.create(c, { vocabSize: VOCAB, tokenizerSize: N });
    const logits = upload(c, raw);
    const out = c.storage('out', 16);
    const o: SamplingOptions = { temperature: 0.9, topK: 30, topP: 0.95, seed: 77 };
    const steps = 100;
    s.begin(o, []);
    const a = await runSteps(c, s, logits, out, steps);
    s.begin(o, []);
    const b = await runSteps(c, s, logits, out, steps);
    s.begin({ ...o, seed: 78 }, []);
    const other = await runSteps(c, s, logits, out, steps);
    expect(Array.from(b)).toEqual(Array.from(a));
    expect(Array.from(other)).not.toEqual(Array.from(a));
    const want = Array.from({ length: steps }, (_, k) => sampleStep(raw, N, o, [], [], k).id);
    expect(Array.from(a)).toEqual(want);
    expect(new Set(a).size).toBeGreaterThan(5);
    expect(sampleUniform(77, 0)).not.toBe(sampleUniform(78, 0));
    s.destroy();
  });

  it('penalties: z of seen vs unseen ids and every drawn token match the reference; forced tokens count as generated', async () => {
    const c = ctx();
    const raw = smallLogits();
    const s = GpuSampler.create(c, { vocabSize: VOCAB, tokenizerSize: N });
    const logits = upload(c, raw);
    const out = c.storage('out', 16);
    const prompt = [3, 4, 4, 17, 59, 62]; // 62 is a padding id: accepted, never a candidate
    for (const o of [
      { repetitionPenalty: 1.8, seed: 5 },
      { presencePenalty: 1.5, seed: 6 },
      { frequencyPenalty: 0.9, seed: 7 },
      { repetitionPenalty: 1.2, presencePenalty: 0.4, frequencyPenalty: 0.6, temperature: 0.8, topK: 25, seed: 8 },
    ] as SamplingOptions[]) {
      const label = JSON.stringify(o);
      s.begin(o, prompt);
      const first = Array.from(await runSteps(c, s, logits, out, 12));
      s.markGenerated([first[0], 40, 40]);
      const second = Array.from(await runSteps(c, s, logits, out, 12));
      // Replay on the reference: the forced ids join the generated ones between the two runs.
      const generated: number[] = [];
      const want: number[] = [];
      for (let k = 0; k < 24; k++) {
        if (k === 12) generated.push(first[0], 40, 40);
        const id = sampleStep(raw, N, o, prompt, generated, k).id;
        want.push(id);
        generated.push(id);
      }
      expect([...first, ...second], label).toEqual(want);
      // z of the last step: penalties over the prompt and the 23 tokens before it (+ the forced ones).
      const z = await readF32(c, s.scratch.z, N);
      const before = generated.slice(0, -1);
      const wantZ = scaleLogits(penalize(raw, N, o, prompt, before), o.temperature ?? 1);
      expectClose(z, wantZ, 1e-6, 1e-6, label);
      const plain = scaleLogits(raw.subarray(0, N), o.temperature ?? 1);
      const changed = [...wantZ.keys()].filter((i) => Math.abs(wantZ[i] - plain[i]) > 1e-6);
      const seen = new Set(o.repetitionPenalty ? [...prompt, ...before] : before);
      expect(changed, label).toEqual([...seen].filter((i) => i < N).sort((x, y) => x - y));
    }
    s.destroy();
  });

  it('greedy (temperature 0) is the argmax over ids < tokenizer size, ties to the lowest; with logprobs', async () => {
    const c = ctx();
    const raw = smallLogits();
    raw[8] = 6;
    raw[40] = 6; // tied with 8, and handled by the same invocation
    const s = GpuSampler.create(c, { vocabSize: VOCAB, tokenizerSize: N });
    const logits = upload(c, raw);
    const out = c.storage('out', 16);
    s.begin({ temperature: 0, logprobs: 3, topK: 3, topP: 0.5 }, [8]);
    expect(s.resultBytes).toBe(32);
    const plan = await s.dispatches(logits, out);
    expect(plan.length).toBe(2); // greedy needs no search pass
    c.run(plan);
    const got = s.parse(await c.read(s.result, 0, s.resultBytes));
    const want = sampleStep(raw, N, { temperature: 0, logprobs: 3 }, [], [], 0);
    expect(got.id).toBe(8);
    expect(got.id).toBe(want.id);
    expect((await readU32(c, out, 1))[0]).toBe(8);
    expect(got.top!.map((t) => t.id)).toEqual([8, 40, want.top[2].id]);
    expectClose([got.logprob!, ...got.top!.map((t) => t.logprob)], [want.logprob, ...want.top.map((t) => t.logprob)], 1e-5, 1e-5);
    // The repetition penalty applies to greedy too: 8 was in the prompt.
    s.begin({ temperature: 0, repetitionPenalty: 2 }, [8]);
    expect(s.resultBytes).toBe(4);
    c.run(await s.dispatches(logits, out));
    expect(s.parse(await c.read(s.result, 0, s.resultBytes))).toEqual({ id: 40 });
    s.destroy();
  });

  it('logprobs are log_softmax of the penalised, scaled logits before filtering', async () => {
    const c = ctx();
    const raw = smallLogits();
    const s = GpuSampler.create(c, { vocabSize: VOCAB, tokenizerSize: N });
    const logits = upload(c, raw);
    const o: SamplingOptions = { temperature: 0.6, topK: 4, repetitionPenalty: 1.5, logprobs: 20, seed: 3 };
    s.begin(o, [1, 2, 3]);
    c.run(await s.dispatches(logits, c.storage('out', 16)));
    const got = s.parse(await c.read(s.result, 0, s.resultBytes));
    const want = sampleStep(raw, N, o, [1, 2, 3], [], 0);
    expect(got.id).toBe(want.id);
    expect(got.top!.map((t) => t.id)).toEqual(want.top.map((t) => t.id));
    expectClose([got.logprob!, ...got.top!.map((t) => t.logprob)], [want.logprob, ...want.top.map((t) => t.logprob)], 1e-5, 1e-5);
    s.destroy();
  });

  it('248,320 rows: sequences match the reference with filters on; with none, every draw brackets its uniform', async () => {
    const c = ctx();
    const vocab = 248320;
    const n = 248077;
    const raw = randn(vocab, 99, 3);
    raw.fill(100, n);
    const s = GpuSampler.create(c, { vocabSize: vocab, tokenizerSize: n });
    const logits = upload(c, raw);
    const out = c.storage('out', 16);
    const o: SamplingOptions = { temperature: 0.8, topK: 40, topP: 0.95, minP: 0.01, seed: 11, repetitionPenalty: 1.3 };
    s.begin(o, [0, 1000, 248000]);
    const ids = Array.from(await runSteps(c, s, logits, out, 6));
    const generated: number[] = [];
    for (let k = 0; k < 6; k++) {
      const id = sampleStep(raw, n, o, [0, 1000, 248000], generated, k).id;
      generated.push(id);
    }
    expect(ids).toEqual(generated);

    s.begin({ seed: 12 }, []);
    const free = Array.from(await runSteps(c, s, logits, out, 3));
    const z = Float64Array.from(raw.subarray(0, n));
    const m = z.reduce((a, b) => Math.max(a, b), -Infinity);
    const w = z.map((v) => Math.exp(v - m));
    const total = w.reduce((a, b) => a + b, 0);
    free.forEach((id, k) => {
      expect(id).toBeLessThan(n);
      let below = 0;
      for (let i = 0; i < id; i++) below += w[i];
      const u = sampleUniform(12, k);
      expect(below / total).toBeLessThanOrEqual(u + 1e-5);
      expect((below + w[id]) / total).toBeGreaterThanOrEqual(u - 1e-5);
    });
    s.destroy();
  });

  it('validates options and arguments with clear errors; dispatches are cached', async () => {
    const c = ctx();
    const s = GpuSampler.create(c, { vocabSize: VOCAB, tokenizerSize: N });
    const logits = upload(c, smallLogits());
    const out = c.storage('out', 16);
    await expect(s.dispatches(logits, out)).rejects.toThrow(/sampler: dispatches before begin/);
    expect(() => s.markGenerated([1])).toThrow(/before begin/);
    for (const [o, re] of [
      [{ temperature: -0.1 }, /temperature: -0.1 must be ≥ 0/],
      [{ temperature: NaN }, /temperature: NaN must be a finite number/],
      [{ topP: 0 }, /topP: 0 must be in \(0, 1\]/],
      [{ topP: 1.5 }, /topP: 1.5/],
      [{ minP: -0.1 }, /minP: -0.1/],
      [{ minP: 2 }, /minP: 2/],
      [{ topK: -1 }, /topK: -1/],
      [{ topK: 2.5 }, /topK: 2.5/],
      [{ repetitionPenalty: 0 }, /repetitionPenalty: 0/],
      [{ presencePenalty: Infinity }, /presencePenalty: Infinity/],
      [{ seed: 1.5 }, /seed: 1.5/],
      [{ logprobs: 21 }, /logprobs: 21 must be an integer in \[0, 20\]/],
    ] as [SamplingOptions, RegExp][]) {
      expect(() => s.begin(o, []), JSON.stringify(o)).toThrow(re);
    }
    expect(() => s.begin({}, [VOCAB])).toThrow(/promptIds\[0\] = 64 is outside the vocabulary/);
    expect(() => GpuSampler.create(c, { vocabSize: 10, tokenizerSize: 11 })).toThrow(/tokenizerSize = 11/);
    s.begin({ topK: 100 }, []); // top-k past the vocabulary keeps everything
    const a = await s.dispatches(logits, out);
    expect(await s.dispatches(logits, out)).toBe(a);
    expect(a.length).toBe(3);
    expect(await s.dispatches(logits, c.storage('other', 16))).not.toBe(a);
    s.begin({ topK: 5 }, []);
    expect((await s.dispatches(logits, out)).length).toBe(3 + 8);
    s.begin({ topK: 100, seed: 3 }, []);
    expect(await s.dispatches(logits, out)).toBe(a);
    expect(() => s.markGenerated([VOCAB + 1])).toThrow(/ids\[0\] = 65 is outside the vocabulary/);
    await expect(s.dispatches(c.storage('short', 16), out)).rejects.toThrow(/logits/);
    s.destroy();
  });
});
