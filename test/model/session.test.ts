import { describe, expect, it } from 'vitest';
import type { GpuContext } from '../../src/gpu/context.ts';
import { SessionError } from '../../src/errors.ts';
import { createNodeContext } from '../../src/hosts/node/gpu.ts';
import { loadModel } from '../../src/model/load.ts';
import { Session } from '../../src/runtime/session.ts';
import { GpuSampler } from '../../src/runtime/sampler.ts';
import { scoreIds } from '../../src/runtime/score.ts';
import { openModel } from '../../src/storage/locate.ts';
import { compareLogprobs, fixtureDir, golden, goldenLogprobs } from '../helpers/fixtures.ts';
import { describeOnAdapters, readF32 } from '../helpers/gpu.ts';

const dense = golden('tiny-qwen35');

async function logitsAfter(session: Session): Promise<Float32Array> {
  return readF32(session.ctx, session.activations.logits, session.model.config.vocabSize);
}

// CI has no GPU: the kernel shapes and paths chosen for GPUs (tiled matmul prefill, matvec without staging) run
// here on lavapipe with `cpu` masked off, against what the CPU paths give.
describe('session on GPU paths (lavapipe, cpu masked off)', () => {
  for (const fixture of ['tiny-qwen35', 'tiny-qwen35-moe'] as const) {
    it(`${fixture}: prefill and decode give the logits of the CPU paths`, async () => {
      const ids = golden(fixture).prompt_ids.slice(0, 100);
      const logits = async (mask?: { cpu: false }) => {
        const c = await createNodeContext({ adapter: 'llvmpipe', mask });
        expect(c.caps.cpu).toBe(!mask);
        const model = await loadModel(c, await openModel(fixtureDir(fixture)), { dtype: 'q4' });
        const session = Session.create(c, model, { contextLength: 128 });
        await session.prefill(ids.slice(0, 90));
        const prefilled = await logitsAfter(session);
        for (const id of ids.slice(90)) {
          session.feed(id);
          await session.decode();
        }
        const decoded = await logitsAfter(session);
        session.destroy();
        model.destroy();
        c.destroy();
        return { prefilled, decoded };
      };
      const cpu = await logits();
      const gpu = await logits({ cpu: false });
      expect(compareLogprobs(gpu.prefilled, cpu.prefilled, cpu.prefilled.length).maxAbs).toBeLessThan(1e-4);
      expect(compareLogprobs(gpu.decoded, cpu.decoded, cpu.decoded.length).maxAbs).toBeLessThan(1e-4);
    });
  }
});

