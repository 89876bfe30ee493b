import type { GpuTensor } from '../gpu/tensor.ts';
import type { Qwen35Config } from './config.ts';
import { InternalError } from '../errors.ts';
import { type LayerRange, wholeModel } from './tensors.ts';

/** The GPU tensors of one model, shaped like the HF modules they come from (keys from tensors.ts). */

export interface DeltaNetWeights {
  kind: 'linear_attention';
  /** [qkv | z | b | a] rows, fused in_proj_{qkv,z,b,a}. */
  inProj: GpuTensor;
  /** [conv_dim, K] taps (f32). */
  conv: GpuTensor;
  /**
   * [2, nv] f32: A_log, then dt_bias, copied into one buffer at load: the decay's two parameters take one binding, which
   * keeps the fused decode kernel within WebGPU's default of 8 storage buffers per stage.
   */
  decayParams: GPUBuffer;
  norm: GpuTensor;
  outProj: GpuTensor;
}

export interface AttentionWeights {
  kind: 'full_attention';
  /** Per head [q | gate], then k, then v. */
  qkvProj: GpuTensor;
  qNorm: GpuTensor;
  kNorm: GpuTensor;
  oProj: GpuTensor;
}

export interface DenseMlpWeights {
  kind: 'dense';
  /** [I, 2, H]: gate and up rows paired. */
  gateUp: GpuTensor;
  down: GpuTensor;
}

export interface MoeWeights {
  kind: 'moe';
  /** [E + 1, H]: router rows, then the shared expert's gate row. */
  router: GpuTensor;
  /** [E, 2 Im, H] and [E, H, Im], indexed by slot. */
  expertsGateUp: GpuTensor;
  expertsDown: GpuTensor;
  /** Expert id → slot (u32[E]): the identity when all experts are resident; when streamed, kept by the runtime's ExpertCache (NOT_RESIDENT for experts no slot holds). */
  slots: GPUBuffer;
  sharedGateUp: GpuTensor;
  sharedDown: GpuTensor;
}

export interface DecoderLayerWeights {
  inputNorm: GpuTensor;
  mixer: DeltaNetWeights | AttentionWeights;
  postNorm: GpuTensor;
  mlp: DenseMlpWeights | MoeWeights;
}

/** The multi-token-prediction block (spec §2.7); it shares the embedding and the LM head of the main model. */
export interface MtpWeights {
  /** [H, 2H]: columns of the normed embedding, then of the normed hidden state. */
  fc: GpuTensor;
  preFcNormEmbedding: GpuTensor;
  preFcNormHidden: GpuTensor;
  /** Full-attention decoder layers (every Qwen3.5 checkpoint has one; multi-step drafting reuses it). */
  layers: DecoderLayerWeights[];
  norm: GpuTensor;
}

/**
 * A model's tensors, or a pipeline stage's (Model.layers): `layers` are its own, in order; the embedding is on the
 * first stage (and the last when tied), the final norm and LM head on the last.
 */
export interface ModelWeights {
  embed?: GpuTensor;
  layers: DecoderLayerWeights[];
  norm?: GpuTensor;
  /** The embedding itself when tie_word_embeddings. */
  lmHead?: GpuTensor;
  /** Present when the model was loaded with its MTP block (LoadOptions.mtp). */
  mtp?: MtpWeights;
}

/**
 * Assembles the structure from loaded tensors, for the layers of `range`; `slots(key)` makes the expert slot table of
 * MoE block `key` (e.g. layers.3.mlp), `join` one buffer of several vectors, one after the other.
 */
export function assembleWeights(
  config: Qwen35Config,
  tensors: Map<string, GpuTensor>,
  slots: (key: string) => GPUBuffer,
  join: (key: string, vectors: GpuTensor[]) => GPUBuffer,
  range: LayerRange = wholeModel(config),
): ModelWeights {
  const get = (key: string): GpuTensor => {
    const t = tensors.get(key);
    if (!t) throw new InternalError(`internal: tensor ${key} was not loaded`);
    return t;
  };
  const attention = (key: string): AttentionWeights => ({
    kind: 'full_attention',
    qkvProj: get(`${key}.qkv_proj`),
    qNorm: get(`${key}.q_norm`),
    kNorm: get(`${key}.k_norm`),
    oProj: get(`${key}.o_proj`),
  });
  const mlp = (key: string): DenseMlpWeights | MoeWeights =>
    config.moe
      ? {
          kind: 'moe',
          router: get(`${key}.router`),
          expertsGateUp: get(`${key}.experts_gate_up`),
          expertsDown: get(`${key}.experts_down`),
          slots: slots(key),
          sharedGateUp: get(`${key}.shared_gate_up`),
          sharedDown: get(`${key}.shared_down`),
        }
      : { kind: 'dense', gateUp: get(`${key}.gate_up`), down: get(`${key}.down`) };
  const layer = (key: string, type: string): DecoderLayerWeights => ({
    inputNorm: get(`${key}.input_norm`),
    mixer:
      type === 'full_attention'
        ? attention(`${key}.attn`)
        : {
            kind: 'linear_attention',
            inProj: get(`${key}.linear.in_proj`),
            conv: get(`${key}.linear.conv`),
            decayParams: join(`${key}.linear.decay`, [get(`${key}.linear.a_log`), get(`${key}.linear.dt_bias`)]),
            norm: get(`${key}.linear.norm`),
            outProj: get(`${key}.linear.out_proj`),
          },
    postNorm: get(`${key}.post_norm`),
    mlp: mlp(`${key}.mlp`),
  });
  const embed = tensors.get('embed');
  const mtp: MtpWeights | undefined = tensors.has('mtp.fc')
    ? {
        fc: get('mtp.fc'),
        preFcNormEmbedding: get('mtp.pre_fc_norm_embedding'),
        preFcNormHidden: get('mtp.pre_fc_norm_hidden'),
        layers: Array.from({ length: config.mtpLayers }, (_, i) => layer(`mtp.layers.${i}`, 'full_attention')),
        norm: get('mtp.norm'),
      }
    : undefined;
  return {
    embed,
    layers: config.layerTypes.slice(range.first, range.end).map((type, i) => layer(`layers.${range.first + i}`, type)),
    norm: tensors.get('norm'),
    lmHead: config.tieWordEmbeddings ? embed : tensors.get('lm_head'),
    mtp,
  };
}

/** A tensor the caller's stage must hold (the embedding on the first, the LM head on the last). */
export function stageTensor(t: GpuTensor | undefined, what: string): GpuTensor {
  if (!t) throw new InternalError(`internal: this pipeline stage holds no ${what}`);
  return t;
}

/** The buffer holding a single-part f32 vector (norm weights, conv taps, A_log, dt_bias). */
export const vectorBuffer = (t: GpuTensor): GPUBuffer => {
  if (t.parts.length !== 1 || t.dtype !== 'f32') throw new InternalError(`internal: ${t.name} is not a one-part f32 vector`);
  return t.parts[0].buffer;
};
