import { ConfigError, InternalError, RequestError } from '../errors.ts';
import { type Qwen35Config, parseConfig } from '../model/config.ts';
import { type GgmlTypeName, type GgufLayout, type GgufTensorSpec, GgufType, type KeyValue, ggufLayout, ggufPieces, kv } from '../formats/gguf_writer.ts';
import { f32ToF16Bits } from '../numeric/half.ts';
import { rng } from '../numeric/random.ts';
import variants from './variants.json' with { type: 'json' };

/**
 * A llama.cpp GGUF (arch qwen35 / qwen35moe) with the shapes of `bench --synthetic V [--layers N]`, so a peer
 * engine can be timed on the same model: every matrix Q4_0 (32 weights and one f16 scale in 18 bytes, the
 * bytes our int4 reads), norms 1, ssm_a −0.5, a 248,320-entry placeholder vocabulary (benchmarks feed ids).
 * The data is produced piece by piece (`pieces()`), never whole: a 35B-A3B file is ~20 GB.
 *
 * Q4_0 blocks are cut from a few MiB of random nibbles at a moving offset, with the scale
 * 1 / (4.6·sqrt(fan-in)): uniform nibbles have a standard deviation of ~4.6 levels, so outputs stay near unit
 * size through the layers and no one gets NaNs or all-equal logits.
 */

type Fill = 'q4' | 'one' | 'zero' | 'neg' | 'small';

export interface SyntheticGgufTensor extends GgufTensorSpec {
  fill: Fill;
}

export interface SyntheticGguf {
  variant: string;
  config: Qwen35Config;
  metadata: KeyValue[];
  tensors: SyntheticGgufTensor[];
  layout: GgufLayout;
  /** The file's bytes in order; each piece is a view that stays valid (patterns are never reused for writing). */
  pieces(): Generator<Uint8Array>;
}

/** Bumped whenever the bytes written change, so cached files from an older writer are not reused. */
export const SYNTHETIC_GGUF_VERSION = 1;

export const SYNTHETIC_GGUF_VARIANTS = Object.keys(variants);

const PATTERN_BYTES = 4 << 20;
const Q4_0_BYTES = 18;

/**
 * `variant` names a model of src/bench/variants.json, or is a config object of the same form (tests use
 * small ones). `layers` keeps the first N layers, as `bench --synthetic --layers N` does.
 */
export function syntheticGguf(variant: string | Record<string, unknown>, options: { layers?: number } = {}): SyntheticGguf {
  const raw = typeof variant === 'string' ? (variants as Record<string, Record<string, unknown>>)[variant] : variant;
  const name = typeof variant === 'string' ? variant : String(variant.name ?? 'custom');
  if (!raw) throw new RequestError(`unknown synthetic model ${variant}; choose one of ${SYNTHETIC_GGUF_VARIANTS.join(', ')}`, 'synthetic');
  const c = parseConfig({ ...raw, num_hidden_layers: options.layers ?? raw.num_hidden_layers }, `synthetic ${name}`);
  const metadata = syntheticMetadata(name, c);
  const tensors = syntheticTensors(c);
  const layout = ggufLayout(metadata, tensors);
  return { variant: name, config: c, metadata, tensors, layout, pieces: () => ggufPieces(layout, (i) => tensorData(tensors[i], i)) };
}

