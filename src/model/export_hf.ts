import { ModelFormatError, throwIfAborted } from '../errors.ts';
import { checkCounts, checkLayerCount, countTensors } from './counts.ts';
import { parseConfig } from './config.ts';
import { type Naming, type Placement, type TensorSpec, mtpTensors, textModelTensors } from './tensors.ts';
import { PACKED_MANIFEST, type PackedTensorInfo } from '../formats/packed_manifest.ts';
import type { PackedModel } from '../formats/packed_reader.ts';
import { type OutputSink, partialName } from '../formats/packed_sink.ts';
import { itemValues } from '../formats/packed_values.ts';

export interface ExportProgress {
  doneBytes: number;
  totalBytes: number;
  /** The Hugging Face tensor being written. */
  tensor: string;
}

export interface ExportOptions {
  onProgress?: (p: ExportProgress) => void;
  signal?: AbortSignal;
  /** Safetensors files close before passing this many bytes of data (default 4 GiB); one tensor larger than this gets a file of its own. */
  shardBytes?: number;
}

export interface ExportResult {
  /** Every file written, config.json last. */
  files: string[];
  tensors: number;
  /** Tensor data bytes (f32). */
  bytes: number;
}

/** The exported checkpoint's layout: the VLM prefix and fused experts, as the released Qwen3.5 checkpoints. */
const NAMING: Naming = { prefix: 'model.language_model.', fusedExperts: true };
const DEFAULT_SHARD_BYTES = 4 * 1024 ** 3;
/** f32 bytes produced per read (at least one item): bounds host memory whatever the tensor size. */
const PIECE_BYTES = 8 * 1024 * 1024;

interface HfTensor {
  name: string;
  shape: number[];
  bytes: number;
  packed: PackedTensorInfo;
  placement: Placement;
}

/**
 * Writes a packed model back as a Hugging Face checkpoint: config.json, the tokenizer files, and every
 * tensor the GPU tensors came from, as F32, un-fused through the placements of src/model/tensors.ts
 * (in_proj → in_proj_qkv/z/b/a, qkv_proj → q/k/v_proj, SwiGLU pairs → gate_proj/up_proj, router →
 * mlp.gate/shared_expert_gate, conv taps → [conv_dim, 1, K], vectors → 1-D). f16 is widened, q4 dequantised.
 *
 * Streams one tensor at a time, a piece at a time: each safetensors header is computed from the shapes first.
 * Files are written under temporary names and renamed at the end, config.json last.
 */
export async function exportHf(packed: PackedModel, sink: OutputSink, options: ExportOptions = {}): Promise<ExportResult> {
  const { signal, onProgress } = options;
  const shardBytes = options.shardBytes ?? DEFAULT_SHARD_BYTES;
  const tensors = hfTensors(packed);
  const shards = planShards(tensors, shardBytes);
  const totalBytes = tensors.reduce((sum, t) => sum + t.bytes, 0);

  // An earlier export in this folder stops counting as a checkpoint until this one is complete.
  await sink.remove('config.json');
  const written: string[] = [];
  const writeFile = async (name: string, pieces: AsyncIterable<Uint8Array> | Iterable<Uint8Array>) => {
    written.push(name);
    const out = await sink.create(partialName(name));
    try {
      for await (const piece of pieces) await out.write(piece);
    } finally {
      await out.close();
    }
  };
  try {
    let doneBytes = 0;
    for (const shard of shards) {
      await writeFile(
        shard.name,
        (async function* () {
          yield safetensorsHeader(shard.tensors);
          for (const t of shard.tensors) {
            for await (const values of placementValues(packed, t.packed, t.placement, signal)) {
              yield new Uint8Array(values.buffer, values.byteOffset, values.byteLength);
              doneBytes += values.byteLength;
              onProgress?.({ doneBytes, totalBytes, tensor: t.name });
            }
          }
        })(),
      );
    }
    if (shards.length > 1) {
      const weightMap = Object.fromEntries(shards.flatMap((s) => s.tensors.map((t) => [t.name, s.name])));
      const index = { metadata: { total_size: totalBytes }, weight_map: weightMap };
      await writeFile('model.safetensors.index.json', [new TextEncoder().encode(JSON.stringify(index, null, 2))]);
    }
    for (const f of packed.manifest.files) {
      throwIfAborted(signal);
      await writeFile(f.name, [await packed.files.read(f.name, 0, f.bytes, signal)]);
    }
    await writeFile('config.json', [new TextEncoder().encode(JSON.stringify(packed.config, null, 2))]);
    for (const name of written) await sink.rename(partialName(name), name);
  } catch (error) {
    for (const name of written) await sink.remove(partialName(name)).catch(() => {});
    throw error;
  }
  return { files: written, tensors: tensors.length, bytes: totalBytes };
}

