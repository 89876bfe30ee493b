import { copyFileSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect, it } from 'vitest';
import { type TensorData, encodeSafetensors, openSafetensorsCheckpoint } from '../../src/formats/safetensors.ts';
import { roundToQ4 } from '../../src/numeric/q4.ts';
import { bf16BitsToF32, f16BitsToF32 } from '../../src/numeric/half.ts';
import type { SourceTensor } from '../../src/formats/checkpoint.ts';
import { parseConfig } from '../../src/model/config.ts';
import { loadModel } from '../../src/model/load.ts';
import { tensorDtype } from '../../src/model/plan.ts';
import { mtpTensors, textModelTensors } from '../../src/model/tensors.ts';
import { Session } from '../../src/runtime/session.ts';
import { scoreIds } from '../../src/runtime/score.ts';
import { FileSource } from '../../src/storage/file.ts';
import { openModel } from '../../src/storage/locate.ts';
import type { GpuContext } from '../../src/gpu/context.ts';
import { FIXTURES, type FixtureName, compareLogprobs, fixtureDir, golden, goldenLogprobs } from '../helpers/fixtures.ts';
import { describeOnAdapters, readF32 } from '../helpers/gpu.ts';

async function readValues(t: SourceTensor): Promise<Float32Array> {
  const cols = t.shape[t.shape.length - 1];
  const bytes = await t.readRows(0, t.shape.reduce((a, b) => a * b, 1) / cols);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const n = t.shape.reduce((a, b) => a * b, 1);
  return Float32Array.from({ length: n }, (_, i) =>
    t.dtype === 'f32' ? view.getFloat32(4 * i, true) : (t.dtype === 'f16' ? f16BitsToF32 : bf16BitsToF32)(view.getUint16(2 * i, true)),
  );
}

/**
 * The fixture with every tensor the loader stores as a q4 matrix replaced by its quantised-dequantised values
 * (F32; a source row is a row of its destination, so quantising either gives the same groups). Other tensors
 * are copied as they are.
 */
async function dequantisedCheckpoint(fixture: FixtureName): Promise<string> {
  const src = fixtureDir(fixture);
  const checkpoint = await openSafetensorsCheckpoint(new FileSource(src));
  const config = parseConfig(JSON.parse(readFileSync(join(src, 'config.json'), 'utf8')));
  const prefix = checkpoint.tensors.has('model.language_model.embed_tokens.weight') ? 'model.language_model.' : 'model.';
  const naming = { prefix, fusedExperts: checkpoint.tensors.has(`${prefix}layers.0.mlp.experts.gate_up_proj`) };
  const specs = [...textModelTensors(config, naming), ...(checkpoint.tensors.has('mtp.fc.weight') ? mtpTensors(config, naming) : [])];
  const matrices = new Set(specs.filter((s) => tensorDtype(s, 'q4', config) === 'q4').flatMap((s) => s.sources.map((p) => p.source)));
  expect(matrices.size).toBeGreaterThan(10);
  const tensors: TensorData[] = [];
  for (const t of checkpoint.tensors.values()) {
    if (matrices.has(t.name)) {
      const cols = t.shape[t.shape.length - 1];
      const values = await readValues(t);
      tensors.push({ name: t.name, dtype: 'F32', shape: t.shape, data: new Uint8Array(roundToQ4(values, [values.length / cols, cols]).buffer) });
    } else {
      const cols = t.shape[t.shape.length - 1] ?? 1;
      tensors.push({
        name: t.name,
        dtype: t.fileDtype as TensorData['dtype'],
        shape: t.shape,
        data: await t.readRows(0, t.shape.reduce((a, b) => a * b, 1) / cols),
      });
    }
  }
  const dir = mkdtempSync(join(tmpdir(), 'qwen-q4-'));
  writeFileSync(join(dir, 'model.safetensors'), encodeSafetensors(tensors));
  for (const f of ['config.json', 'tokenizer.json', 'tokenizer_config.json', 'generation_config.json']) copyFileSync(join(src, f), join(dir, f));
  return dir;
}

/** Prompt logprobs (prefill: matmul), then the logits of a few decode steps (matvec). */
async function run(ctx: GpuContext, dir: string, dtype: 'f32' | 'q4', ids: number[], vocab: number): Promise<{ prefill: Float32Array; decode: Float32Array }> {
  const model = await loadModel(ctx, await openModel(dir), { dtype });
  expect(model.weights.lmHead?.dtype).toBe(dtype);
  const session = Session.create(ctx, model, { contextLength: ids.length });
  const prefill = new Float32Array(ids.length * vocab);
  await scoreIds(session, ids, (r, first) => prefill.set(r, first * vocab));
  const steps = 3;
  const decode = new Float32Array(steps * vocab);
  session.reset();
  await session.prefill(ids.slice(0, ids.length - steps));
  for (let i = 0; i < steps; i++) {
    session.feed(ids[ids.length - steps + i]);
    await session.decode();
    decode.set(await readF32(ctx, session.activations.logits, vocab), i * vocab);
  }
  session.destroy();
  model.destroy();
  return { prefill, decode };
}

describeOnAdapters(
  'model on q4 weights',
  (ctx) => {
    for (const fixture of FIXTURES) {
      it(`${fixture}: the q4 engine scores like the f32 engine on the dequantised checkpoint`, async () => {
        const g = golden(fixture);
        const ids = g.prompt_ids.slice(0, 40);
        const q4 = await run(ctx(), fixtureDir(fixture), 'q4', ids, g.vocab_size);
        const f32 = await run(ctx(), await dequantisedCheckpoint(fixture), 'f32', ids, g.vocab_size);
        expect(compareLogprobs(q4.prefill, f32.prefill, g.vocab_size).maxAbs).toBeLessThanOrEqual(5e-3);
        expect(compareLogprobs(q4.decode, f32.decode, g.vocab_size).maxAbs).toBeLessThanOrEqual(5e-3);
        // The weights did change: the original checkpoint scores differently.
        expect(compareLogprobs(q4.prefill, goldenLogprobs(fixture).subarray(0, q4.prefill.length), g.vocab_size).maxAbs).toBeGreaterThan(0.01);
      });
    }
  },
  { wholeModel: true },
);
