import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { syntheticGguf } from '../../src/bench/synthetic_gguf.ts';
import { readGgufHeader } from '../../src/formats/gguf_header.ts';
import { f16BitsToF32 } from '../../src/numeric/half.ts';
import { openCheckpoint } from '../../src/formats/open.ts';
import { parseConfig } from '../../src/model/config.ts';
import { planCheckpoint } from '../../src/model/plan.ts';
import { FileSource } from '../../src/storage/file.ts';
import { readJson } from '../../src/formats/source.ts';
import variants from '../../src/bench/variants.json' with { type: 'json' };

const dirs: string[] = [];
afterAll(() => dirs.forEach((d) => rmSync(d, { recursive: true, force: true })));

/** Real variants' proportions at a size a test can write. */
const SMALL = {
  model_type: 'qwen3_5_text',
  hidden_size: 64,
  num_hidden_layers: 4,
  num_attention_heads: 2,
  num_key_value_heads: 1,
  head_dim: 32,
  linear_num_key_heads: 2,
  linear_num_value_heads: 4,
  linear_key_head_dim: 32,
  linear_value_head_dim: 32,
  linear_conv_kernel_dim: 4,
  intermediate_size: 96,
  vocab_size: 512,
  tie_word_embeddings: false,
  rope_theta: 1e7,
  partial_rotary_factor: 0.25,
  rms_norm_eps: 1e-6,
  max_position_embeddings: 4096,
};
const SMALL_MOE = {
  ...SMALL,
  model_type: 'qwen3_5_moe_text',
  intermediate_size: undefined,
  num_experts: 4,
  num_experts_per_tok: 2,
  moe_intermediate_size: 32,
  shared_expert_intermediate_size: 32,
};

function write(config: Record<string, unknown>): { dir: string; file: string; bytes: Uint8Array[] } {
  const gguf = syntheticGguf(config);
  const dir = mkdtempSync(join(tmpdir(), 'qwen-synthetic-gguf-'));
  dirs.push(dir);
  const bytes = [...gguf.pieces()];
  writeFileSync(join(dir, 'model.gguf'), Buffer.concat(bytes));
  return { dir, file: 'model.gguf', bytes };
}

describe('synthetic GGUF', () => {
  for (const [name, raw] of [
    ['dense', SMALL],
    ['MoE', SMALL_MOE],
  ] as const) {
    it(`${name}: our GGUF reader sees the config it was made from and every tensor the model needs`, async () => {
      const { dir, file, bytes } = write(raw);
      expect(bytes.reduce((s, b) => s + b.length, 0)).toBe(syntheticGguf(raw).layout.totalBytes);
      const checkpoint = await openCheckpoint(new FileSource(dir), file);
      const config = parseConfig(await readJson(checkpoint.files, 'config.json'));
      const want = parseConfig(raw);
      for (const key of [
        'hiddenSize',
        'numLayers',
        'layerTypes',
        'numHeads',
        'numKvHeads',
        'headDim',
        'rotaryDim',
        'linearKeyHeads',
        'linearValueHeads',
        'intermediateSize',
        'moe',
        'vocabSize',
        'tieWordEmbeddings',
      ] as const) {
        expect(config[key], key).toEqual(want[key]);
      }
      const plan = await planCheckpoint(checkpoint);
      expect(plan.unusedTensors).toEqual([]);

      // Matrices are Q4_0 with the 1/(4.6·sqrt(fan-in)) scale; norms 1, ssm_a −0.5 (A_log = log 0.5 as read back).
      const q = checkpoint.tensors.get(`model.layers.0.mlp.${name === 'MoE' ? 'shared_expert.up_proj.weight' : 'up_proj.weight'}`)!;
      expect(q.fileDtype).toBe('Q4_0');
      const header = await readGgufHeader(new FileSource(dir), file);
      const info = header.tensors.find((t) => t.name === (name === 'MoE' ? 'blk.0.ffn_up_shexp.weight' : 'blk.0.ffn_up.weight'))!;
      const block = await new FileSource(dir).read(file, info.offset, 18);
      expect(f16BitsToF32(block[0] | (block[1] << 8))).toBeCloseTo(1 / (4.6 * 8), 4);
      const norm = checkpoint.tensors.get('model.layers.0.input_layernorm.weight')!;
      const normValues = new Float32Array((await norm.readRows(0, 1)).slice().buffer);
      expect([...normValues].every((v) => v === 0)).toBe(true); // GGUF stores 1 + w
      const aLog = checkpoint.tensors.get('model.layers.0.linear_attn.A_log')!;
      const a = new Float32Array((await aLog.readRows(0, 1)).slice().buffer);
      expect(a[0]).toBeCloseTo(Math.log(0.5), 6);
    });
  }

  it("has the real variants' shapes: Q4_0 matrices whole blocks, sizes as expected, pieces that add up", () => {
    const sizes: Record<string, number> = {};
    for (const name of Object.keys(variants)) {
      const g = syntheticGguf(name);
      sizes[name] = g.layout.totalBytes;
      const arch = g.config.moe ? 'qwen35moe' : 'qwen35';
      expect(g.metadata.find((e) => e.key === 'general.architecture')!.value).toBe(arch);
      expect(g.tensors.filter((t) => t.type === 'Q4_0').every((t) => t.dims[0] % 32 === 0)).toBe(true);
    }
    // ~0.43 GB, ~5.3 GB, ~19.6 GB (as llama.cpp's model sizes of the same shapes).
    expect(sizes['qwen3.5-0.8b'] / 1e9).toBeCloseTo(0.43, 1);
    expect(sizes['qwen3.5-9b'] / 1e9).toBeGreaterThan(5);
    expect(sizes['qwen3.5-9b'] / 1e9).toBeLessThan(5.5);
    expect(sizes['qwen3.5-35b-a3b'] / 1e9).toBeGreaterThan(19);
    expect(sizes['qwen3.5-35b-a3b'] / 1e9).toBeLessThan(20.5);
    // --layers keeps the first N layers.
    expect(syntheticGguf('qwen3.5-0.8b', { layers: 4 }).config.numLayers).toBe(4);
    let total = 0;
    for (const piece of syntheticGguf('qwen3.5-0.8b', { layers: 4 }).pieces()) total += piece.length;
    expect(total).toBe(syntheticGguf('qwen3.5-0.8b', { layers: 4 }).layout.totalBytes);
  });
});