function syntheticMetadata(name: string, c: Qwen35Config): KeyValue[] {
  const moe = c.moe !== undefined;
  const arch = moe ? 'qwen35moe' : 'qwen35';
  const a = (k: string) => `${arch}.${k}`;
  const interval = c.layerTypes.indexOf('full_attention') + 1;
  if (interval === 0 || c.layerTypes.some((t, i) => (t === 'full_attention') !== ((i + 1) % interval === 0))) {
    throw new ConfigError(`GGUF needs full attention every Nth layer, got ${c.layerTypes.join(',')}`, 'layer_types', `synthetic ${name}`);
  }
  // llama.cpp requires the M-RoPE sections; Qwen3.5's [11, 11, 10] split of 32 rotary pairs, scaled.
  const pairs = c.rotaryDim / 2;
  const t = Math.round((pairs * 11) / 32);
  const V = c.vocabSize;
  const entries: KeyValue[] = [
    kv.str('general.architecture', arch),
    kv.str('general.name', `synthetic ${name}`),
    kv.u32('general.alignment', 32),
    kv.u32('general.file_type', 2), // LLAMA_FTYPE_MOSTLY_Q4_0
    kv.u32('general.quantization_version', 2),
    kv.u32(a('context_length'), c.maxPositions),
    kv.u32(a('embedding_length'), c.hiddenSize),
    kv.u32(a('block_count'), c.numLayers),
    kv.u32(a('attention.head_count'), c.numHeads),
    kv.u32(a('attention.head_count_kv'), c.numKvHeads),
    kv.u32(a('attention.key_length'), c.headDim),
    kv.u32(a('attention.value_length'), c.headDim),
    kv.f32(a('attention.layer_norm_rms_epsilon'), c.rmsNormEps),
    kv.f32(a('rope.freq_base'), c.ropeTheta),
    kv.u32(a('rope.dimension_count'), c.rotaryDim),
    kv.array(a('rope.dimension_sections'), GgufType.I32, [t, t, pairs - 2 * t, 0]),
    kv.u32(a('ssm.conv_kernel'), c.convKernel),
    kv.u32(a('ssm.state_size'), c.linearKeyDim),
    kv.u32(a('ssm.group_count'), c.linearKeyHeads),
    kv.u32(a('ssm.time_step_rank'), c.linearValueHeads),
    kv.u32(a('ssm.inner_size'), c.linearValueHeads * c.linearValueDim),
    kv.u32(a('full_attention_interval'), interval),
  ];
  if (c.moe) {
    entries.push(
      kv.u32(a('expert_count'), c.moe.numExperts),
      kv.u32(a('expert_used_count'), c.moe.topk),
      kv.u32(a('expert_feed_forward_length'), c.moe.expertIntermediate),
      kv.u32(a('expert_shared_feed_forward_length'), c.moe.sharedIntermediate),
    );
  } else {
    entries.push(kv.u32(a('feed_forward_length'), c.intermediateSize!));
  }
  entries.push(
    kv.str('tokenizer.ggml.model', 'gpt2'),
    kv.str('tokenizer.ggml.pre', 'qwen35'),
    kv.array(
      'tokenizer.ggml.tokens',
      GgufType.STRING,
      Array.from({ length: V }, (_, i) => `<t${i}>`),
    ),
    kv.array('tokenizer.ggml.token_type', GgufType.I32, new Array<number>(V).fill(1)),
    kv.array('tokenizer.ggml.merges', GgufType.STRING, []),
    kv.u32('tokenizer.ggml.eos_token_id', V - 1),
    kv.u32('tokenizer.ggml.bos_token_id', V - 2),
    kv.bool('tokenizer.ggml.add_bos_token', false),
  );
  return entries;
}

/** Tensor names and ggml shapes (ne0 first) as llama.cpp's converter writes them (spec §3.2). */
function syntheticTensors(c: Qwen35Config): SyntheticGgufTensor[] {
  const H = c.hiddenSize;
  const [Nk, Nv, Dk, Dv] = [c.linearKeyHeads, c.linearValueHeads, c.linearKeyDim, c.linearValueDim];
  const convDim = 2 * Nk * Dk + Nv * Dv;
  const out: SyntheticGgufTensor[] = [];
  const mat = (name: string, dims: number[]) => out.push({ name, dims, type: 'Q4_0', fill: 'q4' });
  const vec = (name: string, dims: number[], fill: Fill = 'one', type: GgmlTypeName = 'F32') => out.push({ name, dims, type, fill });

  mat('token_embd.weight', [H, c.vocabSize]);
  vec('output_norm.weight', [H]);
  if (!c.tieWordEmbeddings) mat('output.weight', [H, c.vocabSize]);
  for (let i = 0; i < c.numLayers; i++) {
    const b = `blk.${i}.`;
    vec(`${b}attn_norm.weight`, [H]);
    vec(`${b}post_attention_norm.weight`, [H]);
    if (c.layerTypes[i] === 'linear_attention') {
      mat(`${b}attn_qkv.weight`, [H, convDim]);
      mat(`${b}attn_gate.weight`, [H, Nv * Dv]);
      // Matrices like the others: our int4 quantises them inside the fused DeltaNet projection.
      mat(`${b}ssm_beta.weight`, [H, Nv]);
      mat(`${b}ssm_alpha.weight`, [H, Nv]);
      vec(`${b}ssm_conv1d.weight`, [c.convKernel, convDim], 'small');
      vec(`${b}ssm_dt.bias`, [Nv], 'zero');
      vec(`${b}ssm_a`, [Nv], 'neg');
      vec(`${b}ssm_norm.weight`, [Dv]);
      mat(`${b}ssm_out.weight`, [Nv * Dv, H]);
    } else {
      mat(`${b}attn_q.weight`, [H, c.numHeads * c.headDim * 2]);
      mat(`${b}attn_k.weight`, [H, c.numKvHeads * c.headDim]);
      mat(`${b}attn_v.weight`, [H, c.numKvHeads * c.headDim]);
      mat(`${b}attn_output.weight`, [c.numHeads * c.headDim, H]);
      vec(`${b}attn_q_norm.weight`, [c.headDim]);
      vec(`${b}attn_k_norm.weight`, [c.headDim]);
    }
    if (c.moe) {
      const { numExperts: E, expertIntermediate: Im, sharedIntermediate: Is } = c.moe;
      // f16 like our int4 keeps it (a router is never quantised: near-tied expert choices flip).
      vec(`${b}ffn_gate_inp.weight`, [H, E], 'small', 'F16');
      mat(`${b}ffn_gate_exps.weight`, [H, Im, E]);
      mat(`${b}ffn_up_exps.weight`, [H, Im, E]);
      mat(`${b}ffn_down_exps.weight`, [Im, H, E]);
      mat(`${b}ffn_gate_shexp.weight`, [H, Is]);
      mat(`${b}ffn_up_shexp.weight`, [H, Is]);
      mat(`${b}ffn_down_shexp.weight`, [Is, H]);
      vec(`${b}ffn_gate_inp_shexp.weight`, [H], 'small');
    } else {
      const I = c.intermediateSize!;
      mat(`${b}ffn_gate.weight`, [H, I]);
      mat(`${b}ffn_up.weight`, [H, I]);
      mat(`${b}ffn_down.weight`, [I, H]);
    }
  }
  return out;
}

