import type { GpuContext } from '../gpu/context.ts';
import { ModelFormatError, throwIfAborted } from '../gpu/errors.ts';
import { type GpuTensor, type WeightDtype, bytesPerElement, planTensorLayout } from '../gpu/tensor.ts';
import { cast } from '../kernels/cast.ts';
import { type TensorEntry, readCheckpointTensors } from '../formats/safetensors.ts';
import { type WeightSource, readJson } from '../storage/source.ts';
import { type Qwen35Config, parseConfig } from './config.ts';
import { type Naming, type Placement, type TensorSpec, mtpTensors, textModelTensors } from './tensors.ts';
import { type ModelWeights, assembleWeights } from './weights.ts';
import { Tokenizer } from '../text/tokenizer.ts';

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
  /** The checkpoint's tokenizer, when the caller has loaded it already. */
  tokenizer?: Tokenizer;
  /** Keep the multi-token-prediction block when the checkpoint has one (default true). */
  mtp?: boolean;
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
  destroy(): void;
}

/** Bytes read and converted per upload (at most): bounds host memory whatever the tensor size. */
const PIECE_BYTES = 8 * 1024 * 1024;

function detectNaming(tensors: Map<string, TensorEntry>, config: Qwen35Config, location: string): Naming {
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
function checkSources(specs: TensorSpec[], tensors: Map<string, TensorEntry>, location: string): void {
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
 * Loads a Hugging Face checkpoint (config.json, safetensors, tokenizer.json) onto the GPU. Everything is
 * checked before any GPU memory is allocated; then each tensor is streamed in row-aligned pieces of at
 * most PIECE_BYTES and converted on the GPU (cast kernel) into its fused destination.
 */
export async function loadModel(ctx: GpuContext, source: WeightSource, options: LoadOptions): Promise<Model> {
  const rawConfig = (await readJson(source, 'config.json')) as { text_config?: { eos_token_id?: unknown }; eos_token_id?: unknown };
  const config = parseConfig(rawConfig);
  const vocab = await vocabInfo(source, config.vocabSize, options.tokenizer, rawConfig.text_config?.eos_token_id ?? rawConfig.eos_token_id);
  const tensors = await readCheckpointTensors(source);
  const naming = detectNaming(tensors, config, source.location);

  const wantMtp = (options.mtp ?? true) && config.mtpLayers > 0 && tensors.has('mtp.fc.weight');
  const specs = [...textModelTensors(config, naming), ...(wantMtp ? mtpTensors(config, naming) : [])];
  checkSources(specs, tensors, source.location);
  const used = new Set(specs.flatMap((s) => s.sources.map((p) => p.source)));
  const unusedTensors = [...tensors.keys()].filter((n) => !used.has(n) && !n.startsWith('model.visual.') && !(n.startsWith('mtp.') && !wantMtp));

  const owned: GPUBuffer[] = [];
  const destroy = () => owned.forEach((b) => b.destroy());
  try {
    const gpu = allocateTensors(ctx, specs, options.dtype, owned);
    const totalBytes = specs.reduce((sum, spec) => sum + spec.sources.reduce((s, p) => s + tensors.get(p.source)!.bytes, 0), 0);
    const uploads = specs
      .flatMap((spec) => spec.sources.map((p) => ({ tensor: gpu.get(spec.key)!, p, entry: tensors.get(p.source)! })))
      .sort((a, b) => (a.entry.file === b.entry.file ? a.entry.offset - b.entry.offset : a.entry.file < b.entry.file ? -1 : 1));
    const pieceBytes = Math.min(PIECE_BYTES, ctx.caps.maxStorageBindingBytes - 16);
    const staging = ctx.storage('upload staging', pieceBytes);
    try {
      let loadedBytes = 0;
      for (const u of uploads) {
        for await (const bytes of uploadPlacement(ctx, source, staging, u.tensor, u.p, u.entry, options.signal)) {
          loadedBytes += bytes;
          options.onProgress?.({ loadedBytes, totalBytes, tensor: u.p.source });
        }
      }
      await ctx.sync();
    } finally {
      staging.destroy();
    }
    return finishModel(ctx, { ...vocab, config, dtype: options.dtype, location: source.location, unusedTensors }, gpu, owned);
  } catch (error) {
    destroy();
    throw error;
  }
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

/** GPU storage for every spec: matrices in `dtype`, vectors in f32, each split to fit the binding limit. */
export function allocateTensors(ctx: GpuContext, specs: TensorSpec[], dtype: WeightDtype, owned: GPUBuffer[]): Map<string, GpuTensor> {
  const gpu = new Map<string, GpuTensor>();
  for (const spec of specs) {
    const d: WeightDtype = spec.kind === 'vector' ? 'f32' : dtype;
    const layout = planTensorLayout(spec.key, spec.shape, d, ctx.caps);
    const tensor: GpuTensor = { name: spec.key, dtype: d, shape: spec.shape, rowStride: layout.rowStride, itemStride: layout.itemStride, parts: [] };
    for (let first = 0; first < layout.items; first += layout.itemsPerPart) {
      const count = Math.min(layout.itemsPerPart, layout.items - first);
      const buffer = ctx.storage(`${spec.key}[${first}..${first + count})`, count * layout.itemStride * bytesPerElement(d));
      owned.push(buffer);
      tensor.parts.push({ buffer, first, count });
    }
    gpu.set(spec.key, tensor);
  }
  return gpu;
}

/** The Model around loaded (or synthetic) tensors: one expert slot table per MoE layer, identity while all experts are resident. */
export function finishModel(
  ctx: GpuContext,
  info: Omit<Model, 'weights' | 'gpuBytes' | 'destroy'>,
  tensors: Map<string, GpuTensor>,
  owned: GPUBuffer[],
): Model {
  const weights = assembleWeights(info.config, tensors, () => {
    const n = info.config.moe!.numExperts;
    const buffer = ctx.storage('expert slots', n * 4);
    ctx.write(buffer, 0, Uint32Array.from({ length: n }, (_, e) => e));
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
  source: WeightSource,
  staging: GPUBuffer,
  dst: GpuTensor,
  p: Placement,
  entry: TensorEntry,
  signal: AbortSignal | undefined,
): AsyncGenerator<number> {
  const cols = entry.shape[entry.shape.length - 1];
  const elementBytes = entry.bytes / Math.max(1, entry.shape.reduce((a, b) => a * b, 1));
  const rowBytes = cols * elementBytes;
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
      const bytes = await source.read(entry.file, entry.offset + (run.srcRow + r) * rowBytes, rows * rowBytes, signal);
      const padded = bytes.length % 4 === 0 ? bytes : copyPadded(bytes);
      ctx.write(staging, 0, padded);
      const base = (run.dstItem - part.first) * dst.itemStride + run.dstRow * dst.rowStride;
      const d = await cast(ctx, {
        src: staging, srcDtype: entry.dtype!, rows, cols, dst: part.buffer, dstDtype: dst.dtype,
        dstOffset: base + r * run.stride, dstRowStride: run.stride, rowStride: dst.rowStride, transient: true,
      });
      ctx.run([d], 'upload');
      yield bytes.length;
    }
  }
}

function copyPadded(bytes: Uint8Array): Uint8Array {
  const out = new Uint8Array(Math.ceil(bytes.length / 4) * 4);
  out.set(bytes);
  return out;
}
