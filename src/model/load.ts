import type { GpuContext } from '../gpu/context.ts';
import { ModelFormatError, RequestError, throwIfAborted } from '../gpu/errors.ts';
import { type GpuTensor, type WeightDtype, planTensorLayout } from '../gpu/tensor.ts';
import { cast } from '../kernels/cast.ts';
import { quantizeQ4 } from '../kernels/quantize.ts';
import { type Checkpoint, type SourceTensor, sourceBytes } from '../formats/checkpoint.ts';
import { type WeightSource, readJson } from '../storage/source.ts';
import { type Qwen35Config, parseConfig } from './config.ts';
import { checkCounts, checkLayerCount, countTensors } from './counts.ts';
import { type Naming, type Placement, type TensorSpec, mtpTensors, textModelTensors } from './tensors.ts';
import { type ModelWeights, assembleWeights } from './weights.ts';
import { Tokenizer } from '../text/tokenizer.ts';
import { checkPackedTensors, uploadPacked } from './load_packed.ts';
import { type ExpertSource, expertTensorKey, packedExpertSource } from '../storage/expert_source.ts';

export interface LoadProgress {
  loadedBytes: number;
  totalBytes: number;
  tensor: string;
}

/**
 * What the engine needs of the tokenizer: how many ids it can produce (rows past that are padding and are
 * never sampled) and the ids that end generation.
 */
export interface VocabInfo {
  tokenizerSize: number;
  eosTokenIds: number[];
}

export interface LoadOptions {
  /** How matrices are stored on the GPU. Vectors (norms, conv taps) are always f32. */
  dtype: WeightDtype;
  /** Whether the caller chose `dtype` (a packed model keeps its own; choosing another is an error). */
  dtypeGiven?: boolean;
  /** The checkpoint's tokenizer, when the caller has loaded it already. */
  tokenizer?: Tokenizer;
  /** Keep the multi-token-prediction block when the checkpoint has one (default true). */
  mtp?: boolean;
  /** Check a packed model's sha256 sums before uploading it (reads everything once more). */
  verify?: boolean;
  /**
   * Bytes of GPU memory the MoE experts of the main layers may take. Less than all of them streams experts
   * from a packed model (src/runtime/expert_cache.ts); default: every expert resident. Dense models ignore it.
   */
  expertCacheBytes?: number;
  onProgress?: (p: LoadProgress) => void;
  signal?: AbortSignal;
}

export interface Model extends VocabInfo {
  config: Qwen35Config;
  weights: ModelWeights;
  dtype: WeightDtype;
  location: string;
  /** Checkpoint tensors the text model does not use (vision tower excluded), for a warning. */
  unusedTensors: string[];
  gpuBytes: number;
  /** Present when MoE experts are streamed: each main layer's expert tensors hold `slots` experts, not all. */
  experts?: ExpertStreaming;
  destroy(): void;
}

/** How a model with streamed experts holds them (the runtime's ExpertCache keeps their residency). */
export interface ExpertStreaming {
  source: ExpertSource;
  /** Expert slots per MoE layer of the main stack (topk ≤ slots < numExperts). */
  slots: number;
  /** Bytes of one expert of one layer: its gate_up and down items. */
  expertBytes: number;
}

/** Marks an expert that no slot holds: outside every part, so the expert kernels skip it. */
export const NOT_RESIDENT = 0xffffffff;

/**
 * Expert slots per MoE layer that `budgetBytes` buys (all of them when it covers every expert), or a
 * RequestError when it cannot hold the topk experts one token needs in every layer.
 */
export function planExpertSlots(config: Qwen35Config, budgetBytes: number, expertBytes: number): number {
  const moe = config.moe!;
  const layers = config.layerTypes.length;
  if (!Number.isFinite(budgetBytes) || budgetBytes < 0) throw new RequestError(`${budgetBytes} must be a non-negative number of bytes`, 'expertCacheBytes');
  const slots = Math.min(moe.numExperts, Math.floor(budgetBytes / (layers * expertBytes)));
  if (slots < moe.topk) {
    throw new RequestError(
      `${budgetBytes} bytes hold ${slots} experts per layer; a token needs num_experts_per_tok = ${moe.topk} in each of ${layers} layers ` +
        `(at least ${moe.topk * layers * expertBytes} bytes at ${expertBytes} bytes per expert)`,
      'expertCacheBytes',
    );
  }
  return slots;
}

/** Bytes read and converted per upload (at most): bounds host memory whatever the tensor size. */
const PIECE_BYTES = 8 * 1024 * 1024;

