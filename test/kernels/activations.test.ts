import { describe, expect, it } from 'vitest';
import { GpuContext } from '../../src/gpu/context.ts';
import { CapabilityError } from '../../src/errors.ts';
import { createNodeContext } from '../../src/hosts/node/gpu.ts';
import { l2norm, l2normKernel } from '../../src/kernels/l2norm.ts';
import { actBuffer } from '../helpers/gpu.ts';

describe('f16 activations', () => {
  it('are refused with a CapabilityError naming shader-f16 where the adapter lacks it (SwiftShader)', async () => {
    const error = await createNodeContext({ adapter: 'SwiftShader', activations: 'f16' }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(CapabilityError);
    expect((error as CapabilityError).capability).toBe('shader-f16');
    expect((error as Error).message).toMatch(/f16 activations need the shader-f16 feature, which is not supported on adapter "SwiftShader/);
  });

  it('are refused where shader-f16 is masked off', async () => {
    const error = await createNodeContext({ adapter: 'llvmpipe', mask: { f16: false }, activations: 'f16' }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(CapabilityError);
    expect((error as Error).message).toMatch(/which is masked off/);
  });

  it('must be f32 or f16', async () => {
    const ctx = await createNodeContext({ adapter: 'llvmpipe' });
    try {
      await expect(GpuContext.create(ctx.gpu, { activations: 'bf16' as 'f16' })).rejects.toThrow(/activations must be 'f32' or 'f16', got "bf16"/);
    } finally {
      ctx.destroy();
    }
  });

  it('are a property of the context: reported, keyed, declared as `act` and sized at 2 bytes', async () => {
    const shaders: string[] = [];
    const act16 = await createNodeContext({ adapter: 'llvmpipe', activations: 'f16', dumpShader: (_, code) => shaders.push(code) });
    const act32 = await createNodeContext({ adapter: 'llvmpipe' });
    try {
      expect([act16.activations, act16.activationBytes, act16.adapter.activations]).toEqual(['f16', 2, 'f16']);
      expect([act32.activations, act32.activationBytes, act32.adapter.activations]).toEqual(['f32', 4, 'f32']);
      expect(act16.capsKey).not.toBe(act32.capsKey);
      await act16.pipeline(l2normKernel, undefined);
      expect(shaders[0]).toMatch(/enable f16;\s*(enable subgroups;\s*)?alias act = f16;/);
      expect(shaders[0]).toMatch(/var<storage, read_write> x: array<act>;/);
      // A buffer of 4 f16 rows of 8 passes the size check that 4-byte elements fail.
      const args = { tokens: 4, heads: 1, dim: 8, tokenStride: 8, scaledHeads: 0, scale: 1 };
      await expect(l2norm(act16, { ...args, x: actBuffer(act16, 'x', 32) })).resolves.toBeDefined();
      expect(() => l2norm(act32, { ...args, x: act32.storage('x', 64) })).toThrow(/l2norm: x needs 32 elements \(128 bytes\)/);
    } finally {
      act16.destroy();
      act32.destroy();
    }
  });
});
