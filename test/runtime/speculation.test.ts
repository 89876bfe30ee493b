import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { GpuContext } from '../../src/gpu/context.ts';
import { createNodeContext } from '../../src/hosts/node/gpu.ts';
import { loadModel } from '../../src/model/load.ts';
import type { Model } from '../../src/model/model.ts';
import { type GenerationPlan, type TokenEvent, generateIds, generateTokens } from '../../src/runtime/generation.ts';
import { GpuSampler, type SamplingOptions } from '../../src/runtime/sampler.ts';
import { Session } from '../../src/runtime/session.ts';
import { type Drafter, keptTargets, withSpeculation } from '../../src/runtime/speculation.ts';
import { openModel } from '../../src/storage/locate.ts';
import { type CheckpointSpec, writeCheckpoint } from '../helpers/checkpoint.ts';
import { chiSquare } from '../helpers/chi_square.ts';
import { FIXTURES, fixtureDir, golden } from '../helpers/fixtures.ts';
import { ScriptedDrafter } from '../helpers/scripted_drafter.ts';
import { TEST_ADAPTERS } from '../helpers/gpu.ts';

/**
 * Speculative decoding (runtime/speculation.ts) against step-by-step decoding on the same adapter: the same ids, greedy
 * and seeded, with the model's MTP drafter (random weights: it is almost always rejected) and with drafters that
 * propose the right continuation for a chosen number of tokens (accepted at every position, then rejected), so every
 * accept count, the rollback after it, a stop inside a pass, the length limit and a thinking budget spent mid-pass run.
 */
const adapter = TEST_ADAPTERS[0];

interface Rig {
  ctx: GpuContext;
  model: Model;
  plain: Session;
  sampler: GpuSampler;
}

const run = (session: Session, sampler: GpuSampler, promptIds: number[], sampling: SamplingOptions, maxTokens: number, stopIds: number[] = []) =>
  generateIds(session, sampler, { promptIds, maxTokens, sampling, stopIds });

function speculating(rig: Rig, k: number, drafter?: (s: Session) => Drafter): Session {
  const session = Session.create(rig.ctx, rig.model, { contextLength: 256, verifyRows: k + 1 });
  return withSpeculation(session, k, drafter?.(session));
}

/** The checks every model gets: the MTP drafter and scripted drafters, greedy, k = 1, 2, 3. */
function equalityTests(rig: () => Rig, prompt: () => number[], ks = [1, 2, 3]) {
  it('greedy with the MTP drafter, k = 1, 2, 3: the ids of step-by-step decoding', async () => {
    const r = rig();
    const want = (await run(r.plain, r.sampler, prompt(), { temperature: 0 }, 20)).ids;
    for (const k of ks) {
      const session = speculating(r, k);
      const got = await run(session, r.sampler, prompt(), { temperature: 0 }, 20);
      expect(got.ids, `k = ${k}`).toEqual(want);
      expect(got.speculation?.passes).toBeGreaterThan(0);
      session.destroy();
    }
  }, 300_000);

  it('greedy with drafts accepted at every position 0..k, then rejected: the same ids, every accept count seen', async () => {
    const r = rig();
    const want = (await run(r.plain, r.sampler, prompt(), { temperature: 0 }, 24)).ids;
    for (const k of ks) {
      const session = speculating(r, k, (s) => new ScriptedDrafter(s, prompt().length, want, (pass, k) => pass % (k + 1)));
      const got = await run(session, r.sampler, prompt(), { temperature: 0 }, 24);
      expect(got.ids, `k = ${k}`).toEqual(want);
      // Passes accept 0, 1, …, k drafts in turn: (0 + 1 + … + k) per k + 1 passes.
      expect(got.speculation!.accepted).toBeGreaterThanOrEqual(Math.floor(got.speculation!.passes / (k + 1)) * ((k * (k + 1)) / 2));
      session.destroy();
    }
  }, 300_000);
}

describe('keptTargets', () => {
  it('keeps row 0, then each row whose draft equals the target picked before it, up to the first that differs', () => {
    expect(keptTargets([5, 6, 7], [5, 6, 9, 1])).toEqual([5, 6, 9]);
    expect(keptTargets([1], [2, 3])).toEqual([2]);
    expect(keptTargets([4, 4], [4, 4, 8])).toEqual([4, 4, 8]);
    expect(keptTargets([], [3])).toEqual([3]);
  });
});