function detectNaming(tensors: Map<string, SourceTensor>, config: Qwen35Config, location: string): Naming {
  const prefix = ['model.language_model.', 'model.'].find((p) => tensors.has(`${p}embed_tokens.weight`));
  if (!prefix) throw new ModelFormatError(`no model.language_model.embed_tokens.weight (or model.embed_tokens.weight) in ${location}`);
  let fusedExperts = true;
  if (config.moe) {
    const first = config.layerTypes.length > 0 ? `${prefix}layers.0.mlp.experts` : '';
    fusedExperts = tensors.has(`${first}.gate_up_proj`);
    if (!fusedExperts && !tensors.has(`${first}.0.gate_proj.weight`)) {
      throw new ModelFormatError(`neither ${first}.gate_up_proj nor ${first}.0.gate_proj.weight found: no MoE experts in ${location}`);
    }
  }
  return { prefix, fusedExperts };
}

/** Every source tensor must exist with the shape the config implies and a dtype we convert from. */
function checkSources(specs: TensorSpec[], tensors: Map<string, SourceTensor>, location: string): void {
  for (const spec of specs) {
    for (const p of spec.sources) {
      const entry = tensors.get(p.source);
      if (!entry) throw new ModelFormatError(`missing from the checkpoint in ${location} (the config implies shape [${p.shape}])`, undefined, p.source);
      if (entry.shape.length !== p.shape.length || entry.shape.some((d, i) => d !== p.shape[i])) {
        throw new ModelFormatError(`shape [${entry.shape}] does not match [${p.shape}] implied by config.json`, entry.file, p.source);
      }
      if (!entry.dtype) throw new ModelFormatError(`dtype ${entry.fileDtype} is not supported (BF16, F16 or F32)`, entry.file, p.source);
    }
  }
}

/**
 * How one GPU tensor is stored when the model's matrices are `dtype`: vectors (norms, conv taps, gate
 * parameters) in f32; under INT4 an untied embedding and the MoE routers stay f16 (a quantised router logit
 * moves an expert choice; both are small next to the layers). A tied embedding is the LM head, the largest
 * matrix of a small model, and is quantised with it.
 */
export function tensorDtype(spec: TensorSpec, dtype: WeightDtype, config: Qwen35Config): WeightDtype {
  if (spec.kind === 'vector') return 'f32';
  if (dtype === 'q4' && ((spec.key === 'embed' && !config.tieWordEmbeddings) || spec.key.endsWith('.router'))) return 'f16';
  return dtype;
}

/** Everything a load or a conversion decides before touching the GPU; every check is done here. */
export interface CheckpointPlan {
  rawConfig: Record<string, unknown>;
  config: Qwen35Config;
  vocab: VocabInfo;
  specs: TensorSpec[];
  unusedTensors: string[];
  /** Bytes the sources hold (progress). */
  sourceBytes: number;
}

export async function planCheckpoint(checkpoint: Checkpoint, options: { mtp?: boolean; tokenizer?: Tokenizer } = {}): Promise<CheckpointPlan> {
  const rawConfig = (await readJson(checkpoint.files, 'config.json')) as Record<string, unknown> & { text_config?: { eos_token_id?: unknown }; eos_token_id?: unknown };
  const packed = checkpoint.packed;
  // The config's counts are checked against the tensor index before anything is built from them.
  const counts = countTensors(packed ? packed.tensors : checkpoint.tensors);
  checkLayerCount(rawConfig, counts);
  const config = parseConfig(rawConfig);
  const has = (name: string) => (packed ? packed.tensors.has(name) : checkpoint.tensors.has(name));
  const wantMtp = (options.mtp ?? true) && config.mtpLayers > 0 && has(packed ? 'mtp.fc' : 'mtp.fc.weight');
  checkCounts(rawConfig, config, counts, wantMtp);
  const vocab = await vocabInfo(checkpoint.files, config.vocabSize, options.tokenizer, rawConfig.text_config?.eos_token_id ?? rawConfig.eos_token_id);
  const naming = packed ? { prefix: '', fusedExperts: true } : detectNaming(checkpoint.tensors, config, checkpoint.location);
  const specs = [...textModelTensors(config, naming), ...(wantMtp ? mtpTensors(config, naming) : [])];
  if (packed) {
    const unusedTensors = [...packed.tensors.keys()].filter((k) => !specs.some((s) => s.key === k) && !(k.startsWith('mtp.') && !wantMtp));
    const sourceBytes = specs.reduce((sum, s) => sum + packed.tensors.get(s.key)!.itemBytes * s.shape[0], 0);
    return { rawConfig, config, vocab, specs, unusedTensors, sourceBytes };
  }
  checkSources(specs, checkpoint.tensors, checkpoint.location);
  const used = new Set(specs.flatMap((s) => s.sources.map((p) => p.source)));
  const unusedTensors = [...checkpoint.tensors.keys()].filter((n) => !used.has(n) && !n.startsWith('model.visual.') && !(n.startsWith('mtp.') && !wantMtp));
  const sourceBytes = specs.reduce((sum, spec) => sum + spec.sources.reduce((s, p) => s + checkpoint.tensors.get(p.source)!.bytes, 0), 0);
  return { rawConfig, config, vocab, specs, unusedTensors, sourceBytes };
}

