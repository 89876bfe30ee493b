import { createReadStream, statSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HttpSource } from '../../src/storage/http.ts';
import { ModelFormatError } from '../../src/gpu/errors.ts';
import { fixtureDir, golden } from '../helpers/fixtures.ts';
import { jsonLine, runCli } from '../helpers/cli.ts';

// A local static server with Range support (and a path without it), serving the fixture folders.
let server: Server;
let base: string;
const requests: string[] = [];

beforeAll(async () => {
  server = createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://x');
    const [, mode, fixture, file] = url.pathname.split('/');
    const path = join(fixtureDir(fixture as 'tiny-qwen35'), file ?? '');
    let size: number;
    try {
      size = statSync(path).size;
    } catch {
      res.writeHead(404).end();
      return;
    }
    requests.push(`${req.headers.range ?? 'whole'} ${file}`);
    const range = /bytes=(\d+)-(\d+)/.exec(req.headers.range ?? '');
    if (range && mode === 'ranged') {
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

describe('HttpSource', () => {
  it('reads sizes and exact byte ranges, and names missing files', async () => {
    const src = new HttpSource(`${base}/ranged/tiny-qwen35`);
    expect(await src.size('config.json')).toBe(statSync(join(fixtureDir('tiny-qwen35'), 'config.json')).size);
    const bytes = await src.read('model.safetensors', 0, 8);
    expect(bytes.length).toBe(8);
    expect(await src.has('nope.json')).toBe(false);
    await expect(src.size('nope.json')).rejects.toThrow(/nope\.json: not found/);
  });

  it('refuses a server that ignores Range requests, instead of downloading whole files', async () => {
    const src = new HttpSource(`${base}/plain/tiny-qwen35`);
    await expect(src.read('model.safetensors', 0, 8)).rejects.toThrow(ModelFormatError);
    await expect(src.read('model.safetensors', 0, 8)).rejects.toThrow(/must support Range requests/);
  });

  it('maps a Hugging Face repository URL to its resolve/main files', () => {
    expect(new HttpSource('https://huggingface.co/Qwen/Qwen3.5-0.8B').location).toBe('https://huggingface.co/Qwen/Qwen3.5-0.8B/resolve/main');
  });
});

describe('the CLI on a model URL', () => {
  it('generates the golden ids from the sharded MoE fixture fetched in pieces', async () => {
    const g = golden('tiny-qwen35-moe');
    requests.length = 0;
    const r = await runCli('node', ['generate', '--model', `${base}/ranged/tiny-qwen35-moe`, '--prompt-ids', g.prompt_ids.join(','), '--max-tokens', '6', '--greedy', '--dtype', 'f32', '--json', '--adapter', 'llvmpipe']);
    expect(jsonLine(r).ids).toEqual(g.greedy_ids.slice(0, 6));
    expect(requests.filter((q) => q.endsWith('.safetensors') && q.startsWith('whole'))).toEqual([]);
    expect(requests.some((q) => q.startsWith('bytes=') && q.endsWith('model-00002-of-00002.safetensors'))).toBe(true);
  });
});
