import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { GpuContext } from '../../src/gpu/context.ts';
import { createNodeContext } from '../../src/hosts/node/gpu.ts';
import { loadModel } from '../../src/model/load.ts';
import type { Model } from '../../src/model/model.ts';
import { type GenerationPlan, type TokenEvent, generateIds, generateTokens } from '../../src/runtime/generation.ts';
import { FrameConnection, type ByteLink } from '../../src/runtime/pipeline/link.ts';
import { StagePool } from '../../src/runtime/pipeline/stage_pool.ts';
import { serveStage } from '../../src/runtime/pipeline/stage_worker.ts';
import { GpuSampler, type SamplingOptions } from '../../src/runtime/sampler.ts';
import { Session } from '../../src/runtime/session.ts';
import type { SpeculationStats } from '../../src/runtime/speculation.ts';
import { openModel } from '../../src/storage/locate.ts';
import { FIXTURES, fixtureDir, golden } from '../helpers/fixtures.ts';
import { ScriptedDrafter } from '../helpers/scripted_drafter.ts';

/**
 * Speculative decoding through two pipeline stages in one process (the stages' frames over an in-memory link; the
 * same StagePool and serveStage as across processes): the last stage drafts (the MTP block, or a script that
 * proposes the right continuation for 0..k drafts in turn), every stage verifies, and the ids are those of one whole
 * model decoding step by step, greedy and seeded.
 */

/** A byte stream one way: chunks in the order written, ending when closed. */
class Pipe implements AsyncIterable<Uint8Array> {
  private readonly chunks: Uint8Array[] = [];
  private wake?: () => void;
  private closed = false;

  push(bytes: Uint8Array): void {
    this.chunks.push(bytes.slice());
    this.wake?.();
  }

