import { ModelFormatError } from '../errors.ts';
import type { GgufTensorInfo } from './gguf_header.ts';
import type { GgufMetadata } from './gguf_metadata.ts';
import type { GgufLayout } from './gguf_names.ts';

/**
 * A Hugging Face text config.json from llama.cpp's qwen35 / qwen35moe metadata (the keys llama-model.cpp
 * reads; spec §3.2), flat (no text_config), so parseConfig reads it like any text-only checkpoint.
 */

const ARCHITECTURES: Record<string, { modelType: string; hfClass: string }> = {
  qwen35: { modelType: 'qwen3_5', hfClass: 'Qwen3_5ForCausalLM' },
  qwen35moe: { modelType: 'qwen3_5_moe', hfClass: 'Qwen3_5MoeForCausalLM' },
};

export interface SynthesizedConfig {
  json: Record<string, unknown>;
  layout: GgufLayout;
}

export function synthesizeConfig(meta: GgufMetadata, tensors: Map<string, GgufTensorInfo>): SynthesizedConfig {
  const arch = meta.string('general.architecture');
  const known = ARCHITECTURES[arch];
  if (!known) {
    throw new ModelFormatError(`general.architecture is "${arch}", not a Qwen3.5 model (qwen35 or qwen35moe)`, meta.file);
  }
  const key = (k: string) => `${arch}.${k}`;
  const blocks = meta.int(key('block_count'));
  const mtpLayers = meta.optionalInt(key('nextn_predict_layers')) ?? 0;
  if (mtpLayers >= blocks)
    throw new ModelFormatError(`metadata key ${key('nextn_predict_layers')}: ${mtpLayers} leaves no main layers of ${blocks} blocks`, meta.file);
  const numLayers = blocks - mtpLayers;
  // Counts are checked against the file's own tensors before anything is built from them (one entry per layer).
  const held = new Set<string>();
  for (const name of tensors.keys()) {
    const block = /^blk\.(\d+)\./.exec(name)?.[1];
    if (block !== undefined) held.add(block);
  }
  if (numLayers > held.size) {
    throw new ModelFormatError(
      `metadata key ${key('block_count')}: ${blocks} blocks (${numLayers} main layers), but the file's tensors hold ${held.size} blocks`,
      meta.file,
    );
  }
  const interval = meta.optionalInt(key('full_attention_interval'), 1) ?? 4;

  const headDim = meta.int(key('attention.key_length'));
  const valueLength = meta.optionalInt(key('attention.value_length'), 1);
  if (valueLength !== undefined && valueLength !== headDim) {
    throw new ModelFormatError(
      `metadata key ${key('attention.value_length')}: ${valueLength} differs from attention.key_length ${headDim} (Qwen3.5 uses one head_dim)`,
      meta.file,
    );
  }
  const rotaryDim = meta.int(key('rope.dimension_count'));
  const valueHeads = meta.int(key('ssm.time_step_rank'));
  const innerSize = meta.int(key('ssm.inner_size'));
  if (innerSize % valueHeads !== 0) {
    throw new ModelFormatError(`metadata key ${key('ssm.inner_size')}: ${innerSize} is not a multiple of ssm.time_step_rank ${valueHeads}`, meta.file);
  }
  const layout: GgufLayout = {
    numLayers,
    linearKeyHeads: meta.int(key('ssm.group_count')),
    linearValueHeads: valueHeads,
    linearKeyDim: meta.int(key('ssm.state_size')),
    linearValueDim: innerSize / valueHeads,
  };

  const json: Record<string, unknown> = {
    architectures: [known.hfClass],
    model_type: known.modelType,
    hidden_size: meta.int(key('embedding_length')),
    num_hidden_layers: numLayers,
    full_attention_interval: interval,
    num_attention_heads: meta.int(key('attention.head_count')),
    num_key_value_heads: kvHeads(meta, key('attention.head_count_kv'), numLayers, interval),
    head_dim: headDim,
    rope_parameters: { rope_type: 'default', rope_theta: meta.number(key('rope.freq_base')), partial_rotary_factor: rotaryDim / headDim },
    linear_num_key_heads: layout.linearKeyHeads,
    linear_num_value_heads: layout.linearValueHeads,
    linear_key_head_dim: layout.linearKeyDim,
    linear_value_head_dim: layout.linearValueDim,
    linear_conv_kernel_dim: meta.int(key('ssm.conv_kernel')),
    hidden_act: 'silu',
    attn_output_gate: true,
    rms_norm_eps: meta.number(key('attention.layer_norm_rms_epsilon')),
    max_position_embeddings: meta.int(key('context_length')),
    vocab_size: vocabSize(meta, tensors),
    tie_word_embeddings: !tensors.has('output.weight'),
    mtp_num_hidden_layers: mtpLayers,
  };
  if (arch === 'qwen35moe') {
    json.num_experts = meta.int(key('expert_count'), 'required for qwen35moe');
    checkExpertTensors(meta, tensors, key('expert_count'), json.num_experts as number);
    json.num_experts_per_tok = meta.int(key('expert_used_count'), 'required for qwen35moe');
    json.moe_intermediate_size = meta.int(key('expert_feed_forward_length'), 'required for qwen35moe');
    json.shared_expert_intermediate_size = meta.int(key('expert_shared_feed_forward_length'), 'required for qwen35moe');
  } else {
    json.intermediate_size = meta.int(key('feed_forward_length'), 'required for qwen35');
  }
  const bos = meta.optionalInt('tokenizer.ggml.bos_token_id');
  const eos = meta.optionalInt('tokenizer.ggml.eos_token_id');
  if (bos !== undefined) json.bos_token_id = bos;
  if (eos !== undefined) json.eos_token_id = eos;
  return { json, layout };
}

