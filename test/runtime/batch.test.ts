import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Engine } from '../../src/api/engine.ts';
import type { GpuContext } from '../../src/gpu/context.ts';
import { createNodeContext } from '../../src/hosts/node/gpu.ts';
import { openModel } from '../../src/storage/locate.ts';
import type { SamplingOptions } from '../../src/runtime/sampler.ts';
import { FIXTURES, fixtureDir, golden } from '../helpers/fixtures.ts';
import { TEST_ADAPTERS } from '../helpers/gpu.ts';

/**
 * Continuous batching (runtime/batch.ts) against one sequence at a time, through the Engine: every sequence of a
 * batch gets exactly the ids it gets alone — greedy and seeded, prompts of different lengths, sequences that join
 * while others decode, prompts long enough to be prefilled in several chunks between decode steps, and more
 * requests than slots (the rest wait for a slot).
 */
const adapter = TEST_ADAPTERS[0];

/** Prompts of different lengths from the fixture's own prompt (ids below its tokenizer size). */
function prompts(name: (typeof FIXTURES)[number], count: number): number[][] {
  const base = golden(name).prompt_ids;
  return Array.from({ length: count }, (_, i) => {
    const length = 1 + ((i * 7) % (base.length + 20));
    return Array.from({ length }, (_, j) => base[(i + j) % base.length]);
  });
}

/** Polls `done` every millisecond until it holds. */
async function until(done: () => boolean): Promise<void> {
  while (!done()) await new Promise((next) => setTimeout(next, 1));
}

for (const name of FIXTURES) {
  describe(`${name}: batched sequences equal sequences alone`, () => {
    let ctx: GpuContext;
    let alone: Engine;
    let batched: Engine;
    beforeAll(async () => {
      ctx = await createNodeContext({ adapter: adapter.adapter, mask: adapter.mask, activations: adapter.activations });
      const checkpoint = () => openModel(fixtureDir(name));
      alone = await Engine.load(ctx, await checkpoint(), { dtype: 'f32', contextLength: 256 });
      batched = await Engine.load(ctx, await checkpoint(), { dtype: 'f32', contextLength: 256, maxBatch: 4, prefillChunk: 32 });
    }, 120_000);
    afterAll(() => {
      alone?.destroy();
      batched?.destroy();
      ctx?.destroy();
    });

    const run = (engine: Engine, promptIds: number[], sampling: SamplingOptions, maxTokens = 12) =>
      engine.generateIds({ promptIds, maxTokens, sampling, ignoreEos: true }).then((r) => r.ids);

    /** The largest decode step (rows) seen while `body` runs: the sequences did decode together. */
    async function peakRows<T>(body: () => Promise<T>): Promise<[T, number]> {
      let peak = 0;
      const timer = setInterval(() => (peak = Math.max(peak, batched.gauges().batchSize)), 1);
      try {
        return [await body(), peak];
      } finally {
        clearInterval(timer);
      }
    }

    it('greedy: 6 requests on 4 slots, started together and one after another, give the ids each gives alone', async () => {
      const list = prompts(name, 6);
      const want: number[][] = [];
      for (const p of list) want.push(await run(alone, p, { temperature: 0 }));
      // Together: two wait for a slot and join as others finish.
      const [together, peak] = await peakRows(() => Promise.all(list.map((p) => run(batched, p, { temperature: 0 }))));
      expect(together).toEqual(want);
      expect(peak).toBeGreaterThan(1);
      // Staggered: each joins while the ones before it decode.
      const staggered = list.map((p, i) => new Promise((r) => setTimeout(r, 30 * i)).then(() => run(batched, p, { temperature: 0 }, 12)));
      expect(await Promise.all(staggered)).toEqual(want);
      expect(batched.gauges()).toMatchObject({ running: 0, waiting: 0, maxBatch: 4 });
    }, 300_000);

    it('a sequence that starts while another decodes falls into step with it: one step serves both', async () => {
      const [, first, second] = prompts(name, 3);
      const want = [await run(alone, first, { temperature: 0 }, 80), await run(alone, second, { temperature: 0 }, 12)];
      const [got, peak] = await peakRows(async () => {
        const decoding = run(batched, first, { temperature: 0 }, 80);
        await until(() => batched.gauges().running > 0);
        await new Promise((next) => setTimeout(next, 20));
        return Promise.all([decoding, run(batched, second, { temperature: 0 }, 12)]);
      });
      expect(got).toEqual(want);
      expect(peak).toBe(2);
    }, 300_000);

    it('seeded sampling: the same draws batched as alone, with penalties and top-k/top-p', async () => {
      const list = prompts(name, 4);
      const sampling = (i: number): SamplingOptions => ({ temperature: 0.9, topK: 20, topP: 0.9, seed: 100 + i, repetitionPenalty: 1.1 });
      const want: number[][] = [];
      for (const [i, p] of list.entries()) want.push(await run(alone, p, sampling(i), 10));
      expect(await Promise.all(list.map((p, i) => run(batched, p, sampling(i), 10)))).toEqual(want);
    }, 300_000);

    it('a prompt prefilled in chunks between decode steps, and a request that ends early freeing its slot', async () => {
      const long = Array.from({ length: 150 }, (_, j) => golden(name).prompt_ids[j % golden(name).prompt_ids.length]);
      const short = prompts(name, 3);
      const want = [await run(alone, long, { temperature: 0 }, 6), ...(await Promise.all(short.map((p, i) => run(alone, p, { temperature: 0 }, 3 + 5 * i))))];
      // 150 tokens are 5 chunks of 32: the short ones decode between them.
      const got = await Promise.all([run(batched, long, { temperature: 0 }, 6), ...short.map((p, i) => run(batched, p, { temperature: 0 }, 3 + 5 * i))]);
      expect(got).toEqual(want);
    }, 300_000);

    it('an aborted request gives its slot back; the others go on', async () => {
      const list = prompts(name, 3);
      const want = await run(alone, list[1], { temperature: 0 }, 10);
      const controller = new AbortController();
      const aborted = batched.generateIds({ promptIds: list[0], maxTokens: 200, sampling: { temperature: 0 }, ignoreEos: true, signal: controller.signal });
      setTimeout(() => controller.abort(), 50);
      const [outcome, other] = await Promise.allSettled([aborted, run(batched, list[1], { temperature: 0 }, 10)]);
      expect(outcome.status).toBe('rejected');
      expect(other).toEqual({ status: 'fulfilled', value: want });
      expect(batched.gauges().running).toBe(0);
    }, 300_000);
  });
}

