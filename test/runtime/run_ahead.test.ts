import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ContractError } from '../../src/errors.ts';
import type { GpuContext } from '../../src/gpu/context.ts';
import { createNodeContext } from '../../src/hosts/node/gpu.ts';
import { loadModel } from '../../src/model/load.ts';
import type { Model } from '../../src/model/model.ts';
import { type GenerationPlan, generateTokens } from '../../src/runtime/generation.ts';
import { MAX_AHEAD, RunAhead } from '../../src/runtime/run_ahead.ts';
import { GpuSampler, type SampledToken, type SamplingOptions } from '../../src/runtime/sampler.ts';
import type { PendingToken, TokenSequence } from '../../src/runtime/sequence.ts';
import { Session } from '../../src/runtime/session.ts';
import { openModel } from '../../src/storage/locate.ts';
import { fixtureDir, golden } from '../helpers/fixtures.ts';
import { TEST_ADAPTERS } from '../helpers/gpu.ts';

/**
 * Run-ahead decoding (runtime/run_ahead.ts): how many steps go ahead of the token being read, and that a generation
 * with many steps in flight (as under Deno, whose readbacks take ~10 ms) gives exactly the tokens of one with a
 * single step ahead, stops where it does, and never submits a step past the last token allowed or a thinking budget.
 */

/** A token that says when its map was requested and whether it was given up. */
class ScriptedToken implements PendingToken {
  started = false;
  discarded = false;
  constructor(
    readonly id: number,
    private readonly fail = false,
  ) {}
  read(): Promise<SampledToken> {
    this.started = true;
    return this.fail ? Promise.reject(new Error('device lost')) : Promise.resolve({ id: this.id });
  }
  discard(): void {
    this.discarded = true;
  }
}

describe('RunAhead', () => {
  it('keeps one step ahead while readbacks cost nothing, and up to MAX_AHEAD when a readback outlasts the tokens', async () => {
    const free = new RunAhead(0);
    const slow = new RunAhead(50);
    for (const q of [free, slow]) {
      expect(q.depth).toBe(1);
      for (let i = 0; i < 4; i++) q.push(new ScriptedToken(i));
      for (let i = 0; i < 3; i++) expect((await q.next()).id).toBe(i);
    }
    expect(free.depth).toBe(1);
    // Tokens here come microseconds apart, against a 50 ms round trip.
    expect(slow.depth).toBe(MAX_AHEAD);
    await expect(new RunAhead(0).next()).rejects.toThrow(ContractError);
  });

  it('requests the maps of the tokens behind the one read, all but the newest; gives up the unread ones unstarted', async () => {
    const q = new RunAhead(0);
    const tokens = [1, 2, 3, 4].map((id) => new ScriptedToken(id));
    for (const t of tokens) q.push(t);
    expect(q.deepest).toBe(4);
    await q.next();
    expect(tokens.map((t) => t.started)).toEqual([true, true, true, false]);
    q.discard();
    expect(q.size).toBe(0);
    // Started reads complete on their own and release their buffers; only the unstarted one is discarded.
    expect(tokens.map((t) => t.discarded)).toEqual([false, false, false, true]);
  });

  it('a read started ahead that fails surfaces where it is read, and not at all when discarded first', async () => {
    const unhandled: unknown[] = [];
    const onUnhandled = (reason: unknown) => unhandled.push(reason);
    process.on('unhandledRejection', onUnhandled);
    try {
      const q = new RunAhead(0);
      q.push(new ScriptedToken(1));
      q.push(new ScriptedToken(2, true));
      q.push(new ScriptedToken(3, true));
      q.push(new ScriptedToken(4));
      expect((await q.next()).id).toBe(1);
      await expect(q.next()).rejects.toThrow('device lost');
      q.discard();
      await new Promise((resolve) => setTimeout(resolve, 10));
      expect(unhandled).toEqual([]);
    } finally {
      process.off('unhandledRejection', onUnhandled);
    }
  });
});

const adapter = TEST_ADAPTERS[0];

