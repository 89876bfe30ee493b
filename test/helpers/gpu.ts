import { afterAll, beforeAll, describe } from 'vitest';
import type { GpuContext } from '../../src/gpu/context.ts';
import type { ActivationType, CapsMask } from '../../src/gpu/caps.ts';
import { f16BitsToF32, f32ToF16Bits, roundToF16 } from '../../src/numeric/half.ts';
import { createNodeContext } from '../../src/hosts/node/gpu.ts';

export interface TestAdapter {
  name: string;
  adapter: string;
  mask?: CapsMask;
  activations?: ActivationType;
  /** The device gets WebGPU's default limits, not the adapter's (ContextOptions.defaultLimits). */
  defaultLimits?: boolean;
}

/**
 * The adapters every GPU test runs on: lavapipe with shader-f16 and subgroups (8 lanes); lavapipe-portable, the same
 * with both masked off and only WebGPU's default limits (the portable path: 8 storage buffers, 16 KiB of workgroup
 * memory); and SwiftShader (no shader-f16, as Chromium on Linux; subgroups of 4). Tests of kernels that read or write
 * activations also run on lavapipe with f16 activations. QWEN_TEST_ADAPTERS=lavapipe,swiftshader narrows the set.
 */
export const TEST_ADAPTERS: TestAdapter[] = (
  [
    { name: 'lavapipe', adapter: 'llvmpipe' },
    { name: 'lavapipe-portable', adapter: 'llvmpipe', mask: { f16: false, subgroups: false }, defaultLimits: true },
    { name: 'swiftshader', adapter: 'SwiftShader' },
    { name: 'lavapipe-act16', adapter: 'llvmpipe', activations: 'f16' },
  ] satisfies TestAdapter[]
).filter((a) => !process.env.QWEN_TEST_ADAPTERS || process.env.QWEN_TEST_ADAPTERS.split(',').includes(a.name));

/**
 * Runs `body` once per test adapter, with a context created before and destroyed after. Adapters with f16
 * activations are included only with `act16` (kernels that touch activations; their tests read and write
 * activation buffers through uploadAct / readAct and widen their tolerances by actTolerance). `wholeModel` tests
 * skip SwiftShader: it keeps no compiled pipeline between processes, so a model costs it minutes each time, and it
 * runs every kernel test, the CLI's golden checks and the browser tests; lavapipe-portable checks the same model
 * code without shader-f16 and subgroups.
 */
export function describeOnAdapters(
  title: string,
  body: (ctx: () => GpuContext, adapter: TestAdapter) => void,
  options: { act16?: boolean; wholeModel?: boolean } = {},
): void {
  for (const adapter of TEST_ADAPTERS) {
    if (adapter.activations === 'f16' && !options.act16) continue;
    if (options.wholeModel && adapter.name === 'swiftshader') continue;
    describe(`${title} [${adapter.name}]`, () => {
      let ctx: GpuContext | undefined;
      beforeAll(async () => {
        ctx = await createNodeContext({ adapter: adapter.adapter, mask: adapter.mask, activations: adapter.activations, defaultLimits: adapter.defaultLimits });
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

const isAct16 = (ctx: GpuContext) => ctx.activations === 'f16';

/** Values as an activation buffer of `ctx` holds them: rounded to f16 with f16 activations, else unchanged. */
export function roundAct(ctx: GpuContext, data: Float32Array): Float32Array {
  return isAct16(ctx) ? roundToF16(data) : data;
}

/** An activation buffer of `elements` elements (2 or 4 bytes each). */
export function actBuffer(ctx: GpuContext, label: string, elements: number): GPUBuffer {
  return ctx.storage(label, Math.max(16, elements * ctx.activationBytes));
}

/** Writes values into an activation buffer from element 0 (rounded to f16 with f16 activations). */
export function writeAct(ctx: GpuContext, buffer: GPUBuffer, data: Float32Array): void {
  if (!isAct16(ctx)) {
    ctx.write(buffer, 0, data);
    return;
  }
  // Whole u32 words: writeBuffer takes multiples of 4 bytes.
  const bits = new Uint16Array(data.length + (data.length % 2));
  for (let i = 0; i < data.length; i++) bits[i] = f32ToF16Bits(data[i]);
  ctx.write(buffer, 0, bits);
}

/** Uploads values into a new activation buffer (rounded to f16 with f16 activations). */
export function uploadAct(ctx: GpuContext, data: Float32Array, label = 'test'): GPUBuffer {
  const buffer = ctx.storage(label, Math.max(16, (data.length + (data.length % 2)) * ctx.activationBytes));
  writeAct(ctx, buffer, data);
  return buffer;
}

/** Reads `length` activations from element `offset` as f32. */
export async function readAct(ctx: GpuContext, buffer: GPUBuffer, length: number, offset = 0): Promise<Float32Array> {
  if (!isAct16(ctx)) return readF32(ctx, buffer, length, offset);
  // Copies start and end on 4-byte boundaries.
  const first = offset & ~1;
  const words = Math.ceil((offset + length - first) / 2);
  const bits = new Uint16Array(await ctx.read(buffer, first * 2, words * 4));
  return Float32Array.from({ length }, (_, i) => f16BitsToF32(bits[offset - first + i]));
}

/**
 * Tolerances for a result stored as an activation: with f16 activations, relative rounding of the output (2^-11)
 * and of intermediate activations, on top of the f32 tolerances.
 */
export function actTolerance(ctx: GpuContext, atol: number, rtol: number, f16: { atol?: number; rtol?: number } = {}): [number, number] {
  return isAct16(ctx) ? [Math.max(atol, f16.atol ?? 0), Math.max(rtol, f16.rtol ?? 1e-3)] : [atol, rtol];
}
