import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Engine } from '../../src/api/engine.ts';
import { defaultSplits } from '../../src/kernels/attention.ts';
import type { GpuContext, GpuMemory } from '../../src/gpu/context.ts';
import { createNodeContext } from '../../src/hosts/node/gpu.ts';
import { Session } from '../../src/runtime/session.ts';
import { openModel } from '../../src/storage/locate.ts';
import { fixtureDir } from '../helpers/fixtures.ts';

// Plans are built per prefill chunk length; a server sees every prompt length, so what a request leaves behind in
// the context (uniform buffers, bind groups, scratch) must not add up. Lavapipe only: the figures are the engine's.
let ctx: GpuContext;
let engine: Engine;
beforeAll(async () => {
  ctx = await createNodeContext({ adapter: 'llvmpipe' });
  engine = await Engine.load(ctx, await openModel(fixtureDir('tiny-qwen35')), { dtype: 'f32', contextLength: 1024 });
});
afterAll(() => {
  engine?.destroy();
  ctx?.destroy();
});

describe('GPU memory', () => {
  it('stays flat over 200 requests of 200 different prompt lengths', async () => {
    const REQUESTS = 200;
    const WARM_UP = 20;
    // Lengths 1..200 in a fixed shuffled order, so that short and long prompts alternate from the start.
    const lengths = Array.from({ length: REQUESTS }, (_, i) => i + 1);
    for (let i = lengths.length - 1, s = 12345; i > 0; i--) {
      s = (Math.imul(s, 1103515245) + 12345) >>> 0;
      const j = s % (i + 1);
      [lengths[i], lengths[j]] = [lengths[j], lengths[i]];
    }
    const { config } = engine.model;
    expect(engine.session.activations.maxTokens).toBeGreaterThanOrEqual(REQUESTS); // one prefill chunk per prompt
    // Attention splits its keys here, so the size of its partials depends on the prompt's length.
    expect(defaultSplits(REQUESTS, config.numHeads, engine.session.capacity)).toBeGreaterThan(1);
    const seen: GpuMemory[] = [];
    for (const [n, length] of lengths.entries()) {
      const promptIds = Array.from({ length }, (_, i) => (i * 37 + n * 11) % 900);
      const result = await engine.generateIds({ promptIds, maxTokens: 3, ignoreEos: true });
      expect(result.ids).toHaveLength(3);
      await ctx.sync();
      seen.push(ctx.memory());
    }
    const warm = seen[WARM_UP - 1];
    // Each figure after the warm-up at most the warm-up's, and the last one the same: nothing grows per length.
    const most = (key: keyof GpuMemory) => Math.max(...seen.slice(WARM_UP).map((m) => m[key]));
    expect({ buffers: most('buffers'), bytes: most('bytes'), bindGroups: most('bindGroups') }).toEqual({
      buffers: warm.buffers,
      bytes: warm.bytes,
      bindGroups: warm.bindGroups,
    });
    expect(seen[REQUESTS - 1]).toEqual(warm);
  });

  it('gives back every buffer and bind group of a destroyed session', async () => {
    const logitsBytes = engine.model.config.vocabSize * 4;
    await ctx.read(engine.session.activations.logits, 0, logitsBytes); // a staging buffer of that size, kept for reuse
    const before = ctx.memory();
    const session = Session.create(ctx, engine.model, { contextLength: 64 });
    for (const length of [5, 9]) {
      session.reset();
      await session.prefill(Array.from({ length }, (_, i) => i + 1));
      session.feed(3);
      await session.decode();
    }
    await ctx.read(session.activations.logits, 0, logitsBytes);
    expect(ctx.memory().buffers).toBeGreaterThan(before.buffers);
    session.destroy();
    expect(ctx.memory()).toEqual(before);
  });
});