describe('generation with many steps in flight gives the tokens of one step ahead', () => {
  let ctx: GpuContext;
  let model: Model;
  let session: Session;
  let sampler: GpuSampler;
  const prompt = () => golden('tiny-qwen35').prompt_ids.slice(0, 24);
  beforeAll(async () => {
    ctx = await createNodeContext({ adapter: adapter.adapter, mask: adapter.mask, activations: adapter.activations });
    model = await loadModel(ctx, await openModel(fixtureDir('tiny-qwen35')), { dtype: 'f32' });
    session = Session.create(ctx, model, { contextLength: 256 });
    sampler = GpuSampler.create(ctx, { vocabSize: model.config.vocabSize, tokenizerSize: model.tokenizerSize });
  }, 120_000);
  afterAll(() => {
    sampler?.destroy();
    session?.destroy();
    model?.destroy();
    ctx?.destroy();
  });

  /**
   * Generates with readbacks said to cost `readbackMs` (the depth follows it), counting the steps submitted and not
   * yet consumed; `position` is where the session ended (prompt + steps submitted).
   */
  async function generate(readbackMs: number, plan: Partial<GenerationPlan> & { maxTokens: number; sampling: SamplingOptions }) {
    const measured = ctx.readbackMs;
    ctx.readbackMs = readbackMs;
    let submitted = 0;
    const counted: TokenSequence = {
      reset: () => session.reset(),
      prefill: (ids, o) => session.prefill(ids, o),
      prefillAndPick: (ids, s, signal) => session.prefillAndPick(ids, s, signal),
      advance: async (s, signal) => {
        const next = await session.advance(s, signal);
        submitted++;
        return next;
      },
      runsAhead: true,
      readbackMs,
    };
    const ids: number[] = [];
    let ahead = 0;
    try {
      for await (const t of generateTokens(counted, sampler, { promptIds: prompt(), stopIds: new Set(), thinking: false, ...plan })) {
        ids.push(t.id);
        ahead = Math.max(ahead, submitted - (ids.length - 1));
      }
    } finally {
      ctx.readbackMs = measured;
    }
    return { ids, ahead, position: session.position };
  }

  it('greedy, seeded sampling and penalties: the same ids; steps go up to MAX_AHEAD ahead and never past max tokens', async () => {
    for (const sampling of [{ temperature: 0 }, { temperature: 1.2, topK: 40, seed: 99, repetitionPenalty: 1.2, presencePenalty: 0.5 }]) {
      const one = await generate(0, { maxTokens: 30, sampling });
      const deep = await generate(1000, { maxTokens: 30, sampling });
      expect(deep.ids).toEqual(one.ids);
      expect(one.ahead).toBe(1);
      expect(deep.ahead).toBe(MAX_AHEAD);
      // The first token comes from the prompt; each later one from a step: 29 steps, none beyond.
      expect(deep.position).toBe(prompt().length + 29);
    }
  }, 300_000);

  it('a stop id: the same ids up to it (the steps submitted past it are dropped unread)', async () => {
    const want = (await generate(0, { maxTokens: 30, sampling: { temperature: 0 } })).ids;
    for (const at of [0, 1, 5, 20]) {
      const got = await generate(1000, { maxTokens: 30, sampling: { temperature: 0 }, stopIds: new Set([want[at]]) });
      // The stop id ends the generation unyielded.
      expect(got.ids).toEqual(want.slice(0, want.indexOf(want[at])));
    }
  }, 300_000);

  it('a thinking budget: no step runs ahead past it, and the thought closes where it does with one step ahead', async () => {
    const thinkEndIds = [7, 11, 11];
    const plan = { maxTokens: 24, sampling: { temperature: 0 }, thinking: true, reasoningBudget: 9, thinkEndId: 7, thinkEndIds };
    const one = await generate(0, plan);
    const deep = await generate(1000, plan);
    expect(one.ids.slice(9, 12)).toEqual(thinkEndIds);
    expect(deep.ids).toEqual(one.ids);
    expect(deep.ahead).toBeGreaterThan(2);
  }, 300_000);
});
