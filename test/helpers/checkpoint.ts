import { copyFileSync, mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type TensorData, encodeSafetensors } from '../../src/formats/safetensors.ts';
import { f32ToF16Bits } from '../../src/numeric/half.ts';
import { fixtureDir } from './fixtures.ts';
import { randn } from './random.ts';

/**
 * Writes a random Qwen3.5 checkpoint in the Hugging Face layout, with the variations real checkpoints
 * show: nested or flat config, rope_parameters or top-level rope keys, layer_types or the interval,
 * the VLM prefix or the text-only one, fused or per-expert MoE tensors, BF16/F16/F32, shards. Weight
 * scales follow the fixtures (projections ~ 1/sqrt(fan-in)). The tokenizer files are the fixture's.
 */
export interface CheckpointSpec {
  seed: number;
  hidden: number;
  layers: number;
  heads: [number, number];
  linearHeads: [number, number];
  intermediate?: number;
  experts?: { count: number; topk: number; intermediate: number; shared: number; perExpert?: boolean };
  tied: boolean;
  dtype: 'BF16' | 'F16' | 'F32';
  flat?: boolean;
  topLevelRope?: boolean;
  interval?: boolean;
  textOnlyPrefix?: boolean;
  shards?: number;
  mtp?: boolean;
}

const VOCAB = 1024;

function encode(values: Float32Array, dtype: CheckpointSpec['dtype']): Uint8Array {
  if (dtype === 'F32') return new Uint8Array(values.buffer.slice(0));
  const out = new Uint16Array(values.length);
  const f = new Float32Array(1);
  const u = new Uint32Array(f.buffer);
  for (let i = 0; i < values.length; i++) {
    if (dtype === 'F16') out[i] = f32ToF16Bits(values[i]);
    else {
      f[0] = values[i];
      out[i] = (u[0] + 0x7fff + ((u[0] >>> 16) & 1)) >>> 16; // round to nearest even
    }
  }
  return new Uint8Array(out.buffer);
}