/** Loads a fixture with its MTP block, with a plain session and a sampler beside it. */
async function fixtureRig(name: (typeof FIXTURES)[number]): Promise<Rig> {
  const ctx = await createNodeContext({ adapter: adapter.adapter, mask: adapter.mask, activations: adapter.activations });
  const model = await loadModel(ctx, await openModel(fixtureDir(name)), { dtype: 'f32', mtp: true });
  const plain = Session.create(ctx, model, { contextLength: 256 });
  return { ctx, model, plain, sampler: GpuSampler.create(ctx, { vocabSize: model.config.vocabSize, tokenizerSize: model.tokenizerSize }) };
}

function destroyRig(rig: Rig | undefined): void {
  rig?.sampler.destroy();
  rig?.plain.destroy();
  rig?.model.destroy();
  rig?.ctx.destroy();
}

for (const name of FIXTURES) {
  describe(`${name}: speculative decoding gives the tokens of step-by-step decoding`, () => {
    let rig: Rig;
    const prompt = () => golden(name).prompt_ids.slice(0, 40);
    beforeAll(async () => {
      rig = await fixtureRig(name);
    }, 120_000);
    afterAll(() => destroyRig(rig));

    equalityTests(() => rig, prompt);

    it('a stop id and the length limit inside a pass: generation ends there, as step by step', async () => {
      const want = (await run(rig.plain, rig.sampler, prompt(), { temperature: 0 }, 24)).ids;
      const session = speculating(rig, 3, (s) => new ScriptedDrafter(s, prompt().length, want, (_, k) => k));
      for (const stop of [5, 6, 7]) {
        const stopIds = [want[stop]];
        const plain = await run(rig.plain, rig.sampler, prompt(), { temperature: 0 }, 24, stopIds);
        const got = await run(session, rig.sampler, prompt(), { temperature: 0 }, 24, stopIds);
        expect(got.ids).toEqual(plain.ids);
        expect(got.stopped).toBe('stop');
      }
      for (const length of [2, 5, 10]) expect((await run(session, rig.sampler, prompt(), { temperature: 0 }, length)).ids).toEqual(want.slice(0, length));
      session.destroy();
    }, 300_000);

    it('a thinking budget spent inside a pass: the forced end of the thought lands where step by step puts it', async () => {
      const thinkEndIds = [7, 11, 11];
      const plan = (maxTokens: number): GenerationPlan => ({
        promptIds: prompt(),
        maxTokens,
        sampling: { temperature: 0 },
        stopIds: new Set(),
        thinking: true,
        reasoningBudget: 6,
        thinkEndId: 7,
        thinkEndIds,
      });
      const collect = async (session: Session) => {
        const ids: number[] = [];
        for await (const t of generateTokens(session, rig.sampler, plan(20))) ids.push(t.id);
        return ids;
      };
      const want = await collect(rig.plain);
      expect(want.slice(6, 9)).toEqual(thinkEndIds);
      const session = speculating(rig, 3, (s) => new ScriptedDrafter(s, prompt().length, want, (_, k) => k));
      expect(await collect(session)).toEqual(want);
      session.destroy();
    }, 300_000);

    it('seeded sampling: the draws of step-by-step decoding, drafts accepted or not', async () => {
      const sampling = { temperature: 1.3, topK: 20, seed: 1234 };
      const want = (await run(rig.plain, rig.sampler, prompt(), sampling, 24)).ids;
      for (const drafter of [undefined, (s: Session) => new ScriptedDrafter(s, prompt().length, want, (pass, k) => pass % (k + 1))]) {
        const session = speculating(rig, 3, drafter);
        expect((await run(session, rig.sampler, prompt(), sampling, 24)).ids).toEqual(want);
        session.destroy();
      }
    }, 300_000);

    it('penalties (repetition, presence, frequency): the ids of step-by-step decoding, greedy and seeded, drafts accepted or not', async () => {
      for (const sampling of [
        { temperature: 0, repetitionPenalty: 1.3, presencePenalty: 0.8, frequencyPenalty: 0.6 },
        { temperature: 1.1, topK: 30, seed: 77, presencePenalty: 1.5 },
      ]) {
        const want = (await run(rig.plain, rig.sampler, prompt(), sampling, 24)).ids;
        for (const k of [1, 3]) {
          for (const drafter of [undefined, (s: Session) => new ScriptedDrafter(s, prompt().length, want, (pass, k) => pass % (k + 1))]) {
            const session = speculating(rig, k, drafter);
            const got = await run(session, rig.sampler, prompt(), sampling, 24);
            expect(got.ids, `k = ${k}, ${drafter ? 'scripted' : 'MTP'} drafts, ${JSON.stringify(sampling)}`).toEqual(want);
            session.destroy();
          }
        }
      }
    }, 300_000);

    it('logprobs: the tokens of step-by-step decoding with the same logprobs and alternatives', async () => {
      const collect = async (session: Session, sampling: SamplingOptions) => {
        const out: TokenEvent[] = [];
        const plan = { promptIds: prompt(), maxTokens: 16, sampling, stopIds: new Set<number>(), thinking: false };
        for await (const t of generateTokens(session, rig.sampler, plan)) out.push(t);
        return out;
      };
      for (const sampling of [
        { temperature: 0, logprobs: 5 },
        { temperature: 0.9, seed: 5, logprobs: 3, frequencyPenalty: 0.4 },
      ]) {
        const want = await collect(rig.plain, sampling);
        expect(want[0].top).toHaveLength(sampling.logprobs);
        const ids = want.map((t) => t.id);
        for (const drafter of [undefined, (s: Session) => new ScriptedDrafter(s, prompt().length, ids, (pass, k) => pass % (k + 1))]) {
          const session = speculating(rig, 3, drafter);
          expect(await collect(session, sampling), `${drafter ? 'scripted' : 'MTP'} drafts`).toEqual(want);
          session.destroy();
        }
      }
    }, 300_000);

    it('rollback: after a pass keeps c of k + 1 rows, the session is bit for bit one that decoded only those', async () => {
      const want = (await run(rig.plain, rig.sampler, prompt(), { temperature: 0 }, 8)).ids;
      const k = 3;
      for (const keep of [1, 2, 4]) {
        const session = speculating(rig, k, (s) => new ScriptedDrafter(s, prompt().length, want, () => keep - 1));
        // One pass after the first token: it keeps `keep` rows (the pending token and keep − 1 accepted drafts).
        await run(session, rig.sampler, prompt(), { temperature: 0 }, 1 + keep);
        await session.speculator!.settle();
        const stepped = Session.create(rig.ctx, rig.model, { contextLength: 256 });
        rig.sampler.begin({ temperature: 0 }, prompt());
        await (await stepped.prefillAndPick(prompt(), rig.sampler)).read();
        for (let i = 0; i < keep; i++) await (await stepped.advance(rig.sampler)).read();
        expect(session.position).toBe(stepped.position);
        await expectSameStates(rig, session, stepped);
        stepped.destroy();
        session.destroy();
      }
    }, 300_000);
  });
}