/** Every Hugging Face tensor behind the packed model's GPU tensors, after checking those are what the config implies. */
function hfTensors(packed: PackedModel): HfTensor[] {
  const counts = countTensors(packed.tensors);
  checkLayerCount(packed.config, counts, PACKED_MANIFEST);
  const config = parseConfig(packed.config, PACKED_MANIFEST);
  const hasMtp = [...packed.tensors.keys()].some((k) => k.startsWith('mtp.'));
  checkCounts(packed.config, config, counts, hasMtp, PACKED_MANIFEST);
  const specs: TensorSpec[] = [...textModelTensors(config, NAMING), ...(hasMtp ? mtpTensors(config, NAMING) : [])];
  const expected = new Set(specs.map((s) => s.key));
  for (const key of packed.tensors.keys()) {
    if (!expected.has(key)) throw new ModelFormatError('is not a tensor of the model its config describes; exporting would drop it', PACKED_MANIFEST, key);
  }
  return specs.flatMap((spec) => {
    const t = packed.tensors.get(spec.key);
    if (!t) throw new ModelFormatError(`missing (the config implies shape [${spec.shape}])`, PACKED_MANIFEST, spec.key);
    if (t.shape.length !== spec.shape.length || t.shape.some((d, i) => d !== spec.shape[i])) {
      throw new ModelFormatError(`shape [${t.shape}] does not match [${spec.shape}] implied by the config`, PACKED_MANIFEST, spec.key);
    }
    return spec.sources.map((placement) => ({
      name: placement.source,
      shape: placement.shape,
      bytes: 4 * placement.shape.reduce((a, b) => a * b, 1),
      packed: t,
      placement,
    }));
  });
}

interface ShardPlan {
  name: string;
  tensors: HfTensor[];
}

/** Consecutive tensors per file up to shardBytes; named as transformers names shards. */
function planShards(tensors: HfTensor[], shardBytes: number): ShardPlan[] {
  const groups: HfTensor[][] = [];
  let bytes = 0;
  for (const t of tensors) {
    const current = groups[groups.length - 1];
    if (current && bytes + t.bytes <= shardBytes) {
      current.push(t);
      bytes += t.bytes;
    } else {
      groups.push([t]);
      bytes = t.bytes;
    }
  }
  const n = String(groups.length).padStart(5, '0');
  return groups.map((g, i) => ({
    name: groups.length === 1 ? 'model.safetensors' : `model-${String(i + 1).padStart(5, '0')}-of-${n}.safetensors`,
    tensors: g,
  }));
}

/** The length field and JSON header of a safetensors file holding `tensors` as F32, in order. */
function safetensorsHeader(tensors: HfTensor[]): Uint8Array {
  // transformers refuses safetensors files whose metadata lacks a format.
  const header: Record<string, unknown> = { __metadata__: { format: 'pt' } };
  let offset = 0;
  for (const t of tensors) {
    header[t.name] = { dtype: 'F32', shape: t.shape, data_offsets: [offset, offset + t.bytes] };
    offset += t.bytes;
  }
  const json = new TextEncoder().encode(JSON.stringify(header));
  // Space-padded so the data starts 8-byte aligned.
  const padded = Math.ceil(json.length / 8) * 8;
  const out = new Uint8Array(8 + padded).fill(0x20, 8);
  new DataView(out.buffer).setBigUint64(0, BigInt(padded), true);
  out.set(json, 8);
  return out;
}

/**
 * One source tensor's values, row-major, in pieces: its view's [items, rowsPerItem] rows are rows
 * `row..row + rowsPerItem` of destination items `item..item + items`.
 */
async function* placementValues(packed: PackedModel, t: PackedTensorInfo, p: Placement, signal: AbortSignal | undefined): AsyncGenerator<Float32Array> {
  const cols = t.shape[t.shape.length - 1];
  const [items, rowsPerItem] = p.view;
  const destRows = t.shape.length === 3 ? t.shape[1] : 1;
  if (items * rowsPerItem * cols !== p.shape.reduce((a, b) => a * b, 1) || p.item + items > t.shape[0] || p.row + rowsPerItem > destRows) {
    throw new ModelFormatError(`placement of ${p.source} (view [${p.view}] at item ${p.item}, row ${p.row}) does not fit [${t.shape}]`, PACKED_MANIFEST, t.key);
  }
  const perRead = Math.max(1, Math.floor(PIECE_BYTES / (4 * t.itemStride)));
  for (let i = 0; i < items; i += perRead) {
    throwIfAborted(signal);
    const n = Math.min(perRead, items - i);
    const bytes = await packed.readItems(t.key, p.item + i, n, signal);
    const out = new Float32Array(n * rowsPerItem * cols);
    for (let k = 0; k < n; k++) {
      const values = itemValues(t.dtype, t.itemStride, bytes.subarray(k * t.itemBytes, (k + 1) * t.itemBytes));
      for (let r = 0; r < rowsPerItem; r++) {
        const from = (p.row + r) * t.rowStride;
        out.set(values.subarray(from, from + cols), (k * rowsPerItem + r) * cols);
      }
    }
    yield out;
  }
}
