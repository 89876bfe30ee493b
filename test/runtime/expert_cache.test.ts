import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { GpuContext } from '../../src/gpu/context.ts';
import { RequestError } from '../../src/errors.ts';
import { createNodeContext } from '../../src/hosts/node/gpu.ts';
import { convertModel } from '../../src/model/convert.ts';
import type { Model } from '../../src/model/model.ts';
import { loadModel } from '../../src/model/load.ts';
import { Engine } from '../../src/api/engine.ts';
import type { WeightDtype } from '../../src/gpu/tensor.ts';
import { Session } from '../../src/runtime/session.ts';
import { GpuSampler } from '../../src/runtime/sampler.ts';
import { generateIds } from '../../src/runtime/generation.ts';
import { MtpDrafter, withSpeculation } from '../../src/runtime/speculation.ts';
import type { SamplingOptions } from '../../src/runtime/sampler.ts';
import { scoreIds } from '../../src/runtime/score.ts';
import { FolderSink } from '../../src/storage/file_sink.ts';
import { openModel } from '../../src/storage/locate.ts';
import { fixtureDir, golden } from '../helpers/fixtures.ts';
import { writeCheckpoint } from '../helpers/checkpoint.ts';

// Experts streamed from a packed model through a cache of fewer slots must give exactly the logits of the
// all-resident model: each (token, expert) pair is computed once, with the same arithmetic, in some pass.

let ctx: GpuContext;
const dirs: string[] = [];
beforeAll(async () => {
  ctx = await createNodeContext({ adapter: 'llvmpipe' });
});
afterAll(() => {
  ctx?.destroy();
  dirs.forEach((d) => rmSync(d, { recursive: true, force: true }));
});

async function convertTo(dir: string, dtype: WeightDtype): Promise<string> {
  const out = mkdtempSync(join(tmpdir(), 'qwen-experts-'));
  dirs.push(out);
  await convertModel(ctx, await openModel(dir), { dtype, sink: new FolderSink(out) });
  return out;
}

interface Run {
  ids: number[];
  logprobs: Float32Array;
  stats: ReturnType<Session['expertStats']>;
  model: Model;
}

async function runModel(dir: string, budget: number | undefined, prompt: number[], steps: number): Promise<Run> {
  const model = await loadModel(ctx, await openModel(dir), { dtype: 'f32', expertCacheBytes: budget });
  const session = Session.create(ctx, model, { contextLength: prompt.length + steps + 1, prefillChunk: 32 });
  const sampler = GpuSampler.create(ctx, { vocabSize: model.config.vocabSize, tokenizerSize: model.tokenizerSize });
  try {
    const V = model.config.vocabSize;
    const logprobs = new Float32Array(prompt.length * V);
    await scoreIds(session, prompt, (rows, first) => logprobs.set(rows, first * V));
    const got = await generateIds(session, sampler, { promptIds: prompt, maxTokens: steps, sampling: { temperature: 0 } });
    return { ids: got.ids, logprobs, stats: session.expertStats(), model };
  } finally {
    sampler.destroy();
    session.destroy();
  }
}

function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