/**
 * Every stacked expert tensor ({cols, rows, E}) holds expert_count experts of non-empty rows: it is split into
 * one tensor per expert, so its E is checked before that happens.
 */
function checkExpertTensors(meta: GgufMetadata, tensors: Map<string, GgufTensorInfo>, countKey: string, experts: number): void {
  for (const [name, info] of tensors) {
    if (!/^blk\.\d+\.ffn_(gate|up|down|gate_up)_exps\.weight$/.test(name) || info.dims.length !== 3) continue;
    const [cols, rows, count] = info.dims;
    if (count !== experts || cols < 1 || rows < 1) {
      throw new ModelFormatError(`dims [${info.dims}] are not {cols, rows, ${experts}} (metadata key ${countKey} is ${experts})`, meta.file, name);
    }
  }
}

/** A number, or (llama.cpp allows it) one per layer: then the full-attention layers must agree. */
function kvHeads(meta: GgufMetadata, key: string, numLayers: number, interval: number): number {
  const value = meta.intOrArray(key);
  if (!Array.isArray(value)) return value;
  const attention = value.filter((_, i) => i < numLayers && (i + 1) % interval === 0);
  const distinct = [...new Set(attention)];
  if (distinct.length !== 1 || distinct[0] < 1) {
    throw new ModelFormatError(`metadata key ${key}: full-attention layers give ${JSON.stringify(distinct)}, expected one positive count`, meta.file);
  }
  return distinct[0];
}

/** The embedding's rows (the model's vocab_size); the token list may be shorter (padding rows) but not longer. */
function vocabSize(meta: GgufMetadata, tensors: Map<string, GgufTensorInfo>): number {
  const embedding = tensors.get('token_embd.weight');
  const tokens = meta.has('tokenizer.ggml.tokens') ? meta.stringArray('tokenizer.ggml.tokens').length : undefined;
  if (!embedding) {
    if (tokens === undefined) throw new ModelFormatError('has neither token_embd.weight nor tokenizer.ggml.tokens: the vocabulary size is unknown', meta.file);
    return tokens;
  }
  const rows = embedding.dims.length === 2 ? embedding.dims[1] : 0;
  if (rows < 1) throw new ModelFormatError(`dims [${embedding.dims}] are not {hidden, vocab}`, meta.file, 'token_embd.weight');
  if (tokens !== undefined && tokens > rows) {
    throw new ModelFormatError(`metadata key tokenizer.ggml.tokens: ${tokens} tokens but token_embd.weight has only ${rows} rows`, meta.file);
  }
  return rows;
}
