import { afterAll, beforeAll, describe } from 'vitest';
import type { GpuContext } from '../../src/gpu/context.ts';
import type { CapsMask } from '../../src/gpu/caps.ts';
import { createNodeContext } from '../../src/hosts/node/gpu.ts';

/**
 * The adapters every GPU test runs on: lavapipe with shader-f16, the same with f16 masked off, and
 * SwiftShader (no shader-f16, as Chromium on Linux). QWEN_TEST_ADAPTERS=lavapipe,swiftshader narrows the set.
 */
export const TEST_ADAPTERS: { name: string; adapter: string; mask?: CapsMask }[] = [
  { name: 'lavapipe', adapter: 'llvmpipe' },
  { name: 'lavapipe-no-f16', adapter: 'llvmpipe', mask: { f16: false } },
  { name: 'swiftshader', adapter: 'SwiftShader' },
].filter((a) => !process.env.QWEN_TEST_ADAPTERS || process.env.QWEN_TEST_ADAPTERS.split(',').includes(a.name));

/** Runs `body` once per test adapter, with a context created before and destroyed after. */
export function describeOnAdapters(title: string, body: (ctx: () => GpuContext, adapter: (typeof TEST_ADAPTERS)[number]) => void): void {
  for (const adapter of TEST_ADAPTERS) {
    describe(`${title} [${adapter.name}]`, () => {
      let ctx: GpuContext | undefined;
      beforeAll(async () => {
        ctx = await createNodeContext({ adapter: adapter.adapter, mask: adapter.mask });
      });
      afterAll(() => ctx?.destroy());
      body(() => {
        if (!ctx) throw new Error('no GPU context');
        return ctx;
      }, adapter);
    });
  }
}

export function upload(ctx: GpuContext, data: Float32Array | Uint32Array | Int32Array, label = 'test'): GPUBuffer {
  const buffer = ctx.storage(label, Math.max(data.byteLength, 16));
  ctx.write(buffer, 0, data);
  return buffer;
}

export async function readF32(ctx: GpuContext, buffer: GPUBuffer, length: number, offset = 0): Promise<Float32Array> {
  return new Float32Array(await ctx.read(buffer, offset * 4, length * 4));
}

export async function readU32(ctx: GpuContext, buffer: GPUBuffer, length: number, offset = 0): Promise<Uint32Array> {
  return new Uint32Array(await ctx.read(buffer, offset * 4, length * 4));
}