/**
 * Loads a checkpoint (a Hugging Face folder, a GGUF file or a packed model) onto the GPU. Everything is
 * checked before any GPU memory is allocated; then each tensor is streamed in pieces of at most
 * PIECE_BYTES: converted on the GPU (cast, or quantised for INT4) into its fused destination, or, for a
 * packed model, uploaded as it is.
 */
export async function loadModel(ctx: GpuContext, checkpoint: Checkpoint, options: LoadOptions): Promise<Model> {
  const plan = await planCheckpoint(checkpoint, options);
  const packed = checkpoint.packed;
  let dtypeOf = (spec: TensorSpec) => tensorDtype(spec, options.dtype, plan.config);
  let dtype = options.dtype;
  if (packed) {
    if (options.dtypeGiven && options.dtype !== packed.dtype) {
      throw new ModelFormatError(`holds ${packed.dtype} weights; they cannot be loaded as ${options.dtype} (convert the original checkpoint again)`, 'qwen-webgpu.json');
    }
    dtype = packed.dtype;
    dtypeOf = (spec) => packed.tensors.get(spec.key)!.dtype;
    checkPackedTensors(packed, plan.specs, (spec, d) => planTensorLayout(spec.key, spec.shape, d, ctx.caps));
    if (options.verify) await packed.verify((p) => options.onProgress?.({ loadedBytes: p.doneBytes, totalBytes: p.totalBytes, tensor: `verifying ${p.file}` }), options.signal);
  }
  const experts = expertStreaming(ctx, checkpoint, plan, dtypeOf, options.expertCacheBytes);
  // Streamed expert tensors get `slots` items and are filled by the runtime, not here.
  const streamed = (spec: TensorSpec) => experts !== undefined && /^layers\.\d+\.mlp\.experts_/.test(spec.key);
  const specs = plan.specs.map((spec) => (streamed(spec) ? { ...spec, shape: [experts!.slots, ...spec.shape.slice(1)] } : spec));
  const totalBytes = experts ? plan.sourceBytes - plan.specs.filter(streamed).reduce((sum, s) => sum + s.shape[0] * experts.source.itemBytes(s.key.endsWith('gate_up') ? 'gate_up' : 'down'), 0) : plan.sourceBytes;
  const owned: GPUBuffer[] = [];
  try {
    const gpu = allocateTensors(ctx, specs, dtypeOf, owned);
    let loadedBytes = 0;
    for await (const step of uploadSources(ctx, checkpoint, specs.filter((s) => !streamed(s)), gpu, { signal: options.signal })) {
      loadedBytes += step.bytes;
      options.onProgress?.({ loadedBytes, totalBytes, tensor: step.tensor });
    }
    return finishModel(ctx, { ...plan.vocab, config: plan.config, dtype, location: checkpoint.location, unusedTensors: plan.unusedTensors, experts }, gpu, owned);
  } catch (error) {
    owned.forEach((b) => b.destroy());
    throw error;
  }
}

/**
 * Whether (and how) the experts of the main layers are streamed: only when `budgetBytes` is less than all
 * of them, and then only from a packed model (each expert one contiguous block in a shard).
 */
