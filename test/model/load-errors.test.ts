import { readFileSync, truncateSync, unlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { GpuContext } from '../../src/gpu/context.ts';
import { ConfigError, ModelFormatError } from '../../src/errors.ts';
import { createNodeContext } from '../../src/hosts/node/gpu.ts';
import { encodeSafetensors, readSafetensorsHeader } from '../../src/formats/safetensors.ts';
import { loadModel } from '../../src/model/load.ts';
import { FileSource } from '../../src/storage/file.ts';
import { openModel } from '../../src/storage/locate.ts';
import { type CheckpointSpec, writeCheckpoint } from '../helpers/checkpoint.ts';
import { removeWrittenGgufs, writeFixtureGguf } from '../helpers/gguf_writer.ts';

// Bad checkpoints fail before any GPU memory is allocated, with an error naming the file and the tensor or field.
const SPEC: CheckpointSpec = { seed: 5, hidden: 64, layers: 4, heads: [2, 1], linearHeads: [1, 2], intermediate: 96, tied: false, dtype: 'BF16' };

let ctx: GpuContext;
beforeAll(async () => {
  ctx = await createNodeContext({ adapter: 'llvmpipe' });
});
afterAll(() => {
  ctx?.destroy();
  removeWrittenGgufs();
});

const load = async (dir: string) => loadModel(ctx, await openModel(dir), { dtype: 'f32' });

function editConfig(dir: string, edit: (c: { text_config: Record<string, unknown> } & Record<string, unknown>) => void): void {
  const path = join(dir, 'config.json');
  const config = JSON.parse(readFileSync(path, 'utf8'));
  edit(config);
  writeFileSync(path, JSON.stringify(config));
}

/** Rewrites the ggml type id of one tensor in a GGUF file's tensor infos (name, n_dims, dims, type, offset). */
function setTensorType(path: string, name: string, type: number): void {
  const bytes = readFileSync(path);
  const key = Buffer.alloc(8 + name.length);
  key.writeBigUInt64LE(BigInt(name.length));
  key.write(name, 8);
  const at = bytes.indexOf(key);
  expect(at, `${name} in ${path}`).toBeGreaterThan(0);
  const dims = bytes.readUInt32LE(at + key.length);
  bytes.writeUInt32LE(type, at + key.length + 4 + 8 * dims);
  writeFileSync(path, bytes);
}

/** Rewrites model.safetensors with `change` applied to its tensor list. */
async function editTensors(dir: string, change: (t: { name: string; dtype: string; shape: number[]; data: Uint8Array }[]) => void) {
  const file = join(dir, 'model.safetensors');
  const bytes = readFileSync(file);
  const entries = await readSafetensorsHeader(new FileSource(dir), 'model.safetensors');
  const tensors = entries.map((e) => ({
    name: e.name,
    dtype: e.fileDtype,
    shape: e.shape,
    data: new Uint8Array(bytes.subarray(e.offset, e.offset + e.bytes)),
  }));
  change(tensors);
  writeFileSync(file, encodeSafetensors(tensors as Parameters<typeof encodeSafetensors>[0]));
}

describe('loading a malformed checkpoint', () => {
  it('names a tensor whose shape disagrees with config.json', async () => {
    const dir = writeCheckpoint(SPEC);
    editConfig(dir, (c) => (c.text_config.intermediate_size = 100));
    await expect(load(dir)).rejects.toThrow(
      /model\.safetensors: model\.language_model\.layers\.0\.mlp\.gate_proj\.weight: shape \[96,64\] does not match \[100,64\]/,
    );
  });

  it('names a missing tensor', async () => {
    const dir = writeCheckpoint(SPEC);
    await editTensors(dir, (t) =>
      t.splice(
        t.findIndex((x) => x.name.endsWith('layers.3.self_attn.k_norm.weight')),
        1,
      ),
    );
    await expect(load(dir)).rejects.toThrow(/model\.language_model\.layers\.3\.self_attn\.k_norm\.weight: missing from the checkpoint/);
  });

  it('names a tensor of an unsupported dtype', async () => {
    const dir = writeCheckpoint(SPEC);
    await editTensors(dir, (t) => {
      const norm = t.find((x) => x.name.endsWith('model.language_model.norm.weight'))!;
      norm.dtype = 'I16';
    });
    await expect(load(dir)).rejects.toThrow(/model\.safetensors: model\.language_model\.norm\.weight: dtype I16 is not supported \(BF16, F16, F32\)/);
  });

  it('names a GGUF tensor of a type it cannot decode, and the types it can', async () => {
    const gguf = await writeFixtureGguf('tiny-qwen35', {
      types: (name, dims) => (dims.length === 1 ? 'F32' : name === 'blk.1.ssm_out.weight' ? 'Q4_K' : 'F16'),
    });
    const path = join(gguf.dir, gguf.file);
    // Q4_K (144 bytes per 256 values) → IQ2_XXS (66): the header stays valid; the reader has no decoder for it.
    setTensorType(path, 'blk.1.ssm_out.weight', 16);
    await expect(load(path)).rejects.toThrow(
      /\.gguf: model\.layers\.1\.linear_attn\.out_proj\.weight: dtype IQ2_XXS is not supported \(F32, F16, BF16, Q8_0, Q4_0, .*, IQ4_XS, MXFP4\)/,
    );
  });

  it('names a truncated file', async () => {
    const dir = writeCheckpoint(SPEC);
    const file = join(dir, 'model.safetensors');
    truncateSync(file, readFileSync(file).length - 100);
    await expect(load(dir)).rejects.toThrow(ModelFormatError);
    await expect(load(dir)).rejects.toThrow(/model\.safetensors: .*truncated/);
  });

  it('names an unknown model_type and a missing config', async () => {
    const dir = writeCheckpoint(SPEC);
    editConfig(dir, (c) => (c.model_type = 'qwen2'));
    await expect(load(dir)).rejects.toThrow(ConfigError);
    await expect(load(dir)).rejects.toThrow(/config\.json: model_type: "qwen2" is not a Qwen3\.5 model/);
    unlinkSync(join(dir, 'config.json'));
    await expect(load(dir)).rejects.toThrow(/config\.json: missing/);
  });
});
