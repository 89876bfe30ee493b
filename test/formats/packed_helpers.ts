import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type PackedDtype, type PackedManifest, type PackedTensorMeta, PackedWriter, itemBytesOf, rowAlignment } from '../../src/formats/packed.ts';
import { FolderSink } from '../../src/storage/file_sink.ts';
import { rng } from '../helpers/random.ts';

export const tempDir = (): string => mkdtempSync(join(tmpdir(), 'qwen-packed-'));

export function layout(key: string, dtype: PackedDtype, shape: number[]): PackedTensorMeta & { itemBytes: number } {
  const align = rowAlignment(dtype);
  const rowStride = Math.ceil(shape[shape.length - 1] / align) * align;
  const itemStride = (shape.length === 3 ? shape[1] : 1) * rowStride;
  return { key, dtype, shape, rowStride, itemStride, itemBytes: itemBytesOf(dtype, itemStride) };
}

/** Yields `bytes` in pieces of pseudo-random sizes, so chunks cut items anywhere. */
export function* randomPieces(bytes: Uint8Array, seed: number, largest: number): Generator<Uint8Array> {
  const r = rng(seed);
  for (let at = 0; at < bytes.length; ) {
    const n = 1 + Math.floor(r() * largest);
    yield bytes.subarray(at, at + n);
    at += n;
  }
}

export function randomBytes(n: number, seed: number): Uint8Array {
  const r = rng(seed);
  return Uint8Array.from({ length: n }, () => Math.floor(r() * 256));
}

export const TINY_CONFIG = { model_type: 'qwen3_5', text_config: { hidden_size: 64 } };

export interface RandomPacked {
  dir: string;
  manifest: PackedManifest;
  data: Map<string, Uint8Array>;
  files: Record<string, string>;
}

/** Many tensors of every dtype and rank, in shards of `shardBytes`, with two tokenizer-like files. */
export async function writeRandomPacked(shardBytes: number, dir = tempDir()): Promise<RandomPacked> {
  const tensors = [
    layout('embed', 'f16', [37, 24]),
    layout('layers.0.mlp.experts_gate_up', 'q4', [5, 6, 70]),
    layout('layers.0.input_norm', 'f32', [1, 20]),
    layout('layers.0.linear.conv', 'f32', [40, 4]),
    layout('layers.0.mlp.experts_down', 'f16', [5, 3, 17]),
    layout('big', 'f32', [2, 300]), // items larger than a tiny shard
    layout('lm_head', 'q4', [13, 64]),
  ];
  const writer = new PackedWriter(new FolderSink(dir), { config: TINY_CONFIG, dtype: 'f16', shardBytes });
  const data = new Map<string, Uint8Array>();
  for (const [i, t] of tensors.entries()) {
    const bytes = randomBytes(t.shape[0] * t.itemBytes, 100 + i);
    data.set(t.key, bytes);
    const { itemBytes: _, ...meta } = t;
    await writer.addTensor(meta, randomPieces(bytes, i, 3 * t.itemBytes));
  }
  const files = { 'tokenizer.json': '{"model": {}}', 'generation_config.json': '{"eos_token_id": [1, 2]}' };
  for (const [name, text] of Object.entries(files)) await writer.addFile(name, text);
  return { dir, manifest: await writer.finish(), data, files };
}