function expertStreaming(
  ctx: GpuContext,
  checkpoint: Checkpoint,
  plan: CheckpointPlan,
  dtypeOf: (spec: TensorSpec) => WeightDtype,
  budgetBytes: number | undefined,
): ExpertStreaming | undefined {
  const moe = plan.config.moe;
  if (!moe || budgetBytes === undefined) return undefined;
  const bytesOf = (key: string) => {
    const spec = plan.specs.find((s) => s.key === key)!;
    return planTensorLayout(key, spec.shape, dtypeOf(spec), ctx.caps).itemBytes;
  };
  const expertBytes = bytesOf(expertTensorKey(0, 'gate_up')) + bytesOf(expertTensorKey(0, 'down'));
  const slots = planExpertSlots(plan.config, budgetBytes, expertBytes);
  if (slots >= moe.numExperts) return undefined;
  if (!checkpoint.packed) {
    throw new RequestError(
      `${budgetBytes} bytes are less than the ${plan.config.layerTypes.length * moe.numExperts * expertBytes} bytes of all experts, and streaming experts ` +
        `needs a packed model; ${checkpoint.location} is not one (convert it with \`qwen-webgpu convert\`)`,
      'expertCacheBytes',
    );
  }
  return { source: packedExpertSource(checkpoint.packed), slots, expertBytes };
}

/** From the tokenizer when the checkpoint has one; else every row is a token and config.json names the eos. */
async function vocabInfo(source: WeightSource, vocabSize: number, given: Tokenizer | undefined, configEos: unknown): Promise<VocabInfo> {
  const tokenizer = given ?? ((await source.has('tokenizer.json')) ? await Tokenizer.load(source) : undefined);
  if (!tokenizer) {
    const eos = (Array.isArray(configEos) ? configEos : [configEos]).filter((id): id is number => Number.isInteger(id) && id >= 0 && id < vocabSize);
    return { tokenizerSize: vocabSize, eosTokenIds: eos };
  }
  if (tokenizer.size > vocabSize) throw new ModelFormatError(`has token id ${tokenizer.size - 1}, beyond the model's vocab_size ${vocabSize}`, 'tokenizer.json');
  return { tokenizerSize: tokenizer.size, eosTokenIds: tokenizer.eosTokenIds };
}

/**
 * Fills the GPU tensors of `specs` from the checkpoint, PIECE_BYTES (or `pieceBytes`) at a time; yields the
 * source bytes done per piece. Host memory holds one piece; the caller owns the GPU tensors.
 */
export async function* uploadSources(
  ctx: GpuContext,
  checkpoint: Checkpoint,
  specs: TensorSpec[],
  gpu: Map<string, GpuTensor>,
  options: { pieceBytes?: number; signal?: AbortSignal } = {},
): AsyncGenerator<{ bytes: number; tensor: string }> {
  const pieceBytes = Math.min(options.pieceBytes ?? PIECE_BYTES, ctx.caps.maxStorageBindingBytes - 16);
  const packed = checkpoint.packed;
  if (packed) {
    yield* uploadPacked(ctx, packed, specs, gpu, pieceBytes, options.signal);
    return;
  }
  const uploads = specs
    .flatMap((spec) => spec.sources.map((p) => ({ tensor: gpu.get(spec.key)!, p, entry: checkpoint.tensors.get(p.source)! })))
    .sort((a, b) => (a.entry.file < b.entry.file ? -1 : a.entry.file > b.entry.file ? 1 : 0));
  const staging = ctx.storage('upload staging', pieceBytes);
  try {
    for (const u of uploads) {
      for await (const bytes of uploadPlacement(ctx, staging, u.tensor, u.p, u.entry, options.signal)) yield { bytes, tensor: u.p.source };
    }
    await ctx.sync();
  } finally {
    staging.destroy();
  }
}

/** GPU storage for every spec, in the dtype `dtypeOf` gives it, each split to fit the binding limit. */
export function allocateTensors(ctx: GpuContext, specs: TensorSpec[], dtypeOf: (spec: TensorSpec) => WeightDtype, owned: GPUBuffer[]): Map<string, GpuTensor> {
  const gpu = new Map<string, GpuTensor>();
  for (const spec of specs) {
    const d = dtypeOf(spec);
    const layout = planTensorLayout(spec.key, spec.shape, d, ctx.caps);
    const tensor: GpuTensor = { name: spec.key, dtype: d, shape: spec.shape, rowStride: layout.rowStride, itemStride: layout.itemStride, parts: [] };
    for (let first = 0; first < layout.items; first += layout.itemsPerPart) {
      const count = Math.min(layout.itemsPerPart, layout.items - first);
      const buffer = ctx.storage(`${spec.key}[${first}..${first + count})`, count * layout.itemBytes);
      owned.push(buffer);
      tensor.parts.push({ buffer, first, count });
    }
    gpu.set(spec.key, tensor);
  }
  return gpu;
}

