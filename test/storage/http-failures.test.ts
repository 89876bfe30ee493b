import { readFileSync } from 'node:fs';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AbortError, ModelFormatError, NetworkError } from '../../src/errors.ts';
import { HttpSource } from '../../src/storage/http.ts';
import { openModel } from '../../src/storage/locate.ts';
import { FIXTURES_DIR, golden } from '../helpers/fixtures.ts';
import { errorLine, jsonLine, runBounded } from '../helpers/cli.ts';
import { type StaticServer, serveStatic } from '../helpers/static_server.ts';

// HTTP loading against a local server that misbehaves the ways real networks and hostile servers do: it
// drops a connection mid-body (once, or every time), stalls after some bytes, never answers, or sends an
// endless body. Every case ends in a result or one error naming the file and URL, within seconds and
// bounded memory. Each mount is the fixtures folder served by one behaviour.
let server: StaticServer;
let base: string;
/** Reads seen by /drop-once/ (each is cut the first time only). */
const dropped = new Set<string>();

/** Headers for the whole range (as a good server sends them), then `keep` bytes of it, then the connection is cut. */
function cut(req: IncomingMessage, res: ServerResponse, file: string, keep: (length: number) => number, then: 'destroy' | 'stall'): void {
  const bytes = readFileSync(file);
  const m = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? '');
  const start = m ? Number(m[1]) : 0;
  const end = m && m[2] !== '' ? Math.min(Number(m[2]), bytes.length - 1) : bytes.length - 1;
  const length = end - start + 1;
  res.writeHead(m ? 206 : 200, { 'content-length': length, ...(m ? { 'content-range': `bytes ${start}-${end}/${bytes.length}` } : {}) });
  res.write(bytes.subarray(start, start + keep(length)), () => {
    if (then === 'destroy') res.socket?.destroy();
  });
}

/** An endless body: 64 KiB chunks for as long as the client reads. */
function endless(res: ServerResponse): void {
  res.writeHead(200, { 'content-type': 'application/json' });
  const chunk = Buffer.alloc(64 * 1024, 0x20);
  const pump = () => {
    while (!res.destroyed && res.write(chunk));
    if (!res.destroyed) res.once('drain', pump);
  };
  pump();
}

beforeAll(async () => {
  const mounts = Object.fromEntries(['ok', 'drop-once', 'drop-always', 'stall', 'silent', 'endless', 'endless-declared'].map((m) => [`/${m}/`, FIXTURES_DIR]));
  server = await serveStatic(mounts, {
    intercept: (req, res, file) => {
      const mode = new URL(req.url ?? '/', 'http://x').pathname.split('/')[1];
      const range = req.headers.range;
      // Probes (bytes=0-0) and small reads pass; reads of weights and headers misbehave.
      const big = range !== undefined && !/^bytes=0-0$/.test(range) && file?.endsWith('.safetensors');
      switch (mode) {
        case 'drop-once': {
          // Keyed by the range's end: the request that resumes a cut read (same end) is served.
          const key = `${req.url} ${range?.split('-')[1]}`;
          const [from, to] = (range ?? '').slice(6).split('-').map(Number);
          if (!big || to - from + 1 < 200_000 || dropped.has(key)) return false; // the large reads of a model load
          dropped.add(key);
          cut(req, res, file!, (n) => Math.floor(n / 2), 'destroy');
          return true;
        }
        case 'drop-always':
          if (!big || range === 'bytes=0-7') return false; // the length field passes: the header read is cut
          cut(req, res, file!, (n) => Math.floor(n / 2), 'destroy');
          return true;
        case 'stall':
          if (!big || range === 'bytes=0-7') return false;
          cut(req, res, file!, (n) => Math.floor(n / 2), 'stall');
          return true;
        case 'silent':
          return true; // never answers
        case 'endless':
          if (range !== undefined || !req.url?.endsWith('/config.json')) return false;
          endless(res);
          return true;
        case 'endless-declared':
          if (range !== undefined || !req.url?.endsWith('/config.json')) return false;
          res.writeHead(200, { 'content-length': String(50 * 1024 ** 3) });
          res.write('{');
          return true;
        default:
          return false;
      }
    },
  });
  base = server.url;
});
afterAll(() => server?.close());

const model = (mode: string, fixture = 'tiny-qwen35') => `${base}/${mode}/${fixture}`;

