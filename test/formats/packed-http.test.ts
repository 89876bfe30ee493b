import { rmSync } from 'node:fs';
import { basename, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openPacked } from '../../src/formats/packed.ts';
import { HttpSource } from '../../src/storage/http.ts';
import { type StaticServer, serveStatic } from '../helpers/static_server.ts';
import { type RandomPacked, tempDir, writeRandomPacked } from './packed_helpers.ts';

// Packed models' folders under one root, served as /packed/<name>/<file>.
const root = tempDir();
let server: StaticServer;
let base: string;
let model: RandomPacked;

/** What was asked for since the log was last cleared: each file, with its Range header or 'whole'. */
const requests = (): { file: string; range: string }[] =>
  server.log.map((line) => {
    const [, path, range = 'whole'] = line.split(' ');
    return { file: basename(path), range };
  });

beforeAll(async () => {
  model = await writeRandomPacked(700, join(root, 'model'));
  server = await serveStatic({ '/packed/': root });
  base = `${server.url}/packed`;
});
afterAll(() => server?.close());

describe('packed model over HTTP', () => {
  it('opens, reads item ranges with Range requests only, serves the files and verifies', async () => {
    const packed = await openPacked(new HttpSource(`${base}/model`));
    server.log.length = 0;
    const t = packed.tensors.get('layers.0.linear.conv')!;
    const bytes = await packed.readItems(t.key, 3, 30);
    expect(bytes).toEqual(model.data.get(t.key)!.subarray(3 * t.itemBytes, 33 * t.itemBytes));
    // Items 3..33 lie in three shards: one exact range request each, nothing else.
    expect(requests().map((r) => r.file)).toEqual(['weights-00007.bin', 'weights-00008.bin', 'weights-00009.bin']);
    expect(requests().map((r) => r.range)).toEqual([`bytes=${528 + 3 * 32}-687`, 'bytes=0-671', `bytes=0-${7 * 32 - 1}`]);

    expect(await packed.files.text('tokenizer.json')).toBe(model.files['tokenizer.json']);
    expect(JSON.parse(await packed.files.text('config.json'))).toEqual(packed.config);
    await packed.verify();
    expect(requests().filter((r) => r.range === 'whole' && r.file.endsWith('.bin'))).toEqual([]);
  });

  it('names a missing shard, and a URL without a model', async () => {
    const broken = await writeRandomPacked(700, join(root, 'broken'));
    rmSync(join(broken.dir, 'weights-00004.bin'));
    await expect(openPacked(new HttpSource(`${base}/broken`))).rejects.toThrow(/^weights-00004\.bin: not found at http:.*\/broken/);
    await expect(openPacked(new HttpSource(`${base}/nothing`))).rejects.toThrow(/^qwen-webgpu\.json: not found in http:.*\/nothing: not a packed model/);
  });
});
