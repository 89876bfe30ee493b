import { createReadStream, rmSync, statSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openPacked } from '../../src/formats/packed.ts';
import { HttpSource } from '../../src/storage/http.ts';
import { type RandomPacked, writeRandomPacked } from './packed_helpers.ts';

// A static server with Range support over packed models' folders (/<name>/<file>), recording what was asked for.
let server: Server;
let base: string;
let model: RandomPacked;
const folders = new Map<string, string>();
const requests: { file: string; range: string }[] = [];

beforeAll(async () => {
  model = await writeRandomPacked(700);
  folders.set('model', model.dir);
  server = createServer((req, res) => {
    const [, name, file] = decodeURIComponent(new URL(req.url ?? '/', 'http://x').pathname).split('/');
    const path = join(folders.get(name) ?? '/nonexistent', file);
    let size: number;
    try {
      size = statSync(path).size;
    } catch {
      res.writeHead(404).end();
      return;
    }
    requests.push({ file, range: req.headers.range ?? 'whole' });
    const range = /bytes=(\d+)-(\d+)/.exec(req.headers.range ?? '');
    if (range) {
      const [start, end] = [Number(range[1]), Math.min(Number(range[2]), size - 1)];
      res.writeHead(206, { 'content-range': `bytes ${start}-${end}/${size}`, 'content-length': end - start + 1 });
      createReadStream(path, { start, end }).pipe(res);
    } else {
      res.writeHead(200, { 'content-length': size });
      createReadStream(path).pipe(res);
    }
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
afterAll(() => server?.close());

describe('packed model over HTTP', () => {
  it('opens, reads item ranges with Range requests only, serves the files and verifies', async () => {
    const packed = await openPacked(new HttpSource(`${base}/model`));
    requests.length = 0;
    const t = packed.tensors.get('layers.0.linear.conv')!;
    const bytes = await packed.readItems(t.key, 3, 30);
    expect(bytes).toEqual(model.data.get(t.key)!.subarray(3 * t.itemBytes, 33 * t.itemBytes));
    // Items 3..33 lie in three shards: one exact range request each, nothing else.
    expect(requests.map((r) => r.file)).toEqual(['weights-00007.bin', 'weights-00008.bin', 'weights-00009.bin']);
    expect(requests.map((r) => r.range)).toEqual([`bytes=${528 + 3 * 32}-687`, 'bytes=0-671', `bytes=0-${7 * 32 - 1}`]);

    expect(await packed.files.text('tokenizer.json')).toBe(model.files['tokenizer.json']);
    expect(JSON.parse(await packed.files.text('config.json'))).toEqual(packed.config);
    await packed.verify();
    expect(requests.filter((r) => r.range === 'whole' && r.file.endsWith('.bin'))).toEqual([]);
  });

  it('names a missing shard, and a URL without a model', async () => {
    const broken = await writeRandomPacked(700);
    rmSync(join(broken.dir, 'weights-00004.bin'));
    folders.set('broken', broken.dir);
    await expect(openPacked(new HttpSource(`${base}/broken`))).rejects.toThrow(/^weights-00004\.bin: not found at http:.*\/broken/);
    await expect(openPacked(new HttpSource(`${base}/nothing`))).rejects.toThrow(/^qwen-webgpu\.json: not found in http:.*\/nothing: not a packed model/);
  });
});
