import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Engine, type EngineOptions } from '../../src/api/engine.ts';
import type { GpuContext } from '../../src/gpu/context.ts';
import { createNodeContext } from '../../src/hosts/node/gpu.ts';
import { convertModel } from '../../src/model/convert.ts';
import { FolderSink } from '../../src/storage/file_sink.ts';
import { openModel } from '../../src/storage/locate.ts';
import { FIXTURES, fixtureDir, golden } from '../helpers/fixtures.ts';

// A browser may give no more than WebGPU's default limits (8 storage buffers per stage, 16 KiB of workgroup memory,
// 256 invocations, 128 MiB bindings): every path of the engine must run there, with the tokens it gives elsewhere.
// Kernels are checked under these limits on the portable test adapter (test/helpers/gpu.ts); this runs whole
// generations: prefill, decode, speculation, a batch, streamed experts.

let ctx: GpuContext;
const dirs: string[] = [];
beforeAll(async () => {
  ctx = await createNodeContext({ adapter: 'llvmpipe', defaultLimits: true });
});
afterAll(() => {
  ctx?.destroy();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

it('the device has the default limits, below what lavapipe offers', () => {
  expect(ctx.caps.maxStorageBuffersPerStage).toBe(8);
  expect(ctx.caps.maxWorkgroupStorageBytes).toBe(16384);
  expect(ctx.caps.maxInvocationsPerWorkgroup).toBe(256);
});

describe.each(FIXTURES)('%s on a device with the default limits', (name) => {
  const g = golden(name);
  const steps = g.greedy_ids.length;

  async function idsOf(dir: string, options: EngineOptions, requests = 1): Promise<number[][]> {
    const engine = await Engine.load(ctx, await openModel(dir), { dtype: 'f32', contextLength: g.prompt_ids.length + steps + 4, ...options });
    try {
      const runs = Array.from({ length: requests }, () => engine.generateIds({ promptIds: g.prompt_ids, maxTokens: steps, ignoreEos: true }));
      return (await Promise.all(runs)).map((r) => r.ids);
    } finally {
      engine.destroy();
    }
  }

  it('decodes the golden greedy ids, alone and speculating with the MTP block', async () => {
    expect(await idsOf(fixtureDir(name), { mtp: false })).toEqual([g.greedy_ids]);
    expect(await idsOf(fixtureDir(name), { mtp: true, draftTokens: 3 })).toEqual([g.greedy_ids]);
  });

  it('decodes the golden greedy ids for two requests batched together, rows through matvec and through the tiled matmul', async () => {
    for (const tiledDecode of [false, true]) expect(await idsOf(fixtureDir(name), { maxBatch: 2, tiledDecode }, 2)).toEqual([g.greedy_ids, g.greedy_ids]);
  });

  if (name === 'tiny-qwen35-moe') {
    it('decodes the golden greedy ids with its experts streamed through 6 slots per layer', async () => {
      const packed = mkdtempSync(join(tmpdir(), 'qwen-limits-'));
      dirs.push(packed);
      await convertModel(ctx, await openModel(fixtureDir(name)), { dtype: 'f32', sink: new FolderSink(packed) });
      const engine = await Engine.load(ctx, await openModel(packed), { dtype: 'f32', contextLength: 256, expertCacheBytes: 6 * 8 * 196_608 });
      try {
        expect(engine.model.experts?.slots).toBe(6);
        expect((await engine.generateIds({ promptIds: g.prompt_ids, maxTokens: steps, ignoreEos: true })).ids).toEqual(g.greedy_ids);
      } finally {
        engine.destroy();
      }
    });
  }
});
