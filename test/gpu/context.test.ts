import { create, globals } from 'webgpu';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { GpuContext } from '../../src/gpu/context.ts';
import { runProbe } from '../../src/gpu/probe.ts';
import { AdapterError } from '../../src/errors.ts';
import { createNodeContext } from '../../src/hosts/node/gpu.ts';

/** The context's start-up checks: the canary kernel, the probe they share, and the readback round trip. */
describe('GpuContext.create', () => {
  let ctx: GpuContext;
  beforeAll(async () => {
    ctx = await createNodeContext({ adapter: 'llvmpipe' });
  });
  afterAll(() => ctx?.destroy());

  it("refuses Dawn's null backend, which accepts work and computes nothing", async () => {
    Object.assign(globalThis, globals);
    const error = await GpuContext.create(create(['backend=null']) as GPU).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(AdapterError);
    expect((error as Error).message).toMatch(/does not compute correctly/);
  });

  it('runProbe returns the words a kernel wrote, and names the probe whose WGSL does not compile', async () => {
    const code = `@group(0) @binding(0) var<storage, read_write> y: array<u32>;
@compute @workgroup_size(32) fn main(@builtin(global_invocation_id) g: vec3<u32>) { y[g.x] = g.x * 3u; }`;
    expect([...(await runProbe(ctx.device, 'triples', code, 2, 64))]).toEqual(Array.from({ length: 64 }, (_, i) => i * 3));
    await expect(runProbe(ctx.device, 'broken probe', 'fn main( {', 1, 1)).rejects.toThrow(/^broken probe: /);
    await expect(runProbe(ctx.device, 'broken probe', 'fn main( {', 1, 1)).rejects.toBeInstanceOf(AdapterError);
  });

  it('measures what a readback costs with the GPU idle', () => {
    expect(ctx.readbackMs).toBeGreaterThan(0);
    expect(ctx.readbackMs).toBeLessThan(1000);
  });
});