describeOnAdapters(
  'session',
  (ctx) => {
    it('prefill in 50-token chunks, and prefill then decode steps, give the logits of one whole prefill', async () => {
      const model = await loadModel(ctx(), await openModel(fixtureDir('tiny-qwen35-moe')), { dtype: 'f32' });
      const ids = golden('tiny-qwen35-moe').prompt_ids.slice(0, 130);
      const whole = Session.create(ctx(), model, { contextLength: 200 });
      await whole.prefill(ids);
      const expected = await logitsAfter(whole);

      const chunked = Session.create(ctx(), model, { contextLength: 200, prefillChunk: 50 });
      await chunked.prefill(ids);
      expect(compareLogprobs(await logitsAfter(chunked), expected, expected.length).maxAbs).toBeLessThan(1e-4);

      const stepped = Session.create(ctx(), model, { contextLength: 200 });
      await stepped.prefill(ids.slice(0, 100));
      for (const id of ids.slice(100)) {
        stepped.feed(id);
        await stepped.decode();
      }
      expect(stepped.position).toBe(130);
      expect(compareLogprobs(await logitsAfter(stepped), expected, expected.length).maxAbs).toBeLessThan(1e-4);

      stepped.reset();
      await stepped.prefill(ids);
      expect(compareLogprobs(await logitsAfter(stepped), expected, expected.length).maxAbs).toBeLessThan(1e-5);
      for (const s of [whole, chunked, stepped]) s.destroy();
      model.destroy();
    });

    it('refuses a prompt longer than the context, and bad token ids, without moving', async () => {
      const model = await loadModel(ctx(), await openModel(fixtureDir('tiny-qwen35')), { dtype: 'f32' });
      const session = Session.create(ctx(), model, { contextLength: 10 });
      await expect(session.prefill(dense.prompt_ids.slice(0, 11))).rejects.toThrow(/11 tokens do not fit the session's context of 10/);
      await expect(session.prefill([1, 2, 5000])).rejects.toThrow(/token id 5000 at index 2 is outside the vocabulary/);
      expect(session.position).toBe(0);
      await session.prefill(dense.prompt_ids.slice(0, 10));
      await expect(session.decode()).rejects.toThrow(SessionError);
      expect(() => Session.create(ctx(), model, { contextLength: 300_000 })).toThrow(/max_position_embeddings 262144/);
      session.destroy();
      model.destroy();
    });
  },
  { wholeModel: true },
);

describe('a decode step', () => {
  it('maps exactly one buffer back to the CPU: the 4-byte sampled token id', async () => {
    const ctx: GpuContext = await createNodeContext({ adapter: 'llvmpipe' });
    const model = await loadModel(ctx, await openModel(fixtureDir('tiny-qwen35-moe')), { dtype: 'f16' });
    const session = Session.create(ctx, model, { contextLength: 64 });
    const sampler = GpuSampler.create(ctx, { vocabSize: model.config.vocabSize, tokenizerSize: model.tokenizerSize });
    const prompt = dense.prompt_ids.slice(0, 20);
    sampler.begin({ temperature: 0.8, topP: 0.9, seed: 1 }, prompt);
    await session.prefill(prompt);
    await session.sample(sampler);
    await session.decode(); // compiles the decode plan outside the measured steps
    await session.sample(sampler);
    const proto = Object.getPrototypeOf(session.activations.token) as GPUBuffer;
    const original = proto.mapAsync;
    const maps: { label: string; size: number | undefined }[] = [];
    proto.mapAsync = function (this: GPUBuffer, mode: number, offset?: number, size?: number) {
      maps.push({ label: this.label, size });
      return original.call(this, mode, offset, size);
    };
    try {
      for (let step = 0; step < 3; step++) {
        maps.length = 0;
        await session.decode();
        await session.sample(sampler);
        expect(maps).toEqual([{ label: 'readback', size: 4 }]);
      }
    } finally {
      proto.mapAsync = original;
    }
    sampler.destroy();
    session.destroy();
    model.destroy();
    ctx.destroy();
  });
});

describe('tensors split to fit a small binding limit', () => {
  it('give the same logprobs as whole tensors (embedding, lm_head and experts in several parts)', async () => {
    const g = golden('tiny-qwen35-moe');
    const ctx = await createNodeContext({ adapter: 'llvmpipe', mask: { maxStorageBindingBytes: 384 * 1024 } });
    const model = await loadModel(ctx, await openModel(fixtureDir('tiny-qwen35-moe')), { dtype: 'f32' });
    expect(model.weights.embed?.parts.length).toBeGreaterThan(1);
    expect(model.weights.lmHead?.parts.length).toBeGreaterThan(1);
    const moe = model.weights.layers[0].mlp;
    expect(moe.kind === 'moe' && moe.expertsGateUp.parts.length).toBeGreaterThan(1);
    const session = Session.create(ctx, model, { contextLength: g.prompt_ids.length });
    const rows = new Float32Array(g.prompt_ids.length * g.vocab_size);
    await scoreIds(session, g.prompt_ids, (r, first) => rows.set(r, first * g.vocab_size));
    expect(compareLogprobs(rows, goldenLogprobs('tiny-qwen35-moe'), g.vocab_size).maxAbs).toBeLessThanOrEqual(5e-3);
    session.destroy();
    model.destroy();
    ctx.destroy();
  });
});