let nibbles: Uint8Array | undefined;
const patterns = new Map<number, Uint8Array>();

/** Whole Q4_0 blocks of random nibbles with the scale for `fanIn`; one per fan-in, kept (a few MiB each). */
function q4Pattern(fanIn: number): Uint8Array {
  let p = patterns.get(fanIn);
  if (p) return p;
  if (!nibbles) {
    const next = rng(0x9e3779b9);
    nibbles = new Uint8Array(Math.floor(PATTERN_BYTES / Q4_0_BYTES) * Q4_0_BYTES);
    for (let i = 0; i < nibbles.length; i++) nibbles[i] = Math.floor(next() * 256);
  }
  p = nibbles.slice();
  const h = f32ToF16Bits(1 / (4.6 * Math.sqrt(fanIn)));
  for (let at = 0; at < p.length; at += Q4_0_BYTES) {
    p[at] = h & 255;
    p[at + 1] = h >> 8;
  }
  patterns.set(fanIn, p);
  return p;
}

function* tensorData(t: SyntheticGgufTensor, index: number): Generator<Uint8Array> {
  const count = t.dims.reduce((a, b) => a * b, 1);
  if (t.fill === 'q4') {
    const pattern = q4Pattern(t.dims[0]);
    let left = (count / 32) * Q4_0_BYTES;
    // A moving cut: consecutive pieces (and tensors) do not repeat the same rows.
    for (let k = 0; left > 0; k++) {
      const cut = ((k + 7 * index) * 7 * Q4_0_BYTES) % pattern.length;
      for (const part of [pattern.subarray(cut), pattern.subarray(0, cut)]) {
        const piece = part.subarray(0, Math.min(part.length, left));
        if (piece.length === 0) continue;
        left -= piece.length;
        yield piece;
        if (left === 0) return;
      }
    }
    return;
  }
  const next = rng(index + 1);
  const value = (): number => {
    switch (t.fill) {
      case 'one':
        return 1;
      case 'zero':
        return 0;
      case 'neg':
        return -0.5;
      default:
        return 0.02 * Math.sqrt(-2 * Math.log(1 - next())) * Math.cos(2 * Math.PI * next());
    }
  };
  if (t.type === 'F32') {
    const v = new Float32Array(count);
    for (let i = 0; i < count; i++) v[i] = value();
    yield new Uint8Array(v.buffer);
  } else if (t.type === 'F16') {
    const v = new Uint16Array(count);
    for (let i = 0; i < count; i++) v[i] = f32ToF16Bits(value());
    yield new Uint8Array(v.buffer);
  } else {
    throw new InternalError(`${t.name}: no synthetic fill for ${t.type}`);
  }
}
