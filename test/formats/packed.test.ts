import { readdirSync, readFileSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { PACKED_MANIFEST, PackedWriter, isPackedModel, openPacked, shardName } from '../../src/formats/packed.ts';
import { ModelFormatError } from '../../src/errors.ts';
import { FileSource } from '../../src/storage/file.ts';
import { FolderSink } from '../../src/storage/file_sink.ts';
import { rng } from '../helpers/random.ts';
import { TINY_CONFIG, layout, randomBytes, tempDir, writeRandomPacked } from './packed_helpers.ts';

const SHARD_BYTES = 700;

describe('packed writer → reader', () => {
  it('round-trips many tensors through small shards, whole items per shard, read by item range', async () => {
    const { dir, manifest, data } = await writeRandomPacked(SHARD_BYTES);
    expect(manifest.shards.length).toBeGreaterThan(4);
    expect(readdirSync(dir).filter((f) => f.endsWith('.partial'))).toEqual([]);
    for (const s of manifest.shards) expect(statSync(join(dir, s.name)).size).toBe(s.bytes);

    const packed = await openPacked(new FileSource(dir));
    expect(packed.config).toEqual(TINY_CONFIG);
    expect(packed.dtype).toBe('f16');
    expect([...packed.tensors.keys()]).toEqual([...data.keys()]);
    for (const t of packed.tensors.values()) {
      for (const run of t.runs) {
        const shard = manifest.shards[run.shard];
        // Whole items inside one shard; a shard passes the limit only to hold one oversized item.
        expect(run.offset + run.count * t.itemBytes).toBeLessThanOrEqual(shard.bytes);
        if (shard.bytes > SHARD_BYTES) expect(t.itemBytes).toBeGreaterThan(SHARD_BYTES);
      }
      const whole = data.get(t.key)!;
      expect(await packed.readItems(t.key, 0, t.shape[0])).toEqual(whole);
      const r = rng(t.itemBytes);
      for (let k = 0; k < 5; k++) {
        const first = Math.floor(r() * t.shape[0]);
        const count = Math.floor(r() * (t.shape[0] - first + 1));
        const bytes = await packed.readItems(t.key, first, count);
        expect(bytes).toEqual(whole.subarray(first * t.itemBytes, (first + count) * t.itemBytes));
      }
    }
    // Several shards hold items of more than one tensor, and several tensors span shards.
    expect([...packed.tensors.values()].filter((t) => new Set(t.runs.map((r) => r.shard)).size > 1).length).toBeGreaterThan(2);
    await expect(packed.readItems('embed', 30, 8)).rejects.toThrow(/embed: items 30\.\.38 are outside its 37 items/);
    await expect(packed.readItems('nope', 0, 1)).rejects.toThrow(/qwen-webgpu\.json: nope: no such tensor/);
  });

  it('serves config.json from the manifest and the listed files, and nothing else', async () => {
    const { dir, files } = await writeRandomPacked(1 << 20);
    const packed = await openPacked(new FileSource(dir));
    expect(packed.manifest.shards.length).toBe(1);
    expect(JSON.parse(await packed.files.text('config.json'))).toEqual(TINY_CONFIG);
    expect(await packed.files.text('tokenizer.json')).toBe(files['tokenizer.json']);
    const size = await packed.files.size('generation_config.json');
    expect(new TextDecoder().decode(await packed.files.read('generation_config.json', 0, size))).toBe(files['generation_config.json']);
    expect(await packed.files.has('tokenizer_config.json')).toBe(false);
    expect(await packed.files.has(shardName(0))).toBe(false);
    await expect(packed.files.text(shardName(0))).rejects.toThrow(/weights-00000\.bin: not in the packed model/);
  });

  it('verifies every shard and file, and names the file after one flipped byte', async () => {
    const { dir, manifest } = await writeRandomPacked(SHARD_BYTES);
    const progress: string[] = [];
    await (await openPacked(new FileSource(dir))).verify((p) => progress.push(p.file));
    expect(new Set(progress)).toEqual(new Set([...manifest.shards, ...manifest.files].map((f) => f.name)));

    for (const victim of [manifest.shards[3].name, 'tokenizer.json']) {
      const path = join(dir, victim);
      const original = readFileSync(path);
      const flipped = Uint8Array.from(original);
      flipped[Math.floor(flipped.length / 2)] ^= 0x10;
      writeFileSync(path, flipped);
      const packed = await openPacked(new FileSource(dir));
      const error = await packed.verify().catch((e: unknown) => e);
      expect(error).toBeInstanceOf(ModelFormatError);
      expect((error as Error).message).toMatch(new RegExp(`^${victim.replace('.', '\\.')}: sha256 [0-9a-f]{64} does not match`));
      writeFileSync(path, original);
    }
    await (await openPacked(new FileSource(dir))).verify();
  });

  it('stops verifying when aborted', async () => {
    const { dir } = await writeRandomPacked(SHARD_BYTES);
    const packed = await openPacked(new FileSource(dir));
    const controller = new AbortController();
    await expect(packed.verify(() => controller.abort(), controller.signal)).rejects.toThrow(/aborted/);
  });

  it('refuses a folder without a manifest, and a truncated or missing shard, naming the file', async () => {
    const empty = tempDir();
    expect(await isPackedModel(new FileSource(empty))).toBe(false);
    await expect(openPacked(new FileSource(empty))).rejects.toThrow(
      /^qwen-webgpu\.json: not found in .*: not a packed model, or its conversion did not finish/,
    );

    const { dir, manifest } = await writeRandomPacked(SHARD_BYTES);
    expect(await isPackedModel(new FileSource(dir))).toBe(true);
    const victim = manifest.shards[2];
    truncateSync(join(dir, victim.name), victim.bytes - 1);
    await expect(openPacked(new FileSource(dir))).rejects.toThrow(
      new RegExp(`^${victim.name}: ${victim.bytes - 1} bytes, but qwen-webgpu\\.json records ${victim.bytes} \\(truncated\\?\\)`),
    );
    truncateSync(join(dir, 'tokenizer.json'), 0);
    writeFileSync(join(dir, victim.name), new Uint8Array(victim.bytes));
    await expect(openPacked(new FileSource(dir))).rejects.toThrow(/^tokenizer\.json: 0 bytes, but/);
  });

  it('leaves no manifest until finish(): an unfinished conversion is not a model, even over an old one', async () => {
    const { dir } = await writeRandomPacked(SHARD_BYTES);
    const writer = new PackedWriter(new FolderSink(dir), { config: TINY_CONFIG, dtype: 'f32', shardBytes: SHARD_BYTES });
    const t = layout('embed', 'f32', [10, 8]);
    await writer.addTensor(t, [randomBytes(10 * t.itemBytes, 1)]);
    expect(await isPackedModel(new FileSource(dir))).toBe(false);
    await writer.abort();
    expect(readdirSync(dir).filter((f) => f.endsWith('.partial'))).toEqual([]);
  });

  it('refuses tensors whose data or layout does not add up, naming the tensor', async () => {
    const writer = () => new PackedWriter(new FolderSink(tempDir()), { config: TINY_CONFIG, dtype: 'q4', shardBytes: SHARD_BYTES });
    const t = layout('layers.1.attn.o_proj', 'q4', [3, 100]);
    await expect(writer().addTensor(t, [new Uint8Array(3 * t.itemBytes - 1)])).rejects.toThrow(
      /layers\.1\.attn\.o_proj: got 2 items and 71 bytes, expected 3 items of 72 bytes/,
    );
    await expect(writer().addTensor(t, [new Uint8Array(3 * t.itemBytes + 4)])).rejects.toThrow(/o_proj: more data than its 3 items/);
    await expect(writer().addTensor(t, [])).rejects.toThrow(/got 0 items, expected 3/);
    await expect(writer().addTensor({ ...t, rowStride: 100, itemStride: 100 }, [])).rejects.toThrow(/rowStride 100 is not a multiple of 64/);
    await expect(writer().addTensor({ ...t, itemStride: 64 }, [])).rejects.toThrow(/itemStride 64 is not rowsPerItem 1 × rowStride 128/);
    const w = writer();
    await w.addTensor(t, [new Uint8Array(3 * t.itemBytes)]);
    await expect(w.addTensor(t, [new Uint8Array(3 * t.itemBytes)])).rejects.toThrow(/o_proj: added twice/);
    await expect(w.finish()).rejects.toThrow(/already failed/);
    await expect(writer().addFile('config.json', '{}')).rejects.toThrow(/config\.json: is a name the packed format keeps/);
    await expect(writer().addFile('../x.json', '{}')).rejects.toThrow(/not a plain file name/);
    const busy = writer();
    const first = busy.addFile('a.json', '{}');
    await expect(busy.addFile('b.json', '{}')).rejects.toThrow(/calls must not overlap/);
    await first;
  });

  it('writes the manifest last, after every other file has its final name', async () => {
    const dir = tempDir();
    const events: string[] = [];
    const inner = new FolderSink(dir);
    const sink = {
      location: dir,
      create: (name: string) => (events.push(`create ${name}`), inner.create(name)),
      rename: (from: string, to: string) => (events.push(`rename ${to}`), inner.rename(from, to)),
      remove: (name: string) => (events.push(`remove ${name}`), inner.remove(name)),
    };
    const writer = new PackedWriter(sink, { config: TINY_CONFIG, dtype: 'f32', shardBytes: 64 });
    const t = layout('embed', 'f32', [4, 8]);
    await writer.addTensor(t, [randomBytes(4 * t.itemBytes, 2)]);
    await writer.addFile('tokenizer.json', '{}');
    await writer.finish();
    expect(events).toEqual([
      `remove ${PACKED_MANIFEST}`,
      'create weights-00000.bin.partial',
      'create weights-00001.bin.partial',
      'create tokenizer.json.partial',
      'rename weights-00000.bin',
      'rename weights-00001.bin',
      'rename tokenizer.json',
      `create ${PACKED_MANIFEST}.partial`,
      `rename ${PACKED_MANIFEST}`,
    ]);
  });
});
