import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { type PackedDtype, type PackedManifest, PackedWriter, rowAlignment } from '../../src/formats/packed.ts';
import { f32ToF16Bits } from '../../src/numeric/half.ts';
import { quantizeQ4Item } from '../../src/numeric/q4.ts';
import { readCheckpointTensors } from '../../src/formats/safetensors.ts';
import { parseConfig } from '../../src/model/config.ts';
import { mtpTensors, textModelTensors } from '../../src/model/tensors.ts';
import { FileSource } from '../../src/storage/file.ts';
import { FolderSink } from '../../src/storage/file_sink.ts';
import { type FixtureName, fixtureDir } from '../helpers/fixtures.ts';
import { randomPieces, tempDir } from './packed_helpers.ts';

export const TOKENIZER_FILES = ['tokenizer.json', 'tokenizer_config.json', 'generation_config.json'];

type Values = Map<string, { shape: number[]; values: Float32Array }>;
const cache = new Map<FixtureName, Promise<Values>>();

/** A fixture's tensors as f32 values by Hugging Face name (bf16 and f32 are exact in f32); read once per process. */
export function fixtureValues(name: FixtureName): Promise<Values> {
  let values = cache.get(name);
  if (!values) cache.set(name, (values = readFixtureValues(name)));
  return values;
}

async function readFixtureValues(name: FixtureName): Promise<Values> {
  const source = new FileSource(fixtureDir(name));
  const out = new Map<string, { shape: number[]; values: Float32Array }>();
  for (const [key, e] of await readCheckpointTensors(source)) {
    const bytes = await source.read(e.file, e.offset, e.bytes);
    const n = e.shape.reduce((a, b) => a * b, 1);
    let values: Float32Array;
    if (e.dtype === 'f32') values = new Float32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length));
    else if (e.dtype === 'bf16') {
      const h = new Uint16Array(bytes.buffer, bytes.byteOffset, n);
      const bits = new Uint32Array(n);
      for (let i = 0; i < n; i++) bits[i] = h[i] << 16; // bf16 is the top half of an f32
      values = new Float32Array(bits.buffer);
    } else throw new Error(`${key}: fixture dtype ${e.fileDtype} not expected`);
    out.set(key, { shape: e.shape, values });
  }
  return out;
}

/**
 * Packs a fixture as the engine holds it on the GPU, built on the CPU: each GPU tensor filled from its
 * placements as the loader does (source item i, row r → destination item `item + i`, row `row + r`), rows
 * zero-padded, matrices in `dtype` and vectors in f32, the multi-token-prediction block included.
 */
export async function packFixture(
  name: FixtureName,
  dtype: PackedDtype,
  shardBytes: number,
  dir = tempDir(),
): Promise<{ dir: string; manifest: PackedManifest }> {
  const config = JSON.parse(readFileSync(join(fixtureDir(name), 'config.json'), 'utf8'));
  const c = parseConfig(config);
  const naming = { prefix: 'model.language_model.', fusedExperts: true };
  const specs = [...textModelTensors(c, naming), ...mtpTensors(c, naming)];
  const hf = await fixtureValues(name);
  const writer = new PackedWriter(new FolderSink(dir), { config, dtype, shardBytes });
  for (const [n, spec] of specs.entries()) {
    const d: PackedDtype = spec.kind === 'vector' ? 'f32' : dtype;
    const cols = spec.shape[spec.shape.length - 1];
    const align = rowAlignment(d);
    const rowStride = Math.ceil(cols / align) * align;
    const rowsPerItem = spec.shape.length === 3 ? spec.shape[1] : 1;
    const itemStride = rowsPerItem * rowStride;
    const items = spec.shape[0];
    const gpu = new Float32Array(items * itemStride);
    for (const p of spec.sources) {
      const src = hf.get(p.source)!.values;
      const [srcItems, srcRows] = p.view;
      for (let i = 0; i < srcItems; i++) {
        for (let r = 0; r < srcRows; r++) {
          const from = (i * srcRows + r) * cols;
          gpu.set(src.subarray(from, from + cols), (p.item + i) * itemStride + (p.row + r) * rowStride);
        }
      }
    }
    const bytes = encodeItems(gpu, d, items, itemStride);
    await writer.addTensor({ key: spec.key, dtype: d, shape: spec.shape, rowStride, itemStride }, randomPieces(bytes, n, 40 * (bytes.length / items)));
  }
  for (const f of TOKENIZER_FILES) await writer.addFile(f, readFileSync(join(fixtureDir(name), f)));
  return { dir, manifest: await writer.finish() };
}

function encodeItems(values: Float32Array, dtype: PackedDtype, items: number, itemStride: number): Uint8Array {
  if (dtype === 'f32') return new Uint8Array(values.buffer);
  if (dtype === 'f16') {
    const halves = new Uint16Array(values.length);
    for (let i = 0; i < values.length; i++) halves[i] = f32ToF16Bits(values[i]);
    return new Uint8Array(halves.buffer);
  }
  const blocks: Uint32Array[] = [];
  for (let i = 0; i < items; i++) blocks.push(quantizeQ4Item(values.subarray(i * itemStride, (i + 1) * itemStride), itemStride));
  const out = new Uint32Array(blocks.reduce((s, b) => s + b.length, 0));
  blocks.reduce((at, b) => (out.set(b, at), at + b.length), 0);
  return new Uint8Array(out.buffer);
}