describe('expert streaming on the MoE fixture (16 experts, top-4, 8 layers)', () => {
  const g = golden('tiny-qwen35-moe');
  const prompt = g.prompt_ids;
  const steps = g.greedy_ids.length;
  let packedDir: string;
  let reference: Run;
  let perExpert: number;

  beforeAll(async () => {
    packedDir = await convertTo(fixtureDir('tiny-qwen35-moe'), 'f32');
    const packed = await openModel(packedDir);
    perExpert = packed.packed!.tensors.get('layers.0.mlp.experts_gate_up')!.itemBytes + packed.packed!.tensors.get('layers.0.mlp.experts_down')!.itemBytes;
    reference = await runModel(packedDir, undefined, prompt, steps);
    reference.model.destroy();
  }, 300_000);

  it('the all-resident packed model gives the golden greedy ids', () => {
    expect(reference.ids).toEqual(g.greedy_ids);
    expect(reference.stats).toBeUndefined();
  });

  for (const [what, slots] of [
    ['all', 16],
    ['half', 8],
    ['a quarter (the minimum: topk)', 4],
  ] as const) {
    it(`with a budget of ${what} of the experts: the same greedy ids and prefill logprobs, and consistent figures`, async () => {
      const layers = 8;
      const run = await runModel(packedDir, slots * layers * perExpert, prompt, steps);
      try {
        expect(run.ids).toEqual(reference.ids);
        expect(run.ids).toEqual(g.greedy_ids);
        expect(maxAbsDiff(run.logprobs, reference.logprobs)).toBeLessThanOrEqual(1e-6);
        if (slots === 16) {
          expect(run.model.experts).toBeUndefined();
          expect(run.stats).toBeUndefined();
          return;
        }
        expect(run.model.experts!.slots).toBe(slots);
        const s = run.stats!;
        expect(s.misses).toBeGreaterThan(0);
        expect(s.hits).toBeGreaterThan(0);
        expect(s.bytesStreamed).toBe(s.misses * perExpert);
        expect(s.hitRate).toBeCloseTo(s.hits / (s.hits + s.misses), 12);
        // The generation (prefill + decode steps) forwarded every prompt token and all but the last generated one.
        expect(s.tokens).toBe(prompt.length + steps - 1);
        expect(s.stallMsPerToken).toBeCloseTo(s.stallMs / s.tokens, 9);
        // Expert GPU memory: `slots` per layer, not all 16.
        const w = run.model.weights.layers[0].mlp;
        if (w.kind !== 'moe') throw new Error('expected a MoE layer');
        expect(w.expertsGateUp.shape[0]).toBe(slots);
        if (slots === 4) expect(s.extraPasses).toBeGreaterThan(0);
      } finally {
        run.model.destroy();
      }
    }, 300_000);
  }

  it('speculating with the MTP block while experts stream: the ids of decoding step by step, greedy and seeded', async () => {
    const layers = 8;
    const seeded: SamplingOptions = { temperature: 0.9, topK: 20, seed: 5, presencePenalty: 0.5 };
    // 4 slots (topk): a verification's rows need more experts than the slots hold and run a row at a time; 8: together.
    for (const [slots, drafts] of [
      [4, [1, 2, 3]],
      [8, [2]],
    ] as const) {
      const model = await loadModel(ctx, await openModel(packedDir), { dtype: 'f32', expertCacheBytes: slots * layers * perExpert, mtp: true });
      const sampler = GpuSampler.create(ctx, { vocabSize: model.config.vocabSize, tokenizerSize: model.tokenizerSize });
      const contextLength = prompt.length + 40;
      try {
        expect(model.experts!.slots).toBe(slots);
        const plain = Session.create(ctx, model, { contextLength });
        const want = await generateIds(plain, sampler, { promptIds: prompt, maxTokens: 30, sampling: seeded });
        plain.destroy();
        for (const k of drafts) {
          const session = Session.create(ctx, model, { contextLength, verifyRows: k + 1 });
          withSpeculation(session, k, new MtpDrafter(session, k, 0));
          try {
            const greedy = await generateIds(session, sampler, { promptIds: prompt, maxTokens: steps, sampling: { temperature: 0 } });
            expect(greedy.ids).toEqual(g.greedy_ids);
            expect(greedy.speculation!.passes).toBeGreaterThan(0);
            expect(greedy.speculation!.passes).toBeLessThan(steps);
            const stats = session.expertStats()!;
            expect(stats.misses).toBeGreaterThan(0);
            expect(stats.bytesStreamed).toBe(stats.misses * perExpert);
            // The prompt, then every pass's k + 1 rows.
            expect(stats.tokens).toBe(prompt.length + greedy.speculation!.passes * (k + 1));
            const sampled = await generateIds(session, sampler, { promptIds: prompt, maxTokens: 30, sampling: seeded });
            expect(sampled.ids).toEqual(want.ids);
          } finally {
            session.destroy();
          }
        }
      } finally {
        sampler.destroy();
        model.destroy();
      }
    }
  }, 300_000);

  it('continuous batching while experts stream: every request gets the ids and draws it gets alone (matvec and tiled decode rows)', async () => {
    // Prompts of different lengths, so that sequences join and leave the batch at different steps.
    const prompts = [prompt, prompt.slice(0, 5), prompt.slice(40, 90), prompt.slice(7, 8), prompt.slice(100, 131)];
    const sampling = (i: number): SamplingOptions => (i % 2 === 0 ? { temperature: 0 } : { temperature: 0.8, topK: 12, seed: 11 + i });
    const run = (engine: Engine, i: number) =>
      engine.generateIds({ promptIds: prompts[i], maxTokens: 10, sampling: sampling(i), ignoreEos: true }).then((r) => r.ids);
    const alone = await Engine.load(ctx, await openModel(packedDir), { dtype: 'f32', contextLength: 256 });
    const want: number[][] = [];
    try {
      for (const i of prompts.keys()) want.push(await run(alone, i));
    } finally {
      alone.destroy();
    }
    // 4 slots (topk): a step's rows need more experts than the slots hold (matvec rows: one at a time; tiled: in passes).
    for (const [slots, tiledDecode] of [
      [4, false],
      [4, true],
      [8, false],
    ] as const) {
      const engine = await Engine.load(ctx, await openModel(packedDir), {
        dtype: 'f32',
        contextLength: 256,
        maxBatch: 3,
        tiledDecode,
        prefillChunk: 32,
        expertCacheBytes: slots * 8 * perExpert,
      });
      let peak = 0;
      const timer = setInterval(() => (peak = Math.max(peak, engine.gauges().batchSize)), 1);
      try {
        const got = await Promise.all(prompts.map((_, i) => run(engine, i)));
        expect(got).toEqual(want);
        expect(peak).toBeGreaterThan(1);
        const totals = engine.gauges().experts!;
        expect(totals.slots).toBe(slots);
        expect(totals.misses).toBeGreaterThan(0);
      } finally {
        clearInterval(timer);
        engine.destroy();
      }
    }
  }, 300_000);

  it("the engine's gauges sum the expert figures of every generation since it loaded (a server's metrics)", async () => {
    const engine = await Engine.load(ctx, await openModel(packedDir), { dtype: 'f32', expertCacheBytes: 8 * 8 * perExpert, contextLength: 256 });
    try {
      const run = () => engine.generateIds({ promptIds: prompt, maxTokens: 6, sampling: { temperature: 0 } });
      await run();
      const first = engine.expertStats()!;
      expect(first.misses).toBeGreaterThan(0);
      const { hits, misses, bytesStreamed, stallMs } = first;
      expect(engine.gauges().experts).toEqual({ slots: 8, hits, misses, bytesStreamed, stallMs });
      await run();
      const second = engine.expertStats()!;
      const totals = engine.gauges().experts!;
      expect([totals.hits, totals.misses]).toEqual([first.hits + second.hits, first.misses + second.misses]);
      expect(totals.bytesStreamed).toBe(totals.misses * perExpert);
      expect(totals.stallMs).toBeCloseTo(first.stallMs + second.stallMs, 9);
    } finally {
      engine.destroy();
    }
  });

  it("loads the MTP block 'unless streamed' only while every expert is resident", async () => {
    const layers = 8;
    for (const [slots, loaded] of [
      [4, false],
      [16, true],
    ] as const) {
      const model = await loadModel(ctx, await openModel(packedDir), { dtype: 'f32', expertCacheBytes: slots * layers * perExpert, mtp: 'unless streamed' });
      try {
        expect(model.weights.mtp !== undefined).toBe(loaded);
        expect(model.experts !== undefined).toBe(!loaded);
      } finally {
        model.destroy();
      }
    }
  });

  it('refuses a budget below topk experts per layer, and a non-packed checkpoint below all experts, naming expertCacheBytes', async () => {
    await expect(loadModel(ctx, await openModel(packedDir), { dtype: 'f32', expertCacheBytes: 3 * 8 * perExpert })).rejects.toThrow(
      /expertCacheBytes.*num_experts_per_tok = 4/,
    );
    const err = await loadModel(ctx, await openModel(fixtureDir('tiny-qwen35-moe')), { dtype: 'f32', expertCacheBytes: 8 * 8 * perExpert }).catch(
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(RequestError);
    expect(String(err)).toMatch(/packed model/);
  });

  it('a decode step with every expert resident (budget = all) still maps exactly one buffer back', async () => {
    const model = await loadModel(ctx, await openModel(packedDir), { dtype: 'f32', expertCacheBytes: 16 * 8 * perExpert });
    const session = Session.create(ctx, model, { contextLength: 64 });
    const sampler = GpuSampler.create(ctx, { vocabSize: model.config.vocabSize, tokenizerSize: model.tokenizerSize });
    sampler.begin({ temperature: 0 }, prompt.slice(0, 20));
    await session.prefill(prompt.slice(0, 20));
    await session.sample(sampler);
    await session.decode();
    await session.sample(sampler);
    const proto = Object.getPrototypeOf(session.activations.token) as GPUBuffer;
    const original = proto.mapAsync;
    const maps: string[] = [];
    proto.mapAsync = function (this: GPUBuffer, mode: number, offset?: number, size?: number) {
      maps.push(this.label);
      return original.call(this, mode, offset, size);
    };
    try {
      maps.length = 0;
      await session.decode();
      await session.sample(sampler);
      expect(maps).toEqual(['readback']);
    } finally {
      proto.mapAsync = original;
      sampler.destroy();
      session.destroy();
      model.destroy();
    }
  });
});

describe('expert streaming on an unseen shape (40 experts, top-10)', () => {
  it('at a quarter budget gives the all-resident greedy ids and logprobs', async () => {
    const dir = writeCheckpoint({
      seed: 7,
      hidden: 64,
      layers: 4,
      heads: [2, 1],
      linearHeads: [1, 2],
      experts: { count: 40, topk: 10, intermediate: 32, shared: 32 },
      tied: false,
      dtype: 'F32',
    });
    dirs.push(dir);
    const packedDir = await convertTo(dir, 'f16');
    const packed = await openModel(packedDir);
    const perExpert =
      packed.packed!.tensors.get('layers.0.mlp.experts_gate_up')!.itemBytes + packed.packed!.tensors.get('layers.0.mlp.experts_down')!.itemBytes;
    const prompt = Array.from({ length: 70 }, (_, i) => (i * 37 + 11) % 1000);
    const reference = await runModel(packedDir, undefined, prompt, 12);
    reference.model.destroy();
    const quarter = await runModel(packedDir, 10 * 4 * perExpert, prompt, 12);
    try {
      expect(quarter.model.experts!.slots).toBe(10);
      expect(quarter.ids).toEqual(reference.ids);
      expect(maxAbsDiff(quarter.logprobs, reference.logprobs)).toBeLessThanOrEqual(1e-6);
      expect(quarter.stats!.bytesStreamed).toBe(quarter.stats!.misses * perExpert);
    } finally {
      quarter.model.destroy();
    }
  }, 300_000);
});