describe('HttpSource against a failing server', () => {
  it('retries a dropped range read, resuming from the bytes that arrived', async () => {
    const src = new HttpSource(model('drop-once'));
    const want = readFileSync(`${FIXTURES_DIR}/tiny-qwen35/model.safetensors`).subarray(1000, 301_000);
    server.log.length = 0;
    expect(Buffer.from(await src.read('model.safetensors', 1000, 300_000)).equals(want)).toBe(true);
    // The second request starts where the first one was cut (half of it arrived).
    expect(server.log.filter((l) => l.includes('model.safetensors'))).toEqual([
      'GET /drop-once/tiny-qwen35/model.safetensors bytes=1000-300999',
      'GET /drop-once/tiny-qwen35/model.safetensors bytes=151000-300999',
    ]);
  });

  it('gives up after a bounded number of retries with one error naming the file and URL', async () => {
    const src = new HttpSource(model('drop-always'), { retries: 2 });
    server.log.length = 0;
    const error = await src.read('model.safetensors', 1000, 100_000).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(NetworkError);
    expect((error as NetworkError).file).toBe('model.safetensors');
    expect((error as Error).message).toMatch(
      new RegExp(`^model\\.safetensors: the connection dropped.* reading ${model('drop-always')}/model\\.safetensors \\(gave up after 3 attempts\\)$`),
    );
    expect(server.log.filter((l) => l.includes('model.safetensors'))).toHaveLength(3);
  });

  it('times out on a server that never answers, and on a body that stalls, naming the URL', async () => {
    const t0 = performance.now();
    const silent = new HttpSource(model('silent'), { timeoutMs: 500 });
    await expect(silent.text('config.json')).rejects.toThrow(
      new RegExp(`^config\\.json: no data from ${model('silent')}/config\\.json for 0\\.5 s \\(timed out`),
    );
    const stalled = new HttpSource(model('stall'), { timeoutMs: 500 });
    await expect(stalled.read('model.safetensors', 1000, 100_000)).rejects.toThrow(NetworkError);
    await expect(stalled.read('model.safetensors', 1000, 100_000)).rejects.toThrow(/model\.safetensors: no data from .* \(timed out/);
    // No retries of a stall: three timeouts of 0.5 s, not three times four.
    expect(performance.now() - t0).toBeLessThan(5000);
  });

  it('stops an aborted read at once with AbortError', async () => {
    const controller = new AbortController();
    const read = new HttpSource(model('silent')).read('model.safetensors', 0, 100, controller.signal);
    setTimeout(() => controller.abort(), 100);
    await expect(read).rejects.toThrow(AbortError);
  });

  it('caps a small file: an endless body stops at the limit, a declared size past it is refused unread', async () => {
    const rss0 = process.memoryUsage.rss();
    const t0 = performance.now();
    await expect(new HttpSource(model('endless')).text('config.json')).rejects.toThrow(ModelFormatError);
    await expect(new HttpSource(model('endless')).text('config.json')).rejects.toThrow(
      /^config\.json: more than 4 MiB arrived; the engine reads at most 4 MiB of a config\.json/,
    );
    await expect(new HttpSource(model('endless-declared')).text('config.json')).rejects.toThrow(
      /^config\.json: 53687091200 bytes; the engine reads at most 4 MiB/,
    );
    expect(performance.now() - t0).toBeLessThan(10_000);
    expect(process.memoryUsage.rss() - rss0).toBeLessThan(200 * 1024 * 1024);
  });

  it('names a refused connection in one line after its retries', async () => {
    const closed = await serveStatic({});
    const url = closed.url;
    await closed.close();
    await expect(new HttpSource(`${url}/m`, { retries: 1 }).text('config.json')).rejects.toThrow(
      new RegExp(`^config\\.json: the request failed \\(.*ECONNREFUSED.*\\) reading ${url}/m/config\\.json \\(gave up after 2 attempts\\)$`),
    );
  });

  it('reports a drop while reading a safetensors header as a network error, not as "not valid JSON"', async () => {
    await expect(openModel(model('drop-always'), { http: { retries: 1 } })).rejects.toThrow(
      /^model\.safetensors: the connection dropped.*gave up after 2 attempts/,
    );
  });
});

describe('the CLI on a failing server', () => {
  const generate = (url: string, ...extra: string[]) =>
    runBounded([
      'generate',
      '--model',
      url,
      '--prompt-ids',
      golden('tiny-qwen35').prompt_ids.join(','),
      '--max-tokens',
      '4',
      '--greedy',
      '--dtype',
      'f32',
      '--json',
      '--adapter',
      'llvmpipe',
      ...extra,
    ]);

  it('loads through connections that drop once per large read and gives the golden ids', async () => {
    server.log.length = 0;
    const cutBefore = dropped.size;
    const r = await generate(model('drop-once'));
    const cuts = dropped.size - cutBefore;
    expect(cuts).toBeGreaterThanOrEqual(5); // the large reads of a model load: each cut once, then resumed
    const reads = server.log.filter((l) => l.includes('model.safetensors') && !l.endsWith('bytes=0-0'));
    expect(reads.length).toBeGreaterThanOrEqual(new Set(reads.map((l) => l.split('-').pop())).size + cuts);
    expect(jsonLine(r).ids).toEqual(golden('tiny-qwen35').greedy_ids.slice(0, 4));
    expect(r.ms).toBeLessThan(60_000);
  }, 60_000);

  it('fails in one line naming the file and URL: dropped every time, never answering, endless', async () => {
    const always = await generate(model('drop-always'));
    expect(errorLine(always)).toMatch(
      new RegExp(`^error: model\\.safetensors: the connection dropped.* reading ${model('drop-always')}/model\\.safetensors \\(gave up after 4 attempts\\)$`),
    );
    const silent = await generate(model('silent'), '--http-timeout', '1');
    expect(errorLine(silent)).toMatch(new RegExp(`^error: .*: no data from ${model('silent')}/\\S+ for 1 s \\(timed out`));
    expect(silent.ms).toBeLessThan(30_000);
    const endless = await generate(model('endless'));
    expect(errorLine(endless)).toMatch(/^error: config\.json: more than 4 MiB arrived/);
    for (const r of [always, silent, endless]) expect(r.ms).toBeLessThan(60_000);
  }, 120_000);
});