describe('tiled decode (GPU batches of more than 4 slots; forced on this CPU adapter): rows through the tiled matmul', () => {
  for (const name of FIXTURES) {
    it(`${name}: 5 concurrent sequences on 4 slots give the ids each gives alone on the same engine`, async () => {
      const ctx = await createNodeContext({ adapter: adapter.adapter, mask: adapter.mask, activations: adapter.activations });
      const engine = await Engine.load(ctx, await openModel(fixtureDir(name)), { dtype: 'f32', contextLength: 128, maxBatch: 4, tiledDecode: true });
      try {
        const list = prompts(name, 5);
        const run = (promptIds: number[]) => engine.generateIds({ promptIds, maxTokens: 8, sampling: { temperature: 0 }, ignoreEos: true }).then((r) => r.ids);
        const want: number[][] = [];
        for (const p of list) want.push(await run(p));
        expect(await Promise.all(list.map(run))).toEqual(want);
      } finally {
        engine.destroy();
        ctx.destroy();
      }
    }, 300_000);
  }
});

describe('speculative decoding beside a batch: a request that finds no other running speculates in a session of its own', () => {
  it('is refused beside a batch that decodes through the tiled matmul (its rows are not a sequence alone)', async () => {
    const ctx = await createNodeContext({ adapter: adapter.adapter, mask: adapter.mask, activations: adapter.activations });
    try {
      const options = { dtype: 'f32', contextLength: 64, maxBatch: 2, tiledDecode: true, mtp: true } as const;
      await expect(Engine.load(ctx, await openModel(fixtureDir(FIXTURES[0])), options)).rejects.toThrow(
        /speculative decoding is not possible: a batch of 2 decodes through the tiled matmul/,
      );
      await expect(Engine.load(ctx, await openModel(fixtureDir(FIXTURES[0])), { ...options, maxBatch: 1, draftVocab: -1 })).rejects.toThrow(
        /^draftVocab: must be a non-negative integer \(0: every id\), got -1/,
      );
    } finally {
      ctx.destroy();
    }
  }, 120_000);

  /** A plain engine and one that speculates beside a batch, on fixture `name`, for `body`; destroyed after it. */
  async function withEngines(
    name: (typeof FIXTURES)[number],
    sizes: { contextLength: number; maxBatch: number },
    body: (plain: Engine, engine: Engine) => Promise<void>,
  ): Promise<void> {
    const ctx = await createNodeContext({ adapter: adapter.adapter, mask: adapter.mask, activations: adapter.activations });
    const checkpoint = () => openModel(fixtureDir(name));
    const plain = await Engine.load(ctx, await checkpoint(), { dtype: 'f32', contextLength: sizes.contextLength, mtp: false });
    // Drafts from part of the vocabulary: fewer accepted, never other tokens.
    const engine = await Engine.load(ctx, await checkpoint(), { dtype: 'f32', ...sizes, mtp: true, draftTokens: 2, draftVocab: 300 });
    try {
      await body(plain, engine);
    } finally {
      plain.destroy();
      engine.destroy();
      ctx.destroy();
    }
  }

  for (const name of FIXTURES) {
    it(
      `${name}: alone and with others, greedy and seeded, every request gets the ids it gets decoding step by step`,
      () =>
        withEngines(name, { contextLength: 128, maxBatch: 3 }, async (plain, engine) => {
          const list = prompts(name, 5);
          const sampling = (i: number): SamplingOptions => (i % 2 ? { temperature: 0.9, topK: 20, seed: 7 + i, presencePenalty: 0.5 } : { temperature: 0 });
          const run = (e: Engine, p: number[], i: number, signal?: AbortSignal) =>
            e.generateIds({ promptIds: p, maxTokens: 10, sampling: sampling(i), ignoreEos: true, signal }).then((r) => r.ids);
          const want: number[][] = [];
          for (const [i, p] of list.entries()) want.push(await run(plain, p, i));
          const passes = () => engine.gauges().speculation?.passes ?? 0;

          expect(await run(engine, list[0], 0)).toEqual(want[0]);
          const alonePasses = passes();
          expect(alonePasses).toBeGreaterThan(0);
          // The first takes the session for a request alone; the others share the batch's 3 slots (one waits).
          let peak = 0;
          const timer = setInterval(() => (peak = Math.max(peak, engine.gauges().running)), 1);
          const together = await Promise.all(list.map((p, i) => run(engine, p, i))).finally(() => clearInterval(timer));
          expect(together).toEqual(want);
          expect(passes()).toBeGreaterThan(alonePasses);
          expect(peak).toBeGreaterThan(2);
          expect(engine.gauges()).toMatchObject({ running: 0, waiting: 0, maxBatch: 3 });

          // An abort gives the session back: the next request alone speculates there again.
          const controller = new AbortController();
          const aborted = run(engine, list[1], 1, controller.signal);
          controller.abort();
          await expect(aborted).rejects.toThrow(/abort/i);
          const before = passes();
          expect(await run(engine, list[2], 2)).toEqual(want[2]);
          expect(passes()).toBeGreaterThan(before);
        }),
      300_000,
    );

    it(
      `${name}: a request alone moves into the batch once another decodes there, and both get their step-by-step ids`,
      () =>
        withEngines(name, { contextLength: 256, maxBatch: 2 }, async (plain, engine) => {
          const [, first, second] = prompts(name, 3);
          // Seeded with a penalty: the sampler's RNG step and counts go with the sequence into the batch.
          const seeded: SamplingOptions = { temperature: 0.9, topK: 20, seed: 11, presencePenalty: 0.5 };
          const run = (e: Engine, p: number[], sampling: SamplingOptions, maxTokens: number) =>
            e.generateIds({ promptIds: p, maxTokens, sampling, ignoreEos: true }).then((r) => r.ids);
          const want = [await run(plain, first, seeded, 100), await run(plain, second, { temperature: 0 }, 48)];
          const passes = () => engine.gauges().speculation?.passes ?? 0;

          let [rows, running] = [0, 0];
          const timer = setInterval(() => {
            const g = engine.gauges();
            [rows, running] = [Math.max(rows, g.batchSize), Math.max(running, g.running)];
          }, 1);
          try {
            const alone = run(engine, first, seeded, 100);
            await until(() => passes() > 0);
            // The order of events is fixed, not raced: a score holds the prefill session, so the second takes a slot
            // and waits there to prefill; the first moves into the batch and steps there; then the second prefills
            // and decodes beside the first's many tokens left.
            let open!: () => void;
            const gate = new Promise<void>((resolve) => (open = resolve));
            let holding = false;
            const held = engine.score(second.slice(0, 1), async () => {
              holding = true;
              await gate;
            });
            await until(() => holding);
            const beside = run(engine, second, { temperature: 0 }, 48);
            let aloneEnded = false;
            const ended = () => (aloneEnded = true);
            alone.then(ended, ended);
            await until(() => engine.gauges().batchSize > 0 || aloneEnded);
            open();
            await held;
            expect(await Promise.all([alone, beside])).toEqual(want);
          } finally {
            clearInterval(timer);
          }
          // Both decoded in one step: the first left its session for the batch's free slot, and counts once.
          expect(rows).toBe(2);
          expect(running).toBe(2);
          expect(engine.gauges()).toMatchObject({ running: 0, waiting: 0 });

          // The slot and the session are given back: the next request alone speculates again.
          const before = passes();
          expect(await run(engine, first, seeded, 100)).toEqual(want[0]);
          expect(passes()).toBeGreaterThan(before);
        }),
      300_000,
    );
  }
});
