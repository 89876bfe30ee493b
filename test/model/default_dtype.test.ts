import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { GpuContext } from '../../src/gpu/context.ts';
import type { WeightDtype } from '../../src/gpu/tensor.ts';
import { createNodeContext } from '../../src/hosts/node/gpu.ts';
import { INT4_DEFAULT_BELOW_BITS, fileBitsPerWeight, loadModel } from '../../src/model/load.ts';
import { openModel } from '../../src/storage/locate.ts';
import { jsonLine, runCli } from '../helpers/cli.ts';
import { fixtureDir } from '../helpers/fixtures.ts';
import { type GgmlTypeName, removeWrittenGgufs, writeFixtureGguf } from '../helpers/gguf_writer.ts';

// A quantised GGUF loads as INT4 unless a dtype is asked for: in f16 or f32 it would take several times the memory
// its file does. Files of 6 bits per weight or more (Q6_K, Q8_0) and safetensors keep the caller's default.
let ctx: GpuContext;
beforeAll(async () => {
  ctx = await createNodeContext({ adapter: 'llvmpipe' });
});
afterAll(() => {
  ctx?.destroy();
  removeWrittenGgufs();
});

/** The fixture as a GGUF with its matrices in `type` where their rows are whole blocks (F32 vectors, F16 else). */
async function ggufOf(type: GgmlTypeName, blockSize: number): Promise<string> {
  const gguf = await writeFixtureGguf('tiny-qwen35', {
    types: (_name, dims) => (dims.length === 1 || dims[1] === 1 ? 'F32' : dims[0] % blockSize === 0 ? type : 'F16'),
  });
  return join(gguf.dir, gguf.file);
}

async function loadedDtype(path: string, options: { dtype: WeightDtype; dtypeGiven: boolean }): Promise<{ dtype: WeightDtype; bits: number }> {
  const checkpoint = await openModel(path);
  const model = await loadModel(ctx, checkpoint, options);
  try {
    return { dtype: model.dtype, bits: fileBitsPerWeight(checkpoint) };
  } finally {
    model.destroy();
  }
}

describe('the default weight dtype follows the checkpoint', () => {
  it('a 4-bit GGUF loads as INT4 unless a dtype is asked for', async () => {
    const path = await ggufOf('Q4_0', 32);
    const byDefault = await loadedDtype(path, { dtype: 'f32', dtypeGiven: false });
    expect(byDefault.bits).toBeLessThan(INT4_DEFAULT_BELOW_BITS);
    expect(byDefault.dtype).toBe('q4');
    expect((await loadedDtype(path, { dtype: 'f32', dtypeGiven: true })).dtype).toBe('f32');
    // The CLI says so, and how to keep the file's values.
    const r = await runCli('node', [
      'generate',
      '--model',
      path,
      '--prompt-ids',
      '977,82,962',
      '--max-tokens',
      '2',
      '--greedy',
      '--json',
      '--adapter',
      'llvmpipe',
    ]);
    expect(jsonLine(r).dtype).toBe('q4');
    expect(r.stderr).toMatch(/note: 4\.\d bits per weight in the file: held as int4 \(--dtype f16 keeps the file's values\)/);
  });

  it('a Q8_0 GGUF and bf16 safetensors keep the default', async () => {
    const q8 = await loadedDtype(await ggufOf('Q8_0', 32), { dtype: 'f32', dtypeGiven: false });
    expect(q8.bits).toBeGreaterThan(INT4_DEFAULT_BELOW_BITS);
    expect(q8.dtype).toBe('f32');
    const bf16 = await loadedDtype(fixtureDir('tiny-qwen35'), { dtype: 'f32', dtypeGiven: false });
    expect(bf16).toEqual({ dtype: 'f32', bits: 16 });
  });
});