// One model is enough for the statistics (400 generations of the MoE fixture take minutes on a CPU adapter).
describe(`${FIXTURES[0]}: speculative sampling`, () => {
  let rig: Rig;
  const prompt = () => golden(FIXTURES[0]).prompt_ids.slice(0, 40);
  beforeAll(async () => {
    rig = await fixtureRig(FIXTURES[0]);
  }, 120_000);
  afterAll(() => destroyRig(rig));

  it('seeded sampling: a verified token follows the target distribution (chi-square over 400 seeds)', async () => {
    // Two tokens: the prefill's pick y, then the pick of verification row 0 given y. Expected: p(y) · p(t | y).
    const sampling = { temperature: 1.5, topK: 4 };
    const short = prompt().slice(0, 8);
    const V = rig.model.config.vocabSize;
    const probs = async (ids: number[]) => {
      rig.plain.reset();
      await rig.plain.prefill(ids);
      const logits = new Float32Array(await rig.ctx.read(rig.plain.activations.logits, 0, V * 4));
      return filtered(logits, rig.model.tokenizerSize, sampling.temperature, sampling.topK);
    };
    const first = await probs(short);
    const cells = new Map<string, number>();
    for (const [y, py] of first) for (const [t, pt] of await probs([...short, y])) cells.set(`${y} ${t}`, py * pt);
    // Drafts of the greedy continuation: often accepted, so a rule that let a draft through unverified would show.
    const greedy = (await run(rig.plain, rig.sampler, short, { temperature: 0 }, 4)).ids;
    const session = speculating(rig, 2, (s) => new ScriptedDrafter(s, short.length, greedy, (_, k) => k));
    const draws = 400;
    const counts = new Map<string, number>();
    let accepted = 0;
    for (let seed = 0; seed < draws; seed++) {
      const result = await run(session, rig.sampler, short, { ...sampling, seed }, 2);
      const key = result.ids.join(' ');
      counts.set(key, (counts.get(key) ?? 0) + 1);
      accepted += result.speculation?.accepted ?? 0;
    }
    session.destroy();
    expect(accepted, 'drafts accepted over the draws').toBeGreaterThan(draws / 20);
    expect([...counts.keys()].filter((k) => !cells.has(k))).toEqual([]);
    const keys = [...cells.keys()];
    const test = chiSquare(
      keys.map((k) => counts.get(k) ?? 0),
      keys.map((k) => cells.get(k)!),
      draws,
    );
    expect(test.p, `chi2 = ${test.stat.toFixed(1)} on ${test.dof} dof`).toBeGreaterThan(0.001);
  }, 300_000);
});

