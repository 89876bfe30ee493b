import type { GpuContext } from '../gpu/context.ts';
import { RequestError, throwIfAborted } from '../errors.ts';
import type { Checkpoint } from '../formats/checkpoint.ts';
import { type OutputSink, type PackedManifest, type PackedTensorInfo, PackedWriter, layoutPackedTensors } from '../formats/packed.ts';
import { type WeightDtype, planTensorLayout } from '../gpu/tensor.ts';
import { allocateTensors, uploadSources } from './upload.ts';
import { type CheckpointPlan, planCheckpoint, tensorDtype } from './plan.ts';
import type { LoadProgress } from './load.ts';

/** Files beside the weights that a packed model keeps (when the checkpoint has them). */
const SIDE_FILES = ['tokenizer.json', 'tokenizer_config.json', 'generation_config.json', 'chat_template.jinja'];

export interface ConvertOptions {
  /** How matrices are stored ('q4' = INT4); vectors stay f32, the embedding f16 under q4. */
  dtype: WeightDtype;
  sink: OutputSink;
  shardBytes?: number;
  /** Bytes read, converted and written per step: bounds host memory (default 8 MiB). */
  pieceBytes?: number;
  /** Keep the multi-token-prediction block (default true). */
  mtp?: boolean;
  onProgress?: (p: LoadProgress) => void;
  signal?: AbortSignal;
}

/** What `convertModel` will write, known before any weight is read: where every tensor goes, and the sizes. */
export interface PackedLayout {
  /** Each tensor with its runs, as the manifest will give them. */
  tensors: PackedTensorInfo[];
  shards: { name: string; bytes: number }[];
  /** The files kept beside the weights, at their size in the checkpoint. */
  files: { name: string; bytes: number }[];
  /** Shards and files together (the manifest, a few KiB, aside). */
  bytes: number;
}

/** The packed model `convertModel` makes of `checkpoint` with these options, from its config and tensor index alone. */
export async function planPackedModel(
  ctx: GpuContext,
  checkpoint: Checkpoint,
  options: Pick<ConvertOptions, 'dtype' | 'shardBytes' | 'mtp'>,
): Promise<PackedLayout> {
  const plan = await planCheckpoint(checkpoint, { mtp: options.mtp ?? true });
  const { tensors, shards } = layoutTensors(ctx, plan, options);
  const files: { name: string; bytes: number }[] = [];
  for (const name of SIDE_FILES) if (await checkpoint.files.has(name)) files.push({ name, bytes: await checkpoint.files.size(name) });
  return { tensors, shards, files, bytes: [...shards, ...files].reduce((sum, f) => sum + f.bytes, 0) };
}

function layoutTensors(ctx: GpuContext, plan: CheckpointPlan, options: Pick<ConvertOptions, 'dtype' | 'shardBytes'>) {
  const metas = plan.specs.map((spec) => {
    const dtype = tensorDtype(spec, options.dtype, plan.config);
    const { rowStride, itemStride } = planTensorLayout(spec.key, spec.shape, dtype, ctx.caps);
    return { key: spec.key, dtype, shape: spec.shape, rowStride, itemStride };
  });
  return layoutPackedTensors(metas, options.shardBytes);
}

/**
 * Writes a checkpoint (Hugging Face or GGUF) as the engine's packed model, one GPU tensor at a time: its
 * sources are uploaded and converted (quantised for q4) on the GPU exactly as a load would, then read back
 * in pieces into the writer, and freed. Host memory stays within a piece; GPU memory within one tensor.
 */
export async function convertModel(ctx: GpuContext, checkpoint: Checkpoint, options: ConvertOptions): Promise<PackedManifest> {
  if (checkpoint.packed) throw new RequestError(`${checkpoint.location} is already a packed model`, 'checkpoint');
  const plan = await planCheckpoint(checkpoint, { mtp: options.mtp ?? true });
  const pieceBytes = Math.min(options.pieceBytes ?? 8 * 1024 * 1024, ctx.caps.maxStorageBindingBytes - 16);
  const writer = new PackedWriter(options.sink, { config: plan.rawConfig, dtype: options.dtype, shardBytes: options.shardBytes, signal: options.signal });
  // A sink that kept an interrupted conversion hands back the tensors it holds whole, at the places the layout gives.
  const layout = options.sink.storedItems && layoutTensors(ctx, plan, options);
  try {
    let loadedBytes = 0;
    for (const [index, spec] of plan.specs.entries()) {
      throwIfAborted(options.signal);
      const stored = layout && options.sink.storedItems?.(layout.tensors[index]);
      if (stored) {
        await writer.addTensor(layout.tensors[index], stored);
        loadedBytes += spec.sources.reduce((sum, p) => sum + checkpoint.tensors.get(p.source)!.bytes, 0);
        options.onProgress?.({ loadedBytes, totalBytes: plan.sourceBytes, tensor: spec.key });
        continue;
      }
      const owned: GPUBuffer[] = [];
      try {
        const tensor = allocateTensors(ctx, [spec], (s) => tensorDtype(s, options.dtype, plan.config), owned).get(spec.key)!;
        for await (const step of uploadSources(ctx, checkpoint, [spec], new Map([[spec.key, tensor]]), { pieceBytes, signal: options.signal })) {
          loadedBytes += step.bytes;
          options.onProgress?.({ loadedBytes, totalBytes: plan.sourceBytes, tensor: step.tensor });
        }
        const itemBytes = tensor.parts[0].buffer.size / tensor.parts[0].count;
        const itemsPerPiece = Math.max(1, Math.floor(pieceBytes / itemBytes));
        const items = async function* () {
          for (const part of tensor.parts) {
            for (let i = 0; i < part.count; i += itemsPerPiece) {
              const count = Math.min(itemsPerPiece, part.count - i);
              yield new Uint8Array(await ctx.read(part.buffer, i * itemBytes, count * itemBytes));
            }
          }
        };
        await writer.addTensor({ key: spec.key, dtype: tensor.dtype, shape: spec.shape, rowStride: tensor.rowStride, itemStride: tensor.itemStride }, items());
      } finally {
        ctx.free(...owned);
      }
    }
    for (const name of SIDE_FILES) {
      if (await checkpoint.files.has(name)) await writer.addFile(name, await checkpoint.files.text(name));
    }
    return await writer.finish();
  } catch (error) {
    await writer.abort();
    throw error;
  }
}
