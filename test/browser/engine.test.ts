/**
 * The browser host end to end: dist/browser (npm run build) served from localhost, driven in Chromium
 * (SwiftShader WebGPU, no shader-f16) through test/browser/page.js, against the fixtures' goldens and the
 * Node CLI.
 */
import { mkdirSync, mkdtempSync, readFileSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Browser, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { jsonLine, runCli } from '../helpers/cli.ts';
import { FIXTURES, FIXTURES_DIR, type FixtureName, fixtureDir, golden } from '../helpers/fixtures.ts';
import { DIST, HARNESS_MOUNTS, ROOT, callHarness, ensureBuild, launchChromium, newTestPage, openHarness } from './browser.ts';
import { type StaticServer, serveStatic } from '../helpers/static_server.ts';
import { openModel } from '../../src/storage/locate.ts';

const SHOTS = join(ROOT, 'test-results/browser');
/** The MoE fixture converted to the packed format (f32), which expert streaming reads experts from. */
const PACKED = join(mkdtempSync(join(tmpdir(), 'qwen-browser-')), 'moe-packed');

let server: StaticServer;
let browser: Browser;
let page: Page;
const pageErrors: string[] = [];

const harness = <T>(name: string, ...args: unknown[]) => callHarness<T>(page, name, ...args);

async function shot(name: string): Promise<void> {
  await page.screenshot({ path: join(SHOTS, `${name}.png`), fullPage: true });
}

interface GenerateRun {
  value: { ids: number[]; stopReason: string; stats: Record<string, number> };
  ms: number;
  ticks: number;
  frames: number;
  maxGapMs: number;
}

beforeAll(async () => {
  ensureBuild();
  mkdirSync(SHOTS, { recursive: true });
  const converted = await runCli('node', ['convert', '--model', fixtureDir('tiny-qwen35-moe'), '--dtype', 'f32', '--out', PACKED]);
  expect(converted.code, converted.stderr).toBe(0);
  server = await serveStatic({ ...HARNESS_MOUNTS, '/fixtures/': FIXTURES_DIR, '/packed/': PACKED });
  browser = await launchChromium();
  page = await newTestPage(browser, pageErrors, { consoleErrors: true });
  await openHarness(page, `${server.url}/`, pageErrors);
});

afterAll(async () => {
  if (page) await harness('terminate').catch(() => undefined);
  await browser?.close();
  await server?.close();
});

test('the browser build imports no Node modules and no Dawn', () => {
  const files = readdirSync(DIST).filter((f) => f.endsWith('.js'));
  expect(files).toEqual(expect.arrayContaining(['index.js', 'worker.js']));
  for (const f of files) {
    const code = readFileSync(join(DIST, f), 'utf8');
    expect(code, f).not.toMatch(/(?:\bfrom\s*|\bimport\s*\(\s*|\brequire\s*\(\s*)["'](?:node:[\w/]+|webgpu|fs|path|os|child_process)["']/);
  }
  // The page's module holds the client only: the engine lives in worker.js.
  const index = readFileSync(join(DIST, 'index.js'), 'utf8');
  expect(index).toContain('new URL("worker.js", import.meta.url)');
  expect(index).not.toContain('createComputePipeline');
});

describe.each(FIXTURES)('%s in Chromium', (name: FixtureName) => {
  const g = golden(name);

  test('loads over HTTP and generates the golden greedy ids, as the Node CLI does, with the page responsive meanwhile', async () => {
    const loaded = await harness<{ dtype: string; adapter: { backend: string; name: string }; progressCalls: number; name: string }>(
      'load',
      `/fixtures/${name}/`,
      { store: false },
    );
    expect(loaded.dtype).toBe('f32');
    expect(loaded.adapter.backend).toBe('WebGPU (browser)');
    expect(loaded.name).toBe(name);
    expect(loaded.progressCalls).toBeGreaterThan(0);
    // The weights came in pieces with Range requests.
    expect(server.log.some((l) => l.startsWith(`GET /fixtures/${name}/`) && l.includes('bytes='))).toBe(true);

    const run = await harness<GenerateRun>('generate', { promptIds: g.prompt_ids, maxTokens: g.greedy_ids.length, greedy: true });
    await shot(`${name}-generate`);
    expect(run.value.ids).toEqual(g.greedy_ids);
    expect(run.value.stopReason).toBe('length');
    expect(run.value.stats.promptTokens).toBe(g.prompt_ids.length);
    expect(run.value.stats.generatedTokens).toBe(g.greedy_ids.length);
    expect(run.value.stats.prefillTokensPerSecond).toBeGreaterThan(0);
    expect(run.value.stats.decodeTokensPerSecond).toBeGreaterThan(0);
    // Every expert is resident: every use hits, nothing streams (a dense model has no expert figures).
    expect(run.value.stats.expertCacheHitRate).toBe(name === 'tiny-qwen35-moe' ? 1 : undefined);
    // The page's thread kept running its 10 ms timer and its frames while the worker generated (a blocked
    // thread shows a gap as long as the blocking work); the bounds leave room for a busy 2-CPU machine.
    expect(run.ms).toBeGreaterThan(200);
    expect(run.maxGapMs).toBeLessThan(1500);
    expect(run.ticks).toBeGreaterThan(run.ms / 10 / 4);
    expect(run.frames).toBeGreaterThan(0);

    const cli = await runCli('node', [
      'generate',
      '--model',
      fixtureDir(name),
      '--prompt-ids',
      g.prompt_ids.join(','),
      '--max-tokens',
      String(g.greedy_ids.length),
      '--greedy',
      '--dtype',
      'f32',
      '--json',
    ]);
    expect(cli.code, cli.stderr).toBe(0);
    expect(run.value.ids).toEqual(jsonLine(cli).ids);
    expect(pageErrors).toEqual([]);
  });

  test('a streamed chat completion stops when its signal aborts, and the engine serves the next request', async () => {
    const maxTokens = 200;
    const r = await harness<{ chunks: number; error?: { name: string; isAbortError: boolean }; finishReasons: string[] }>(
      'chatAborted',
      { messages: [{ role: 'user', content: 'Tell me a long story.' }], max_tokens: maxTokens, temperature: 0 },
      2,
    );
    await shot(`${name}-abort`);
    expect(r.error?.name ?? r.finishReasons.at(-1)).toBe('AbortError');
    expect(r.error?.isAbortError).toBe(true);
    expect(r.chunks).toBeGreaterThanOrEqual(2);
    expect(r.chunks).toBeLessThan(maxTokens / 4);

    const again = await harness<GenerateRun>('generate', { promptIds: g.prompt_ids, maxTokens: 3, greedy: true });
    expect(again.value.ids).toEqual(g.greedy_ids.slice(0, 3));
  });
});

test('a streamed chat runs to its end with usage, and errors keep their class and field across the worker', async () => {
  // The MoE fixture is still loaded from the tests above.
  const chunks = await harness<{ choices: { finish_reason: string | null }[]; usage?: { completion_tokens: number } }[]>('chatStreamed', {
    messages: [{ role: 'user', content: 'Hi' }],
    max_tokens: 4,
    temperature: 0,
    reasoning: 'off',
  });
  expect(chunks.at(-1)?.choices[0].finish_reason).toMatch(/^(length|stop)$/);
  expect(chunks.at(-1)?.usage?.completion_tokens).toBeGreaterThan(0);
  expect(chunks.at(-1)?.usage?.completion_tokens).toBeLessThanOrEqual(4);

  const bad = await harness<{ name: string; field?: string; message: string }>('generateError', { promptIds: [1, 2], maxTokens: 0, greedy: true });
  expect(bad).toMatchObject({ name: 'RequestError', field: 'maxTokens' });

  const missing = await harness<{ name: string; message: string }>('loadError', '/fixtures/no-such-model/');
  expect(missing.name).toBe('ModelFormatError');
  expect(missing.message).toContain('/fixtures/no-such-model');
  await shot('errors');
});

test('the MoE fixture, packed, streams its experts through a GPU cache of a quarter of them and gives the golden ids', async () => {
  const g = golden('tiny-qwen35-moe');
  const packed = (await openModel(PACKED)).packed!;
  const perExpert = packed.tensors.get('layers.0.mlp.experts_gate_up')!.itemBytes + packed.tensors.get('layers.0.mlp.experts_down')!.itemBytes;
  const config = JSON.parse(readFileSync(join(fixtureDir('tiny-qwen35-moe'), 'config.json'), 'utf8'));
  const { num_experts: numExperts, num_hidden_layers: layers } = config.text_config ?? config;
  await harness('load', '/packed/', { expertCacheBytes: (numExperts / 4) * layers * perExpert, store: false });
  const run = await harness<GenerateRun>('generate', { promptIds: g.prompt_ids, maxTokens: g.greedy_ids.length, greedy: true });
  await shot('moe-streamed-generate');
  expect(run.value.ids).toEqual(g.greedy_ids);
  const { expertCacheHitRate, expertBytesStreamed } = run.value.stats;
  expect(expertCacheHitRate).toBeGreaterThan(0);
  expect(expertCacheHitRate).toBeLessThan(1);
  expect(expertBytesStreamed).toBeGreaterThan(0);
  // Whole experts stream: gate_up and down together.
  expect(expertBytesStreamed % perExpert).toBe(0);
  // Every token chose topk experts in every layer: prompt and generated tokens but the last, which is not forwarded.
  const usage = (run.value.stats as unknown as { expertUsage: number[][] }).expertUsage;
  const uses = usage.flat().reduce((a, b) => a + b, 0);
  expect(uses).toBe((g.prompt_ids.length + g.greedy_ids.length - 1) * layers * (config.text_config ?? config).num_experts_per_tok);
  expect(pageErrors).toEqual([]);
});