/** Sequence states equal bit for bit: recurrent state (the sequence's slot), conv rings, KV rows below the position. */
async function expectSameStates(rig: Rig, a: Session, b: Session): Promise<void> {
  const c = rig.model.config;
  const slot = c.linearValueHeads * c.linearKeyDim * c.linearValueDim * 4;
  const bytes = (buffer: GPUBuffer, offset: number, size: number) => rig.ctx.read(buffer, offset, size).then((x) => new Uint8Array(x));
  for (let i = 0; i < a.layerStates.length; i++) {
    const [sa, sb] = [a.layerStates[i], b.layerStates[i]];
    if (sa.recurrent) {
      expect(await bytes(sa.recurrent, 0, slot), `layer ${i} recurrent`).toEqual(await bytes(sb.recurrent!, 0, slot));
      // The ring (the verifying session's buffer has pending slots after it, which nothing reads once a pass is kept).
      expect(await bytes(sa.conv!, 0, sb.conv!.size), `layer ${i} conv`).toEqual(await bytes(sb.conv!, 0, sb.conv!.size));
    } else {
      const head = a.capacity * c.headDim * rig.ctx.activationBytes;
      const used = a.position * c.headDim * rig.ctx.activationBytes;
      for (let g = 0; g < c.numKvHeads; g++) {
        expect(await bytes(sa.keys!, g * head, used), `layer ${i} keys`).toEqual(await bytes(sb.keys!, g * head, used));
        expect(await bytes(sa.values!, g * head, used), `layer ${i} values`).toEqual(await bytes(sb.values!, g * head, used));
      }
    }
  }
}

/** The sampler's distribution over ids < n: softmax(logits / T) kept to the top k, renormalised (top-k ties: lowest ids). */
function filtered(logits: Float32Array, n: number, temperature: number, topK: number): [number, number][] {
  const order = Array.from({ length: n }, (_, i) => i).sort((x, y) => logits[y] - logits[x] || x - y);
  const top = order.slice(0, topK);
  const max = logits[top[0]];
  const w = top.map((i) => Math.exp((logits[i] - max) / temperature));
  const sum = w.reduce((s, v) => s + v, 0);
  return top.map((id, i) => [id, w[i] / sum]);
}

const GENERATED: [string, CheckpointSpec][] = [
  ['dense, DeltaNet ratio 1', { seed: 51, hidden: 64, layers: 4, heads: [2, 1], linearHeads: [2, 2], intermediate: 128, tied: true, dtype: 'F32', mtp: true }],
  ['dense, ratio 2', { seed: 52, hidden: 64, layers: 4, heads: [2, 2], linearHeads: [1, 2], intermediate: 96, tied: false, dtype: 'F32', mtp: true }],
  [
    'MoE, ratio 3',
    {
      seed: 53,
      hidden: 64,
      layers: 4,
      heads: [2, 1],
      linearHeads: [1, 3],
      tied: false,
      dtype: 'F32',
      mtp: true,
      experts: { count: 8, topk: 2, intermediate: 32, shared: 48 },
    },
  ],
  [
    'MoE, ratio 4',
    {
      seed: 54,
      hidden: 64,
      layers: 4,
      heads: [2, 2],
      linearHeads: [1, 4],
      tied: true,
      dtype: 'F32',
      mtp: true,
      experts: { count: 16, topk: 4, intermediate: 32, shared: 32 },
    },
  ],
];

for (const [name, spec] of GENERATED) {
  describe(`generated checkpoint (${name}): speculative decoding gives the tokens of step-by-step decoding`, () => {
    let rig: Rig;
    const prompt = () => Array.from({ length: 30 }, (_, i) => (i * 37 + spec.seed) % 1000);
    beforeAll(async () => {
      const ctx = await createNodeContext({ adapter: adapter.adapter, mask: adapter.mask, activations: adapter.activations });
      const model = await loadModel(ctx, await openModel(writeCheckpoint(spec)), { dtype: 'f32', mtp: true });
      const plain = Session.create(ctx, model, { contextLength: 256 });
      rig = { ctx, model, plain, sampler: GpuSampler.create(ctx, { vocabSize: model.config.vocabSize, tokenizerSize: model.tokenizerSize }) };
    }, 120_000);
    afterAll(() => {
      rig?.sampler.destroy();
      rig?.plain.destroy();
      rig?.model.destroy();
      rig?.ctx.destroy();
    });
    equalityTests(() => rig, prompt);
  });
}
