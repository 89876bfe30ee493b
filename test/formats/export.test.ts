import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { exportHf } from '../../src/model/export_hf.ts';
import { roundToF16 } from '../../src/numeric/half.ts';
import { type PackedDtype, type PackedModel, openPacked } from '../../src/formats/packed.ts';
import { itemValues } from '../../src/formats/packed_values.ts';
import { roundToQ4 } from '../../src/numeric/q4.ts';
import { readCheckpointTensors } from '../../src/formats/safetensors.ts';
import { parseConfig } from '../../src/model/config.ts';
import { mtpTensors, textModelTensors } from '../../src/model/tensors.ts';
import { FileSource } from '../../src/storage/file.ts';
import { FolderSink } from '../../src/storage/file_sink.ts';
import { FIXTURES, type FixtureName, fixtureDir } from '../helpers/fixtures.ts';
import { TOKENIZER_FILES, fixtureValues, packFixture } from './packed_fixture.ts';
import { tempDir } from './packed_helpers.ts';

const KiB = 1024;

/** Index of the first element that differs, or -1. */
function firstDifference(a: Float32Array, b: Float32Array): number {
  if (a.length !== b.length) return 0;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return i;
  return -1;
}

async function exportedValues(dir: string): Promise<Map<string, { shape: number[]; dtype: string; values: Float32Array }>> {
  const source = new FileSource(dir);
  const out = new Map<string, { shape: number[]; dtype: string; values: Float32Array }>();
  for (const [name, e] of await readCheckpointTensors(source)) {
    const bytes = await source.read(e.file, e.offset, e.bytes);
    out.set(name, { shape: e.shape, dtype: e.fileDtype, values: new Float32Array(bytes.buffer, bytes.byteOffset, e.bytes / 4) });
  }
  return out;
}

/** Hugging Face names of the tensors stored as vectors (always f32 in a packed model). */
function vectorSources(name: FixtureName): Set<string> {
  const c = parseConfig(JSON.parse(readFileSync(join(fixtureDir(name), 'config.json'), 'utf8')));
  const naming = { prefix: 'model.language_model.', fusedExperts: true };
  const specs = [...textModelTensors(c, naming), ...mtpTensors(c, naming)];
  return new Set(specs.filter((s) => s.kind === 'vector').flatMap((s) => s.sources.map((p) => p.source)));
}

/** Row `row` of item `item` of a packed tensor, as f32. */
async function packedRow(packed: PackedModel, key: string, item: number, row = 0): Promise<Float32Array> {
  const t = packed.tensors.get(key)!;
  const values = itemValues(t.dtype, t.itemStride, await packed.readItems(key, item, 1));
  return values.subarray(row * t.rowStride, row * t.rowStride + t.shape[t.shape.length - 1]);
}

describe.each(FIXTURES)('export to Hugging Face: %s', (name) => {
  const dtypes: PackedDtype[] = ['f32', 'f16', 'q4'];
  it.each(dtypes)('gives back the fixture tensors from a %s packed model (names, shapes, values)', async (dtype) => {
    const { dir } = await packFixture(name, dtype, 256 * KiB);
    const packed = await openPacked(new FileSource(dir));
    const out = tempDir();
    let last = { doneBytes: 0, totalBytes: -1 };
    const result = await exportHf(packed, new FolderSink(out), { shardBytes: 4096 * KiB, onProgress: (p) => (last = p) });
    expect(last.doneBytes).toBe(last.totalBytes);
    expect(result.files[result.files.length - 1]).toBe('config.json');

    const fixture = await fixtureValues(name);
    const exported = await exportedValues(out);
    const expectedNames = [...fixture.keys()].filter((n) => !n.startsWith('model.visual.'));
    expect(expectedNames.some((n) => n.startsWith('mtp.'))).toBe(true);
    expect([...exported.keys()].sort()).toEqual(expectedNames.sort());
    const vectors = vectorSources(name);
    for (const n of expectedNames) {
      const { shape, values } = fixture.get(n)!;
      const e = exported.get(n)!;
      expect(e.shape, n).toEqual(shape);
      expect(e.dtype, n).toBe('F32');
      const cols = shape[shape.length - 1];
      const expected = dtype === 'f32' || vectors.has(n) ? values : dtype === 'f16' ? roundToF16(values) : roundToQ4(values, [values.length / cols, cols]);
      const at = firstDifference(e.values, expected);
      expect(at, `${n}: first difference at element ${at}: ${e.values[at]} vs ${expected[at]}`).toBe(-1);
      // bf16 weights are exact in f16 except the few below f16's normal range (2^-14), which lose low bits.
      if (dtype === 'f16') for (let i = 0; i < values.length; i++) if (e.values[i] !== values[i]) expect(Math.abs(values[i]), n).toBeLessThan(2 ** -14);
    }

    expect(JSON.parse(readFileSync(join(out, 'config.json'), 'utf8'))).toEqual(JSON.parse(readFileSync(join(fixtureDir(name), 'config.json'), 'utf8')));
    for (const f of TOKENIZER_FILES) expect(readFileSync(join(out, f)).equals(readFileSync(join(fixtureDir(name), f))), f).toBe(true);
    const files = readdirSync(out);
    expect(files.filter((f) => f.endsWith('.partial'))).toEqual([]);
    // The MoE fixture (≈ 44 MB as F32) is sharded with an index; the dense one (≈ 9 MB) too, at 4 MiB a file.
    expect(files).toContain('model.safetensors.index.json');
    expect(files.filter((f) => /^model-\d{5}-of-\d{5}\.safetensors$/.test(f)).length).toBeGreaterThan(1);
  });
});