  close(): void {
    this.closed = true;
    this.wake?.();
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<Uint8Array> {
    for (;;) {
      while (this.chunks.length > 0) yield this.chunks.shift()!;
      if (this.closed) return;
      await new Promise<void>((resolve) => (this.wake = resolve));
      this.wake = undefined;
    }
  }
}

/** Two ends of an in-memory connection. */
function memoryLinks(): [ByteLink, ByteLink] {
  const [ab, ba] = [new Pipe(), new Pipe()];
  const close = () => {
    ab.close();
    ba.close();
  };
  return [
    { remote: 'memory:1', write: async (bytes) => ab.push(bytes), chunks: ba, close },
    { remote: 'memory:0', write: async (bytes) => ba.push(bytes), chunks: ab, close },
  ];
}

const CONTEXT = 256;
const CHUNK = 64;

for (const name of FIXTURES) {
  describe(`${name}: speculating through two pipeline stages gives the ids of one process`, () => {
    let ctx: GpuContext;
    let whole: Model;
    let stages: [Model, Model];
    const prompt = golden(name).prompt_ids.slice(0, 40);
    beforeAll(async () => {
      ctx = await createNodeContext({ adapter: 'llvmpipe' });
      whole = await loadModel(ctx, await openModel(fixtureDir(name)), { dtype: 'f32' });
      const split = Math.floor(whole.config.numLayers / 2);
      stages = [
        await loadModel(ctx, await openModel(fixtureDir(name)), { dtype: 'f32', layers: { first: 0, end: split } }),
        await loadModel(ctx, await openModel(fixtureDir(name)), { dtype: 'f32', layers: { first: split, end: whole.config.numLayers }, mtp: true }),
      ];
    }, 120_000);
    afterAll(() => {
      whole?.destroy();
      stages?.forEach((m) => m.destroy());
      ctx?.destroy();
    });

    /** A generation with a thinking budget of 5 spent inside a pass (the engine then feeds `</think>` itself). */
    const thinking = (sampling: SamplingOptions, maxTokens: number): GenerationPlan => ({
      promptIds: prompt,
      maxTokens,
      sampling,
      stopIds: new Set(),
      thinking: true,
      reasoningBudget: 5,
      thinkEndId: 7,
      thinkEndIds: [7, 11],
    });
    const events = async (tokens: AsyncGenerator<TokenEvent>) => {
      const out: TokenEvent[] = [];
      for await (const t of tokens) out.push(t);
      return out;
    };

    /** Step-by-step ids on the whole model (with `plan`: generateTokens's, thinking). */
    async function stepByStep(sampling: SamplingOptions, maxTokens: number, plan?: GenerationPlan): Promise<number[]> {
      return (await stepByStepEvents(plan ?? { promptIds: prompt, maxTokens, sampling, stopIds: new Set(), thinking: false })).map((t) => t.id);
    }

    /** Step-by-step tokens (with logprobs when asked) of `plan` on the whole model. */
    async function stepByStepEvents(plan: GenerationPlan): Promise<TokenEvent[]> {
      const session = Session.create(ctx, whole, { contextLength: CONTEXT });
      const sampler = GpuSampler.create(ctx, { vocabSize: whole.config.vocabSize, tokenizerSize: whole.tokenizerSize });
      try {
        return await events(generateTokens(session, sampler, plan));
      } finally {
        sampler.destroy();
        session.destroy();
      }
    }

    /** Generates through the two stages, speculating with k drafts per pass; the last stage drafts with `drafter`. */
    async function pipelined(
      k: number,
      sampling: SamplingOptions,
      maxTokens: number,
      truth?: number[],
      plan?: GenerationPlan,
    ): Promise<{ ids: number[]; tokens?: TokenEvent[]; speculation?: SpeculationStats }> {
      const [front, back] = memoryLinks();
      const assign = { type: 'assign' as const, layers: stages[1].layers, contextLength: CONTEXT, slots: 1, prefillChunk: CHUNK, draftTokens: k };
      const drafter = truth && ((session: Session) => new ScriptedDrafter(session, prompt.length, truth, (pass, k) => pass % (k + 1)));
      const served = serveStage(ctx, stages[1], new FrameConnection(back, 'stage 0'), assign, drafter);
      const pool = new StagePool(ctx, stages[0], [new FrameConnection(front, 'stage 1')], {
        contextLength: CONTEXT,
        slots: 1,
        prefillChunk: CHUNK,
        callTimeoutMs: 120_000,
        draftTokens: k,
      });
      try {
        const slot = pool.slots[0];
        if (plan) {
          const tokens = await events(generateTokens(slot, slot.sampler, plan));
          return { ids: tokens.map((t) => t.id), tokens, speculation: { ...slot.speculator!.stats } };
        }
        return await generateIds(slot, slot.sampler, { promptIds: prompt, maxTokens, sampling });
      } finally {
        pool.destroy();
        await served;
      }
    }

    it('greedy and seeded, k = 1 and 3, with the MTP drafter and with drafts accepted at every position', async () => {
      for (const sampling of [{ temperature: 0 }, { temperature: 1.2, topK: 30, seed: 77 }]) {
        const want = await stepByStep(sampling, 20);
        for (const k of [1, 3]) {
          const mtp = await pipelined(k, sampling, 20);
          expect(mtp.ids, `k = ${k}, MTP drafter`).toEqual(want);
          expect(mtp.speculation?.passes).toBeGreaterThan(0);
          const scripted = await pipelined(k, sampling, 20, want);
          expect(scripted.ids, `k = ${k}, scripted drafts`).toEqual(want);
          expect(scripted.speculation?.accepted).toBeGreaterThan(0);
        }
      }
    }, 600_000);

    it('a thinking budget spent inside a pass: the stages keep the rows before it, and the forced end lands as step by step', async () => {
      const plan = thinking({ temperature: 0 }, 16);
      const want = await stepByStep(plan.sampling, 16, plan);
      expect(want.slice(5, 7)).toEqual([7, 11]);
      const got = await pipelined(3, plan.sampling, 16, want, plan);
      expect(got.ids).toEqual(want);
      expect(got.speculation?.accepted).toBeGreaterThan(0);
    }, 600_000);

    it('penalties and logprobs: the tokens, logprobs and alternatives of one process, drafts accepted or not', async () => {
      for (const sampling of [
        { temperature: 0, presencePenalty: 1.5, frequencyPenalty: 0.5, logprobs: 4 },
        { temperature: 1.1, topK: 30, seed: 5, repetitionPenalty: 1.3, logprobs: 2 },
      ]) {
        const plan: GenerationPlan = { promptIds: prompt, maxTokens: 16, sampling, stopIds: new Set(), thinking: false };
        const want = await stepByStepEvents(plan);
        expect(want[0].top).toHaveLength(sampling.logprobs);
        const mtp = await pipelined(3, sampling, 16, undefined, plan);
        expect(mtp.tokens, 'MTP drafter').toEqual(want);
        const scripted = await pipelined(
          3,
          sampling,
          16,
          want.map((t) => t.id),
          plan,
        );
        expect(scripted.tokens, 'scripted drafts').toEqual(want);
        expect(scripted.speculation?.accepted).toBeGreaterThan(0);
      }
    }, 600_000);
  });
}
