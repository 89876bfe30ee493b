import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { GpuContext } from '../../src/gpu/context.ts';
import { createNodeContext } from '../../src/hosts/node/gpu.ts';
import { loadModel } from '../../src/model/load.ts';
import { Session } from '../../src/runtime/session.ts';
import { scoreIds } from '../../src/runtime/score.ts';
import { generateIds } from '../../src/runtime/generation.ts';
import { GpuSampler } from '../../src/runtime/sampler.ts';
import { FileSource } from '../../src/storage/file.ts';
import { openModel } from '../../src/storage/locate.ts';
import { ReferenceSession, loadReferenceModel, referenceGreedy } from '../../src/reference/model.ts';
import { type CheckpointSpec, writeCheckpoint } from '../helpers/checkpoint.ts';
import { rng } from '../helpers/random.ts';

// Checkpoints nobody tuned for: other head counts, value:key head ratios 1 to 4, 32 experts with 10 routed,
// per-expert tensor names, flat configs with top-level rope keys, the text-only prefix, shards, F16/F32
// weights, widths that are not multiples of 8, and prompts that cross several 64-token DeltaNet chunks.
// The engine (f32 weights) must match the f64 reference within 5e-3 on every prompt logprob, and follow its
// greedy ids for as long as the reference's margin leaves an f32 engine no room to differ.
const VARIANTS: [string, CheckpointSpec, number][] = [
  [
    'dense, flat config, text-only prefix, GQA 4:1, DeltaNet ratio 1, F16, odd widths',
    {
      seed: 11,
      hidden: 96,
      layers: 4,
      heads: [4, 1],
      linearHeads: [2, 2],
      intermediate: 200,
      tied: true,
      dtype: 'F16',
      flat: true,
      topLevelRope: true,
      interval: true,
      textOnlyPrefix: true,
    },
    150,
  ],
  [
    'MoE, 32 experts top-10, per-expert names, ratio 4, shards, MTP',
    {
      seed: 23,
      hidden: 128,
      layers: 4,
      heads: [3, 3],
      linearHeads: [1, 4],
      tied: false,
      dtype: 'BF16',
      shards: 3,
      mtp: true,
      experts: { count: 32, topk: 10, intermediate: 64, shared: 96, perExpert: true },
    },
    200,
  ],
  [
    'dense, ratio 3, two attention layers, F32',
    {
      seed: 37,
      hidden: 64,
      layers: 8,
      heads: [2, 2],
      linearHeads: [1, 3],
      intermediate: 256,
      tied: false,
      dtype: 'F32',
    },
    70,
  ],
];

describe('generated checkpoints vs the f64 reference', () => {
  let ctx: GpuContext;
  beforeAll(async () => {
    ctx = await createNodeContext({ adapter: 'llvmpipe' });
  });
  afterAll(() => ctx?.destroy());

  for (const [name, spec, promptLength] of VARIANTS) {
    it(name, async () => {
      const dir = writeCheckpoint(spec);
      const r = rng(spec.seed);
      const prompt = Array.from({ length: promptLength }, () => Math.floor(r() * 1000));
      const refModel = await loadReferenceModel(new FileSource(dir));
      const vocab = refModel.config.vocabSize;
      const ref = new ReferenceSession(refModel);
      const expected = new Float64Array(prompt.length * vocab);
      prompt.forEach((id, t) => expected.set(ref.next(id), t * vocab));

      const model = await loadModel(ctx, await openModel(dir), { dtype: 'f32' });
      expect(model.unusedTensors).toEqual([]);
      const session = Session.create(ctx, model, { contextLength: promptLength + 16 });
      let maxAbs = 0;
      await scoreIds(session, prompt, (rows, first) => {
        for (let i = 0; i < rows.length; i++) maxAbs = Math.max(maxAbs, Math.abs(rows[i] - expected[first * vocab + i]));
      });
      expect(maxAbs).toBeLessThanOrEqual(5e-3);

      const steps = 8;
      const want = referenceGreedy(new ReferenceSession(refModel), prompt, steps, model.tokenizerSize);
      const sampler = GpuSampler.create(ctx, { vocabSize: vocab, tokenizerSize: model.tokenizerSize });
      const got = await generateIds(session, sampler, { promptIds: prompt, maxTokens: steps, sampling: { temperature: 0 } });
      sampler.destroy();
      const sure = want.margins.findIndex((m) => m < 1e-3);
      const n = sure < 0 ? steps : sure + 1;
      expect(got.ids.slice(0, n)).toEqual(want.ids.slice(0, n));
      session.destroy();
      model.destroy();
    });
  }
});
