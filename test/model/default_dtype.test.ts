import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { GpuContext } from '../../src/gpu/context.ts';
import type { GpuTensor, WeightDtype } from '../../src/gpu/tensor.ts';
import { createNodeContext } from '../../src/hosts/node/gpu.ts';
import { INT4_DEFAULT_BELOW_BITS, fileBitsPerWeight, loadModel } from '../../src/model/load.ts';
import { openModel } from '../../src/storage/locate.ts';
import { planCheckpoint } from '../../src/model/plan.ts';
import { dequantizeQ4Item, q4ItemWords } from '../../src/numeric/q4.ts';
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
async function ggufOf(type: GgmlTypeName, blockSize: number, fixture: 'tiny-qwen35' | 'tiny-qwen35-moe' = 'tiny-qwen35'): Promise<string> {
  const gguf = await writeFixtureGguf(fixture, {
    types: (_name, dims) => (dims.length === 1 || dims[1] === 1 ? 'F32' : dims[0] % blockSize === 0 ? type : 'F16'),
  });
  return join(gguf.dir, gguf.file);
}

/** The GPU tensors a model's weights hold, by key (GpuTensor.name). */
function heldTensors(weights: unknown, out = new Map<string, GpuTensor>()): Map<string, GpuTensor> {
  if (weights && typeof weights === 'object') {
    if ('parts' in weights && 'itemStride' in weights) out.set((weights as GpuTensor).name, weights as GpuTensor);
    else for (const value of Object.values(weights)) heldTensors(value, out);
  }
  return out;
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

  for (const fixture of ['tiny-qwen35', 'tiny-qwen35-moe'] as const) {
    it(`${fixture}: a Q4_0 GGUF's INT4 copy holds the file's values exactly (nothing re-quantised)`, async () => {
      const checkpoint = await openModel(await ggufOf('Q4_0', 32, fixture));
      const model = await loadModel(ctx, checkpoint, { dtype: 'q4', dtypeGiven: true });
      try {
        const held = heldTensors(model.weights);
        let copied = 0;
        for (const spec of (await planCheckpoint(checkpoint)).specs) {
          const tensor = held.get(spec.key);
          if (tensor?.dtype !== 'q4') continue;
          // Every item of the GPU tensor, dequantised.
          const words = q4ItemWords(tensor.itemStride);
          const items: Float32Array[] = [];
          for (const part of tensor.parts) {
            const all = new Uint32Array(await ctx.read(part.buffer, 0, part.count * words * 4));
            for (let i = 0; i < part.count; i++) items.push(dequantizeQ4Item(all.subarray(i * words, (i + 1) * words), tensor.itemStride));
          }
          for (const p of spec.sources) {
            const entry = checkpoint.tensors.get(p.source)!;
            if (!entry.readQ4Rows) continue;
            copied++;
            const cols = entry.shape[entry.shape.length - 1];
            const [count, rowsPerItem] = p.view;
            const file = new Float32Array((await entry.readRows(0, count * rowsPerItem)).buffer);
            for (let r = 0; r < count * rowsPerItem; r++) {
              const [item, row] = rowsPerItem === 1 ? [p.item + r, p.row] : [p.item + Math.floor(r / rowsPerItem), p.row + (r % rowsPerItem)];
              const values = items[item].subarray(row * tensor.rowStride, row * tensor.rowStride + cols);
              expect(values, `${p.source} row ${r}`).toEqual(file.subarray(r * cols, (r + 1) * cols));
            }
          }
        }
        expect(copied).toBeGreaterThan(8);
      } finally {
        model.destroy();
      }
    });
  }
});