export function writeCheckpoint(spec: CheckpointSpec): string {
  const dir = mkdtempSync(join(tmpdir(), 'qwen-ckpt-'));
  const [nq, nkv] = spec.heads;
  const [nk, nv] = spec.linearHeads;
  const H = spec.hidden;
  const D = 256;
  const dk = 128;
  const convDim = 2 * nk * dk + nv * dk;
  let seed = spec.seed;
  const tensors: TensorData[] = [];
  const add = (name: string, shape: number[], scale: number, mean = 0, dtype = spec.dtype) => {
    const n = shape.reduce((a, b) => a * b, 1);
    const values = randn(n, seed++, scale).map((v) => v + mean);
    tensors.push({ name, dtype, shape, data: encode(values, dtype) });
  };
  const p = spec.textOnlyPrefix ? 'model.' : 'model.language_model.';
  const fan = (n: number) => 1 / Math.sqrt(n);
  // Tied embeddings double as the output head, so they are smaller (as in the fixtures: sd 0.3 tied, 1 untied).
  add(`${p}embed_tokens.weight`, [VOCAB, H], spec.tied ? 0.3 : 1);
  const layerTypes = Array.from({ length: spec.layers }, (_, i) => ((i + 1) % 4 === 0 ? 'full_attention' : 'linear_attention'));
  const decoderLayer = (lp: string, type: string) => {
    add(`${lp}.input_layernorm.weight`, [H], 0.1);
    add(`${lp}.post_attention_layernorm.weight`, [H], 0.1);
    if (type === 'full_attention') {
      add(`${lp}.self_attn.q_proj.weight`, [nq * 2 * D, H], fan(H));
      add(`${lp}.self_attn.k_proj.weight`, [nkv * D, H], fan(H));
      add(`${lp}.self_attn.v_proj.weight`, [nkv * D, H], fan(H));
      add(`${lp}.self_attn.o_proj.weight`, [H, nq * D], 0.5 * fan(nq * D));
      add(`${lp}.self_attn.q_norm.weight`, [D], 0.1);
      add(`${lp}.self_attn.k_norm.weight`, [D], 0.1);
    } else {
      add(`${lp}.linear_attn.in_proj_qkv.weight`, [convDim, H], fan(H));
      add(`${lp}.linear_attn.in_proj_z.weight`, [nv * dk, H], fan(H));
      add(`${lp}.linear_attn.in_proj_b.weight`, [nv, H], fan(H));
      add(`${lp}.linear_attn.in_proj_a.weight`, [nv, H], fan(H));
      add(`${lp}.linear_attn.conv1d.weight`, [convDim, 1, 4], 0.5);
      add(`${lp}.linear_attn.dt_bias`, [nv], 0.2, 1);
      add(`${lp}.linear_attn.A_log`, [nv], 0.4, 1.6, 'F32');
      add(`${lp}.linear_attn.norm.weight`, [dk], 0.1, 1);
      add(`${lp}.linear_attn.out_proj.weight`, [H, nv * dk], 0.5 * fan(nv * dk));
    }
    if (spec.experts) {
      const { count: E, intermediate: Im, shared: Is, perExpert } = spec.experts;
      add(`${lp}.mlp.gate.weight`, [E, H], 3 * fan(H));
      if (perExpert) {
        for (let e = 0; e < E; e++) {
          add(`${lp}.mlp.experts.${e}.gate_proj.weight`, [Im, H], fan(H));
          add(`${lp}.mlp.experts.${e}.up_proj.weight`, [Im, H], fan(H));
          add(`${lp}.mlp.experts.${e}.down_proj.weight`, [H, Im], 0.5 * fan(Im));
        }
      } else {
        add(`${lp}.mlp.experts.gate_up_proj`, [E, 2 * Im, H], fan(H));
        add(`${lp}.mlp.experts.down_proj`, [E, H, Im], 0.5 * fan(Im));
      }
      add(`${lp}.mlp.shared_expert.gate_proj.weight`, [Is, H], fan(H));
      add(`${lp}.mlp.shared_expert.up_proj.weight`, [Is, H], fan(H));
      add(`${lp}.mlp.shared_expert.down_proj.weight`, [H, Is], 0.5 * fan(Is));
      add(`${lp}.mlp.shared_expert_gate.weight`, [1, H], fan(H));
    } else {
      const I = spec.intermediate!;
      add(`${lp}.mlp.gate_proj.weight`, [I, H], fan(H));
      add(`${lp}.mlp.up_proj.weight`, [I, H], fan(H));
      add(`${lp}.mlp.down_proj.weight`, [H, I], 0.5 * fan(I));
    }
  };
  layerTypes.forEach((type, i) => decoderLayer(`${p}layers.${i}`, type));
  add(`${p}norm.weight`, [H], 0.1);
  if (!spec.tied) add('lm_head.weight', [VOCAB, H], 0.35);
  if (spec.mtp) {
    add('mtp.fc.weight', [H, 2 * H], fan(2 * H));
    for (const n of ['pre_fc_norm_embedding', 'pre_fc_norm_hidden', 'norm']) add(`mtp.${n}.weight`, [H], 0.1);
    decoderLayer('mtp.layers.0', 'full_attention');
  }
  add('model.visual.patch_embed.proj.weight', [8, 3, 2, 4, 4], 0.1);

  const text: Record<string, unknown> = {
    model_type: spec.experts ? 'qwen3_5_moe_text' : 'qwen3_5_text',
    hidden_size: H,
    num_hidden_layers: spec.layers,
    num_attention_heads: nq,
    num_key_value_heads: nkv,
    head_dim: D,
    linear_num_key_heads: nk,
    linear_num_value_heads: nv,
    linear_key_head_dim: dk,
    linear_value_head_dim: dk,
    linear_conv_kernel_dim: 4,
    hidden_act: 'silu',
    rms_norm_eps: 1e-6,
    max_position_embeddings: 262144,
    attn_output_gate: true,
    mtp_num_hidden_layers: spec.mtp ? 1 : 0,
    vocab_size: VOCAB,
    eos_token_id: 976,
  };
  if (spec.interval) text.full_attention_interval = 4;
  else text.layer_types = layerTypes;
  if (spec.topLevelRope) Object.assign(text, { rope_theta: 10_000_000, partial_rotary_factor: 0.25 });
  else
    text.rope_parameters = { rope_type: 'default', rope_theta: 10_000_000, partial_rotary_factor: 0.25, mrope_section: [11, 11, 10], mrope_interleaved: true };
  if (spec.experts) {
    Object.assign(text, {
      num_experts: spec.experts.count,
      num_experts_per_tok: spec.experts.topk,
      moe_intermediate_size: spec.experts.intermediate,
      shared_expert_intermediate_size: spec.experts.shared,
    });
  } else text.intermediate_size = spec.intermediate;
  const modelType = spec.experts ? 'qwen3_5_moe' : 'qwen3_5';
  const config = spec.flat
    ? { ...text, model_type: modelType, tie_word_embeddings: spec.tied }
    : { model_type: modelType, text_config: text, tie_word_embeddings: spec.tied, vision_config: { depth: 1 } };
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'config.json'), JSON.stringify(config, null, 1));
  for (const f of ['tokenizer.json', 'tokenizer_config.json', 'generation_config.json']) copyFileSync(join(fixtureDir('tiny-qwen35'), f), join(dir, f));

  const shards = spec.shards ?? 1;
  if (shards === 1) writeFileSync(join(dir, 'model.safetensors'), encodeSafetensors(tensors));
  else {
    const weightMap: Record<string, string> = {};
    const per = Math.ceil(tensors.length / shards);
    for (let s = 0; s < shards; s++) {
      const file = `model-${String(s + 1).padStart(5, '0')}-of-${String(shards).padStart(5, '0')}.safetensors`;
      const part = tensors.slice(s * per, (s + 1) * per);
      part.forEach((t) => (weightMap[t.name] = file));
      writeFileSync(join(dir, file), encodeSafetensors(part));
    }
    writeFileSync(join(dir, 'model.safetensors.index.json'), JSON.stringify({ metadata: {}, weight_map: weightMap }));
  }
  return dir;
}
