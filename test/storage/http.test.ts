import { statSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HttpSource } from '../../src/storage/http.ts';
import { ModelFormatError } from '../../src/errors.ts';
import { FIXTURES_DIR, fixtureDir, golden } from '../helpers/fixtures.ts';
import { jsonLine, runCli } from '../helpers/cli.ts';
import { type StaticServer, serveStatic } from '../helpers/static_server.ts';

// The fixture folders, with Range support under /ranged/ and without it under /plain/.
let server: StaticServer;
let base: string;

beforeAll(async () => {
  server = await serveStatic({ '/ranged/': FIXTURES_DIR, '/plain/': { path: FIXTURES_DIR, ranges: false } });
  base = server.url;
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
    server.log.length = 0;
    const r = await runCli('node', [
      'generate',
      '--model',
      `${base}/ranged/tiny-qwen35-moe`,
      '--prompt-ids',
      g.prompt_ids.join(','),
      '--max-tokens',
      '6',
      '--greedy',
      '--dtype',
      'f32',
      '--json',
      '--adapter',
      'llvmpipe',
    ]);
    expect(jsonLine(r).ids).toEqual(g.greedy_ids.slice(0, 6));
    // Log lines are "METHOD PATH [RANGE]": a .safetensors request without a range would fetch the whole file.
    const requests = server.log.map((line) => line.split(' '));
    expect(requests.filter(([, path, range]) => path.endsWith('.safetensors') && range === undefined)).toEqual([]);
    expect(requests.some(([, path, range]) => path.endsWith('/model-00002-of-00002.safetensors') && range?.startsWith('bytes='))).toBe(true);
  });
});
