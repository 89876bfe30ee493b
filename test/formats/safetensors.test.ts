import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { encodeSafetensors, readCheckpointTensors, readSafetensorsHeader } from '../../src/formats/safetensors.ts';
import { ModelFormatError } from '../../src/errors.ts';
import { FileSource } from '../../src/storage/file.ts';

function folder(files: Record<string, Uint8Array | string>): FileSource {
  const dir = mkdtempSync(join(tmpdir(), 'qwen-st-'));
  for (const [name, data] of Object.entries(files)) writeFileSync(join(dir, name), data);
  return new FileSource(dir);
}

function withHeader(header: unknown, dataBytes: number, declaredLength?: number): Uint8Array {
  const json = new TextEncoder().encode(JSON.stringify(header));
  const out = new Uint8Array(8 + json.length + dataBytes);
  new DataView(out.buffer).setBigUint64(0, BigInt(declaredLength ?? json.length), true);
  out.set(json, 8);
  return out;
}

const good = encodeSafetensors([
  { name: 'a', dtype: 'BF16', shape: [2, 3], data: new Uint8Array(12) },
  { name: 'b', dtype: 'F32', shape: [4], data: new Uint8Array(16) },
]);

describe('safetensors', () => {
  it('reads back what it writes, with absolute data offsets', async () => {
    const entries = await readSafetensorsHeader(folder({ 'm.safetensors': good }), 'm.safetensors');
    expect(entries.map((e) => [e.name, e.dtype, e.shape, e.bytes])).toEqual([
      ['a', 'bf16', [2, 3], 12],
      ['b', 'f32', [4], 16],
    ]);
    expect(entries[1].offset - entries[0].offset).toBe(12);
  });

  const bad: [string, Uint8Array, RegExp][] = [
    ['a file shorter than the length field', new Uint8Array(5), /too short/],
    ['a header longer than the file', withHeader({}, 0, 1 << 30), /header claims 1073741824 bytes/],
    ['a header that is not JSON', withHeader('x', 0).map((b, i) => (i === 8 ? 0x7b : b)), /not valid JSON/],
    [
      'data beyond the end of the file (truncated)',
      withHeader({ t: { dtype: 'F32', shape: [4], data_offsets: [0, 16] } }, 8),
      /t: data ends at byte 16.*holds 8/,
    ],
    [
      'a shape that disagrees with the byte span',
      withHeader({ t: { dtype: 'F32', shape: [5], data_offsets: [0, 16] } }, 16),
      /t: shape \[5\] of F32 needs 20 bytes/,
    ],
    ['negative dimensions', withHeader({ t: { dtype: 'F32', shape: [-4], data_offsets: [0, 16] } }, 16), /t: shape \[-4\]/],
    ['inverted offsets', withHeader({ t: { dtype: 'F32', shape: [0], data_offsets: [8, 0] } }, 16), /data_offsets/],
    ['a missing dtype', withHeader({ t: { shape: [4], data_offsets: [0, 16] } }, 16), /t: header entry has no dtype/],
    [
      "tensors whose data overlap (one would read the other's values)",
      withHeader({ t: { dtype: 'F32', shape: [4], data_offsets: [0, 16] }, u: { dtype: 'F32', shape: [2], data_offsets: [8, 16] } }, 16),
      /u: data_offsets \[8, 16\] overlap those of t \[0, 16\]/,
    ],
  ];
  for (const [what, bytes, message] of bad) {
    it(`refuses ${what}, naming the file`, async () => {
      const read = readSafetensorsHeader(folder({ 'm.safetensors': bytes }), 'm.safetensors');
      await expect(read).rejects.toThrow(ModelFormatError);
      await expect(readSafetensorsHeader(folder({ 'm.safetensors': bytes }), 'm.safetensors')).rejects.toThrow(
        new RegExp(`m\\.safetensors: .*${message.source}`),
      );
    });
  }

  it('accepts tensors that touch, and empty tensors anywhere', async () => {
    const header = {
      t: { dtype: 'F32', shape: [2], data_offsets: [0, 8] },
      u: { dtype: 'F32', shape: [2], data_offsets: [8, 16] },
      e: { dtype: 'F32', shape: [0], data_offsets: [4, 4] },
    };
    const entries = await readSafetensorsHeader(folder({ 'm.safetensors': withHeader(header, 16) }), 'm.safetensors');
    expect(entries.map((e) => e.name)).toEqual(['t', 'u', 'e']);
  });

  it('names an index that is null or has no weight_map object', async () => {
    for (const index of ['null', '[]', '{"weight_map": null}', '{"weight_map": ["a"]}']) {
      await expect(readCheckpointTensors(folder({ 'model.safetensors.index.json': index, 's1.safetensors': good }))).rejects.toThrow(
        /^model\.safetensors\.index\.json: (is not a JSON object|has no weight_map object)$/,
      );
    }
  });

  it('checks a shard index against the shards', async () => {
    const index = (map: Record<string, string>) => JSON.stringify({ weight_map: map });
    await expect(readCheckpointTensors(folder({ 'model.safetensors.index.json': index({ a: 's1.safetensors' }) }))).rejects.toThrow(/s1\.safetensors: missing/);
    await expect(readCheckpointTensors(folder({ 'model.safetensors.index.json': index({ c: 's1.safetensors' }), 's1.safetensors': good }))).rejects.toThrow(
      /c: listed in the index but missing/,
    );
    await expect(readCheckpointTensors(folder({ 'model.safetensors.index.json': index({ a: '../x' }), 's1.safetensors': good }))).rejects.toThrow(
      /invalid shard/,
    );
    const ok = await readCheckpointTensors(
      folder({ 'model.safetensors.index.json': index({ a: 's1.safetensors', b: 's1.safetensors' }), 's1.safetensors': good }),
    );
    expect([...ok.keys()]).toEqual(['a', 'b']);
    await expect(readCheckpointTensors(folder({}))).rejects.toThrow(/no model\.safetensors/);
  });
});