describe('export to Hugging Face', () => {
  it('the packed fixture holds the fused layout the loader builds', async () => {
    const dense = await openPacked(new FileSource((await packFixture('tiny-qwen35', 'f32', 1 << 20)).dir));
    const d = await fixtureValues('tiny-qwen35');
    const row = (n: string, r: number) => {
      const { shape, values } = d.get(`model.language_model.${n}`)!;
      const cols = shape[shape.length - 1];
      return values.subarray(r * cols, (r + 1) * cols);
    };
    expect(await packedRow(dense, 'layers.0.mlp.gate_up', 5, 0)).toEqual(row('layers.0.mlp.gate_proj.weight', 5));
    expect(await packedRow(dense, 'layers.0.mlp.gate_up', 5, 1)).toEqual(row('layers.0.mlp.up_proj.weight', 5));
    const qRows = d.get('model.language_model.layers.3.self_attn.q_proj.weight')!.shape[0];
    expect(await packedRow(dense, 'layers.3.attn.qkv_proj', qRows + 1)).toEqual(row('layers.3.self_attn.k_proj.weight', 1));
    const convDim = d.get('model.language_model.layers.0.linear_attn.in_proj_qkv.weight')!.shape[0];
    expect(await packedRow(dense, 'layers.0.linear.in_proj', convDim)).toEqual(row('layers.0.linear_attn.in_proj_z.weight', 0));

    const moe = await openPacked(new FileSource((await packFixture('tiny-qwen35-moe', 'f32', 1 << 20)).dir));
    const m = await fixtureValues('tiny-qwen35-moe');
    const experts = m.get('model.language_model.layers.0.mlp.experts.gate_up_proj')!;
    const [E, rows, H] = experts.shape;
    expect(await packedRow(moe, 'layers.0.mlp.experts_gate_up', 3, rows - 1)).toEqual(
      experts.values.subarray((3 * rows + rows - 1) * H, (3 * rows + rows) * H),
    );
    expect(await packedRow(moe, 'layers.0.mlp.router', E)).toEqual(m.get('model.language_model.layers.0.mlp.shared_expert_gate.weight')!.values);
  });

  it('writes one model.safetensors when everything fits', async () => {
    const packed = await openPacked(new FileSource((await packFixture('tiny-qwen35', 'f16', 1 << 20)).dir));
    const out = tempDir();
    await exportHf(packed, new FolderSink(out));
    expect(readdirSync(out).sort()).toEqual(['config.json', 'generation_config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json']);
    // transformers insists on a format in the metadata.
    const header = readFileSync(join(out, 'model.safetensors'));
    const length = Number(header.readBigUInt64LE(0));
    expect(length % 8).toBe(0);
    expect(JSON.parse(header.subarray(8, 8 + length).toString()).__metadata__).toEqual({ format: 'pt' });
  });

  it('refuses a packed model whose tensors are not what its config implies, naming the tensor', async () => {
    const packed = await openPacked(new FileSource((await packFixture('tiny-qwen35', 'f32', 1 << 20)).dir));
    const without = (key: string): PackedModel => ({ ...packed, tensors: new Map([...packed.tensors].filter(([k]) => k !== key)) });
    await expect(exportHf(without('layers.2.linear.conv'), new FolderSink(tempDir()))).rejects.toThrow(
      /^qwen-webgpu\.json: layers\.2\.linear\.conv: missing \(the config implies shape \[1024,4\]\)/,
    );
    const reshaped = new Map(packed.tensors);
    reshaped.set('norm', { ...packed.tensors.get('norm')!, shape: [2, 128] });
    await expect(exportHf({ ...packed, tensors: reshaped }, new FolderSink(tempDir()))).rejects.toThrow(
      /^qwen-webgpu\.json: norm: shape \[2,128\] does not match \[1,128\]/,
    );
    const extra = new Map(packed.tensors);
    extra.set('layers.9.attn.o_proj', packed.tensors.get('layers.3.attn.o_proj')!);
    await expect(exportHf({ ...packed, tensors: extra }, new FolderSink(tempDir()))).rejects.toThrow(
      /layers\.9\.attn\.o_proj: is not a tensor of the model its config describes/,
    );
  });

  it('stops when aborted, leaving no checkpoint and no partial files', async () => {
    const packed = await openPacked(new FileSource((await packFixture('tiny-qwen35-moe', 'f16', 1 << 20)).dir));
    const out = tempDir();
    const controller = new AbortController();
    const run = exportHf(packed, new FolderSink(out), {
      shardBytes: 4096 * KiB,
      signal: controller.signal,
      onProgress: (p) => p.doneBytes > p.totalBytes / 2 && controller.abort(),
    });
    await expect(run).rejects.toThrow(/aborted/);
    expect(readdirSync(out)).toEqual([]);
  });
});