/** The Model around loaded (or synthetic) tensors: one expert slot table per MoE layer, identity while all experts are resident, empty when streamed. */
export function finishModel(
  ctx: GpuContext,
  info: Omit<Model, 'weights' | 'gpuBytes' | 'destroy'>,
  tensors: Map<string, GpuTensor>,
  owned: GPUBuffer[],
): Model {
  const weights = assembleWeights(info.config, tensors, (key) => {
    const n = info.config.moe!.numExperts;
    const buffer = ctx.storage(`${key} expert slots`, n * 4);
    // Streamed layers start with no expert resident; the runtime's ExpertCache fills slots as routing asks.
    const streamed = info.experts !== undefined && key.startsWith('layers.');
    ctx.write(buffer, 0, Uint32Array.from({ length: n }, (_, e) => (streamed ? NOT_RESIDENT : e)));
    owned.push(buffer);
    return buffer;
  });
  const gpuBytes = [...tensors.values()].reduce((sum, t) => sum + t.parts.reduce((s, p) => s + p.buffer.size, 0), 0);
  return { ...info, weights, gpuBytes, destroy: () => owned.forEach((b) => b.destroy()) };
}

/**
 * Streams one source tensor into its place: runs of source rows that land at a constant stride in one
 * part of the destination, read and converted PIECE_BYTES at a time. Yields the bytes done per piece.
 */
async function* uploadPlacement(
  ctx: GpuContext,
  staging: GPUBuffer,
  dst: GpuTensor,
  p: Placement,
  entry: SourceTensor,
  signal: AbortSignal | undefined,
): AsyncGenerator<number> {
  const cols = entry.shape[entry.shape.length - 1];
  const rowBytes = cols * sourceBytes(entry.dtype!);
  // Progress counts the file's bytes (a quantized GGUF row is smaller than the f32 row it is read as).
  const fileRowBytes = entry.bytes / Math.max(1, entry.shape.reduce((a, b) => a * b, 1) / cols);
  const rowsPerPiece = Math.floor((staging.size - 4) / rowBytes);
  if (rowsPerPiece < 1) throw new ModelFormatError(`a row of ${rowBytes} bytes is larger than the adapter can bind`, entry.file, entry.name);
  const [items, rowsPerItem] = p.view;
  // A run: consecutive source rows with one destination stride inside one part.
  const runs: { srcRow: number; rows: number; dstItem: number; dstRow: number; stride: number }[] = [];
  if (rowsPerItem === 1) {
    for (let i = 0; i < items; ) {
      const dstItem = p.item + i;
      const part = dst.parts.find((q) => dstItem >= q.first && dstItem < q.first + q.count)!;
      const rows = Math.min(items - i, part.first + part.count - dstItem);
      runs.push({ srcRow: i, rows, dstItem, dstRow: p.row, stride: dst.itemStride });
      i += rows;
    }
  } else {
    for (let i = 0; i < items; i++) runs.push({ srcRow: i * rowsPerItem, rows: rowsPerItem, dstItem: p.item + i, dstRow: p.row, stride: dst.rowStride });
  }
  for (const run of runs) {
    const part = dst.parts.find((q) => run.dstItem >= q.first && run.dstItem < q.first + q.count)!;
    for (let r = 0; r < run.rows; r += rowsPerPiece) {
      throwIfAborted(signal);
      const rows = Math.min(rowsPerPiece, run.rows - r);
      const bytes = await entry.readRows(run.srcRow + r, rows, signal);
      if (bytes.length !== rows * rowBytes) throw new ModelFormatError(`read ${bytes.length} bytes for ${rows} rows of ${rowBytes}`, entry.file, entry.name);
      const padded = bytes.length % 4 === 0 ? bytes : copyPadded(bytes);
      ctx.write(staging, 0, padded);
      const base = (run.dstItem - part.first) * dst.itemStride + run.dstRow * dst.rowStride;
      const piece = { src: staging, srcDtype: entry.dtype!, rows, cols, dst: part.buffer, dstOffset: base + r * run.stride, dstRowStride: run.stride, rowStride: dst.rowStride, transient: true };
      const d = dst.dtype === 'q4' ? await quantizeQ4(ctx, { ...piece, itemStride: dst.itemStride }) : await cast(ctx, { ...piece, dstDtype: dst.dtype });
      ctx.run([d], 'upload');
      yield rows * fileRowBytes;
    }
  }
}

function copyPadded(bytes: Uint8Array): Uint8Array {
  const out = new Uint8Array(Math.ceil(bytes.length / 4) * 4);
  out.set(bytes);
  return out;
}
