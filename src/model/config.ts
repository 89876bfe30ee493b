import { ConfigError } from '../errors.ts';

/**
 * The text model's settings (spec §1), from config.json in any of the layouts real checkpoints use:
 * text settings nested under `text_config` (the VLM wrapper) or flat; RoPE in `rope_parameters` or as
 * top-level `rope_theta` / `partial_rotary_factor`; `layer_types` or `full_attention_interval`.
 */

export type LayerType = 'linear_attention' | 'full_attention';

export interface MoeConfig {
  numExperts: number;
  topk: number;
  expertIntermediate: number;
  sharedIntermediate: number;
}

export interface Qwen35Config {
  modelType: 'qwen3_5' | 'qwen3_5_moe';
  hiddenSize: number;
  numLayers: number;
  layerTypes: LayerType[];
  /** Gated attention: Nq, Nkv, Dh. */
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  rotaryDim: number;
  ropeTheta: number;
  /** Gated DeltaNet: Nk, Nv, Dk, Dv, conv taps. */
  linearKeyHeads: number;
  linearValueHeads: number;
  linearKeyDim: number;
  linearValueDim: number;
  convKernel: number;
  /** Dense SwiGLU width; absent for MoE models. */
  intermediateSize?: number;
  moe?: MoeConfig;
  rmsNormEps: number;
  maxPositions: number;
  vocabSize: number;
  tieWordEmbeddings: boolean;
  mtpLayers: number;
}

type Json = Record<string, unknown>;

const DENSE_TYPES = new Set(['qwen3_5', 'qwen3_5_text']);
const MOE_TYPES = new Set(['qwen3_5_moe', 'qwen3_5_moe_text']);

export function parseConfig(raw: unknown, file = 'config.json'): Qwen35Config {
  if (!isObject(raw)) throw new ConfigError('expected a JSON object', '(root)', file);
  const nested = isObject(raw.text_config);
  const text: Json = nested ? (raw.text_config as Json) : raw;
  const at = (field: string) => (nested ? `text_config.${field}` : field);

  const topType = raw.model_type;
  const textType = text.model_type;
  const type = typeof topType === 'string' ? topType : textType;
  if (typeof type !== 'string') throw new ConfigError('missing; expected "qwen3_5" or "qwen3_5_moe"', 'model_type', file);
  if (!DENSE_TYPES.has(type) && !MOE_TYPES.has(type)) {
    throw new ConfigError(`"${type}" is not a Qwen3.5 model (expected qwen3_5 or qwen3_5_moe)`, 'model_type', file);
  }
  const isMoe = MOE_TYPES.has(type);

  const int = (field: string, fallback?: number): number => {
    const v = text[field] ?? fallback;
    if (typeof v !== 'number' || !Number.isInteger(v) || v <= 0) {
      throw new ConfigError(v === undefined ? 'missing' : `expected a positive integer, got ${JSON.stringify(v)}`, at(field), file);
    }
    return v;
  };
  const num = (value: unknown, field: string, fallback?: number): number => {
    const v = value ?? fallback;
    if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) {
      throw new ConfigError(v === undefined ? 'missing' : `expected a positive number, got ${JSON.stringify(v)}`, field, file);
    }
    return v;
  };

  const hiddenAct = text.hidden_act ?? 'silu';
  if (hiddenAct !== 'silu') throw new ConfigError(`"${String(hiddenAct)}" is not supported (Qwen3.5 uses silu)`, at('hidden_act'), file);
  if (text.attn_output_gate === false) throw new ConfigError('false is not supported (Qwen3.5 gates attention output)', at('attn_output_gate'), file);

  const numLayers = int('num_hidden_layers');
  const layerTypes = parseLayerTypes(text, numLayers, at, file);

  const headDim = int('head_dim', 256);
  const rope = isObject(text.rope_parameters) ? (text.rope_parameters as Json) : {};
  const ropeAt = (field: string) => (isObject(text.rope_parameters) && field in rope ? at(`rope_parameters.${field}`) : at(field));
  const ropeTheta = num(rope.rope_theta ?? text.rope_theta, ropeAt('rope_theta'), 10_000_000);
  const partial = num(rope.partial_rotary_factor ?? text.partial_rotary_factor, ropeAt('partial_rotary_factor'), 0.25);
  const rotaryDim = Math.round(headDim * partial);
  if (partial > 1 || rotaryDim % 2 !== 0) {
    throw new ConfigError(
      `${partial} gives a rotary dimension of ${headDim * partial}, which must be even and at most head_dim`,
      ropeAt('partial_rotary_factor'),
      file,
    );
  }
  const ropeType = rope.rope_type ?? text.rope_type ?? 'default';
  if (ropeType !== 'default') throw new ConfigError(`"${String(ropeType)}" is not supported (Qwen3.5 uses default RoPE)`, ropeAt('rope_type'), file);

  const numHeads = int('num_attention_heads');
  const numKvHeads = int('num_key_value_heads');
  if (numHeads % numKvHeads !== 0) {
    throw new ConfigError(`num_attention_heads ${numHeads} is not a multiple of num_key_value_heads ${numKvHeads}`, at('num_key_value_heads'), file);
  }
  const linearKeyHeads = int('linear_num_key_heads');
  const linearValueHeads = int('linear_num_value_heads');
  if (linearValueHeads % linearKeyHeads !== 0) {
    throw new ConfigError(
      `linear_num_value_heads ${linearValueHeads} is not a multiple of linear_num_key_heads ${linearKeyHeads}`,
      at('linear_num_value_heads'),
      file,
    );
  }

  let moe: MoeConfig | undefined;
  let intermediateSize: number | undefined;
  if (isMoe) {
    moe = {
      numExperts: int('num_experts'),
      topk: int('num_experts_per_tok'),
      expertIntermediate: int('moe_intermediate_size'),
      sharedIntermediate: int('shared_expert_intermediate_size'),
    };
    if (moe.topk > moe.numExperts) throw new ConfigError(`${moe.topk} is more than num_experts ${moe.numExperts}`, at('num_experts_per_tok'), file);
  } else {
    intermediateSize = int('intermediate_size');
  }

  const tie = raw.tie_word_embeddings ?? text.tie_word_embeddings ?? false;
  if (typeof tie !== 'boolean') throw new ConfigError(`expected true or false, got ${JSON.stringify(tie)}`, 'tie_word_embeddings', file);
  const mtpLayers = text.mtp_num_hidden_layers ?? 0;
  if (typeof mtpLayers !== 'number' || !Number.isInteger(mtpLayers) || mtpLayers < 0) {
    throw new ConfigError(`expected a non-negative integer, got ${JSON.stringify(mtpLayers)}`, at('mtp_num_hidden_layers'), file);
  }

  return {
    modelType: isMoe ? 'qwen3_5_moe' : 'qwen3_5',
    hiddenSize: int('hidden_size'),
    numLayers,
    layerTypes,
    numHeads,
    numKvHeads,
    headDim,
    rotaryDim,
    ropeTheta,
    linearKeyHeads,
    linearValueHeads,
    linearKeyDim: int('linear_key_head_dim', 128),
    linearValueDim: int('linear_value_head_dim', 128),
    convKernel: int('linear_conv_kernel_dim', 4),
    intermediateSize,
    moe,
    rmsNormEps: num(text.rms_norm_eps, at('rms_norm_eps'), 1e-6),
    maxPositions: int('max_position_embeddings', 262_144),
    vocabSize: int('vocab_size'),
    tieWordEmbeddings: tie,
    mtpLayers,
  };
}

