import type { GpuContext } from '../gpu/context.ts';
import { ModelFormatError } from '../errors.ts';
import { type WeightDtype, planTensorLayout } from '../gpu/tensor.ts';
import type { Checkpoint } from '../formats/checkpoint.ts';
import { expertStreaming } from './expert_budget.ts';
import { checkPackedTensors } from './load_packed.ts';
import { type Model, type VocabInfo, finishModel } from './model.ts';
import { planCheckpoint, tensorDtype } from './plan.ts';
import type { LayerRange, TensorSpec } from './tensors.ts';
import { allocateTensors, uploadSources } from './upload.ts';

export interface LoadProgress {
  loadedBytes: number;
  totalBytes: number;
  tensor: string;
}

export interface LoadOptions {
  /** How matrices are stored on the GPU. Vectors (norms, conv taps) are always f32. */
  dtype: WeightDtype;
  /**
   * Whether the caller chose `dtype`. If not, a packed model keeps its own (choosing another is an error), and a
   * checkpoint whose matrices take fewer than INT4_DEFAULT_BELOW_BITS per weight loads as INT4.
   */
  dtypeGiven?: boolean;
  /** The tokenizer's size and eos ids, when the caller has loaded it already (else read from its files). */
  vocab?: VocabInfo;
  /** Check a packed model's sha256 sums before uploading it (reads everything once more). */
  verify?: boolean;
  /**
   * Bytes of GPU memory the MoE experts of the main layers may take. Less than all of them streams experts
   * from a packed model (src/runtime/expert_cache.ts); default: every expert resident. Dense models ignore it.
   */
  expertCacheBytes?: number;
  /**
   * Only these decoder layers (a pipeline stage, runtime/pipeline): the embedding comes with the first, the final norm
   * and LM head with the last; nothing else is read. Default: all of them.
   */
  layers?: LayerRange;
  /**
   * Load the multi-token-prediction block too (model.weights.mtp, for drafting), when the checkpoint has one; 'unless
   * streamed': only when every expert of the main layers is resident (the block's own experts always are, outside
   * expertCacheBytes, so with experts streamed it is loaded only when asked for).
   */
  mtp?: boolean | 'unless streamed';
  onProgress?: (p: LoadProgress) => void;
  signal?: AbortSignal;
}

/**
 * A checkpoint quantised below this many bits per weight (a GGUF of Q2_K to Q5_K_M, IQ4 or MXFP4) loads as INT4 unless
 * a dtype is asked for: in f16 it would take 3 to 6 times the memory its file does, in f32 twice that.
 */
export const INT4_DEFAULT_BELOW_BITS = 6;

/** Bits per weight the checkpoint's matrices take in their files (16 for bf16 safetensors). */
export function fileBitsPerWeight(checkpoint: Checkpoint): number {
  let bytes = 0;
  let elements = 0;
  for (const t of checkpoint.tensors.values()) {
    if (t.shape.length < 2) continue;
    bytes += t.bytes;
    elements += t.shape.reduce((a, b) => a * b, 1);
  }
  return elements === 0 ? 16 : (8 * bytes) / elements;
}

/**
 * Loads a checkpoint (a Hugging Face folder, a GGUF file or a packed model) onto the GPU. Everything is
 * checked before any GPU memory is allocated; then each tensor is streamed in pieces of at most
 * PIECE_BYTES: converted on the GPU (cast, or quantised for INT4) into its fused destination, or, for a
 * packed model, uploaded as it is.
 */
export async function loadModel(ctx: GpuContext, checkpoint: Checkpoint, options: LoadOptions): Promise<Model> {
  let plan = await planCheckpoint(checkpoint, { ...options, mtp: options.mtp !== undefined && options.mtp !== false });
  const packed = checkpoint.packed;
  let dtype: WeightDtype = !packed && !options.dtypeGiven && fileBitsPerWeight(checkpoint) < INT4_DEFAULT_BELOW_BITS ? 'q4' : options.dtype;
  let dtypeOf = (spec: TensorSpec) => tensorDtype(spec, dtype, plan.config);
  if (packed) {
    if (options.dtypeGiven && options.dtype !== packed.dtype) {
      throw new ModelFormatError(
        `holds ${packed.dtype} weights; they cannot be loaded as ${options.dtype} (convert the original checkpoint again)`,
        'qwen-webgpu.json',
      );
    }
    dtype = packed.dtype;
    dtypeOf = (spec) => packed.tensors.get(spec.key)!.dtype;
    checkPackedTensors(packed, plan.specs, (spec, d) => planTensorLayout(spec.key, spec.shape, d, ctx.caps));
    if (options.verify)
      await packed.verify((p) => options.onProgress?.({ loadedBytes: p.doneBytes, totalBytes: p.totalBytes, tensor: `verifying ${p.file}` }), options.signal);
  }
  const experts = expertStreaming(ctx, checkpoint, plan, dtypeOf, options.expertCacheBytes);
  if (experts && options.mtp === 'unless streamed') plan = await planCheckpoint(checkpoint, { ...options, mtp: false });
  if (experts && options.layers) {
    throw new ModelFormatError("a pipeline stage keeps its layers' experts resident: it cannot stream them (give it more memory or more stages)");
  }
  // Streamed expert tensors get `slots` items and are filled by the runtime, not here.
  const streamed = (spec: TensorSpec) => experts !== undefined && /^layers\.\d+\.mlp\.experts_/.test(spec.key);
  const specs = plan.specs.map((spec) => (streamed(spec) ? { ...spec, shape: [experts!.slots, ...spec.shape.slice(1)] } : spec));
  const totalBytes = experts
    ? plan.sourceBytes -
      plan.specs.filter(streamed).reduce((sum, s) => sum + s.shape[0] * experts.source.itemBytes(s.key.endsWith('gate_up') ? 'gate_up' : 'down'), 0)
    : plan.sourceBytes;
  const owned: GPUBuffer[] = [];
  try {
    const gpu = allocateTensors(ctx, specs, dtypeOf, owned);
    let loadedBytes = 0;
    for await (const step of uploadSources(
      ctx,
      checkpoint,
      specs.filter((s) => !streamed(s)),
      gpu,
      { signal: options.signal },
    )) {
      loadedBytes += step.bytes;
      options.onProgress?.({ loadedBytes, totalBytes, tensor: step.tensor });
    }
    return finishModel(
      ctx,
      { ...plan.vocab, config: plan.config, layers: options.layers, dtype, location: checkpoint.location, unusedTensors: plan.unusedTensors, experts },
      gpu,
      owned,
    );
  } catch (error) {
    ctx.free(...owned);
    throw error;
  }
}