function parseLayerTypes(text: Json, numLayers: number, at: (f: string) => string, file: string): LayerType[] {
  if (text.layer_types !== undefined) {
    const types = text.layer_types;
    if (!Array.isArray(types) || types.length !== numLayers) {
      throw new ConfigError(`expected a list of ${numLayers} layer types`, at('layer_types'), file);
    }
    types.forEach((t, i) => {
      if (t !== 'linear_attention' && t !== 'full_attention') {
        throw new ConfigError(`entry ${i} is "${String(t)}"; expected linear_attention or full_attention`, at('layer_types'), file);
      }
    });
    return types as LayerType[];
  }
  const interval = text.full_attention_interval ?? 4;
  if (typeof interval !== 'number' || !Number.isInteger(interval) || interval <= 0) {
    throw new ConfigError(`expected a positive integer, got ${JSON.stringify(interval)}`, at('full_attention_interval'), file);
  }
  // transformers' Qwen3_5TextConfig: layer i is full attention iff (i + 1) % interval == 0.
  return Array.from({ length: numLayers }, (_, i) => ((i + 1) % interval === 0 ? 'full_attention' : 'linear_attention'));
}

function isObject(v: unknown): v is Json {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Widths derived from the config, named as in the spec. */
export function dims(c: Qwen35Config) {
  const keyDim = c.linearKeyHeads * c.linearKeyDim;
  const valueDim = c.linearValueHeads * c.linearValueDim;
  const convDim = 2 * keyDim + valueDim;
  return {
    keyDim,
    valueDim,
    convDim,
    /** DeltaNet fused input projection rows: qkv | z | b | a. */
    deltaNetProj: convDim + valueDim + 2 * c.linearValueHeads,
    /** Attention fused projection rows: per head [q | gate], then k, then v. */
    attentionProj: c.numHeads * 2 * c.headDim + 2 * c.numKvHeads * c.headDim,
    attentionOut: c.numHeads * c.headDim,
  };
}
