/**
 * Converting while downloading, in Chromium (SwiftShader) with its real IndexedDB: Hugging Face checkpoints
 * (both fixtures and an MoE checkpoint the test writes), loaded by hub id (ORG/NAME at a local hub) with dtype 'int4', are
 * quantised on the GPU as they arrive and stored as the packed INT4 model — as many bytes as `qwen-webgpu
 * convert` writes, and no copy of the source — then generate the Node CLI's INT4 ids with a quarter of the
 * experts on the GPU, the rest streamed from IndexedDB; a conversion the page aborts resumes; too little
 * storage fails with a QuotaError and resumes once there is room; and with the server stopped, a reloaded page loads them all offline.
 */
import { mkdtempSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Browser, Page } from 'playwright-core';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { type CheckpointSpec, writeCheckpoint } from '../helpers/checkpoint.ts';
import { jsonLine, runCli } from '../helpers/cli.ts';
import { fixtureDir, golden } from '../helpers/fixtures.ts';
import { type FixtureGguf, removeWrittenGgufs, writeFixtureGguf } from '../helpers/gguf_writer.ts';
import { rng } from '../helpers/random.ts';
import { type StaticServer, serveStatic } from '../helpers/static_server.ts';
import { HARNESS_MOUNTS, ROOT, callHarness, ensureBuild, launchChromium, newTestPage, openHarness } from './browser.ts';
import { openModel } from '../../src/storage/locate.ts';

const SHOTS = join(ROOT, 'test-results/browser');
const MAX_TOKENS = 6;

/** Per-expert tensor names, BF16, a flat config, two shards: none of which the fixtures have. */
const GENERATED: CheckpointSpec = {
  seed: 41,
  hidden: 128,
  layers: 4,
  heads: [4, 2],
  linearHeads: [2, 4],
  experts: { count: 24, topk: 4, intermediate: 48, shared: 64, perExpert: true },
  tied: false,
  dtype: 'BF16',
  flat: true,
  shards: 2,
};

interface Model {
  /** The hub id the page loads it by (ORG/NAME, resolved at the test server's /hub). */
  repo: string;
  /** Where the test server serves the repo's files (the store id is that URL, then '#int4'). */
  path: string;
  dir: string;
  prompt: number[];
  /** The Node CLI's greedy ids with --dtype int4. */
  ids: number[];
  /** Bytes of the packed INT4 model `qwen-webgpu convert` writes (shards, files and manifest). */
  packedBytes: number;
  /** A quarter of the experts (undefined for a dense model). */
  expertCacheBytes?: number;
  /** Bytes of the safetensors files. */
  weightBytes: number;
}

interface Progress {
  phase: string;
  loadedBytes: number;
  totalBytes: number;
  tensor?: string;
}
interface StoreLoad {
  dtype: string;
  phases: string[];
  last: Record<string, Progress>;
}
interface StoredModel {
  id: string;
  url: string;
  bytes: number;
  complete: boolean;
}
interface LoadFailure {
  name: string;
  message: string;
  bytesNeeded?: number;
  bytesAvailable?: number;
}
interface GenerateRun {
  value: { ids: number[]; stats: Record<string, number> };
}

const models: Record<'dense' | 'moe' | 'generated', Model> = {} as Record<'dense' | 'moe' | 'generated', Model>;
let server: StaticServer;
let serverStopped = false;
/** The MoE fixture as a GGUF file (fused experts, llama.cpp's names and layout), with the Node CLI's INT4 ids. */
let gguf: FixtureGguf & { ids: number[] };
let browser: Browser;
let page: Page;
const pageErrors: string[] = [];

const harness = <T>(name: string, ...args: unknown[]) => callHarness<T>(page, name, ...args);
const sentUnder = (prefix: string, from = 0) =>
  server.sent
    .slice(from)
    .filter((s) => s.path.startsWith(prefix))
    .reduce((sum, s) => sum + s.bytes, 0);

/** The Node CLI's greedy INT4 ids for `prompt` on a checkpoint folder or .gguf file. */
async function cliInt4Ids(model: string, prompt: number[]): Promise<number[]> {
  const args = ['--prompt-ids', prompt.join(','), '--max-tokens', String(MAX_TOKENS), '--greedy', '--ignore-eos', '--json'];
  const cli = await runCli('node', ['generate', '--model', model, '--dtype', 'int4', ...args]);
  expect(cli.code, cli.stderr).toBe(0);
  return jsonLine(cli).ids as number[];
}

async function describeModel(repo: string, dir: string, prompt: number[]): Promise<Model> {
  const path = `/hub/${repo}/resolve/main/`;
  const packed = join(mkdtempSync(join(tmpdir(), 'qwen-convert-store-')), 'packed');
  const converted = await runCli('node', ['convert', '--model', dir, '--dtype', 'int4', '--out', packed]);
  expect(converted.code, converted.stderr).toBe(0);
  const { tensors } = (await openModel(packed)).packed!;
  const config = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'));
  const { num_experts: experts, num_hidden_layers: layers } = config.text_config ?? config;
  const perExpert = experts && tensors.get('layers.0.mlp.experts_gate_up')!.itemBytes + tensors.get('layers.0.mlp.experts_down')!.itemBytes;
  const sizes = (d: string, keep: (name: string) => boolean) =>
    readdirSync(d)
      .filter(keep)
      .reduce((sum, f) => sum + statSync(join(d, f)).size, 0);
  return {
    repo,
    path,
    dir,
    prompt,
    ids: await cliInt4Ids(dir, prompt),
    packedBytes: sizes(packed, () => true),
    expertCacheBytes: experts ? (experts / 4) * layers * perExpert : undefined,
    weightBytes: sizes(dir, (f) => f.endsWith('.safetensors')),
  };
}

const int4 = (m: Model) => ({ dtype: 'int4', ...(m.expertCacheBytes !== undefined && { expertCacheBytes: m.expertCacheBytes }) });
/** int4 by hub id, against the test server's hub. */
const byHubId = (m: Model) => ({ ...int4(m), hubEndpoint: `${server.url}/hub` });

beforeAll(async () => {
  ensureBuild();
  const generated = writeCheckpoint(GENERATED);
  const draw = rng(GENERATED.seed);
  const generatedPrompt = Array.from({ length: 11 }, () => Math.floor(draw() * 1024));
  models.dense = await describeModel('test-org/tiny-qwen35', fixtureDir('tiny-qwen35'), golden('tiny-qwen35').prompt_ids);
  models.moe = await describeModel('test-org/tiny-qwen35-moe', fixtureDir('tiny-qwen35-moe'), golden('tiny-qwen35-moe').prompt_ids);
  models.generated = await describeModel('test-org/generated-moe', generated, generatedPrompt);
  const written = await writeFixtureGguf('tiny-qwen35-moe');
  gguf = { ...written, ids: await cliInt4Ids(join(written.dir, written.file), golden('tiny-qwen35-moe').prompt_ids) };
  server = await serveStatic({
    ...HARNESS_MOUNTS,
    '/gguf/': written.dir,
    ...Object.fromEntries(Object.values(models).map((m) => [m.path, m.dir])),
    // The same checkpoint under other URLs: other store ids, converted afresh.
    '/generated-aborted/': generated,
    '/generated-quota/': generated,
  });
  browser = await launchChromium();
  page = await newTestPage(browser, pageErrors);
  await openHarness(page, `${server.url}/`, pageErrors);
});

afterAll(async () => {
  removeWrittenGgufs();
  if (page) await harness('terminate').catch(() => undefined);
  await browser?.close();
  if (!serverStopped) await server?.close();
});

test.each(['dense', 'moe', 'generated'] as const)(
  '%s by hub id: int4 converts into IndexedDB while it downloads, stores only the packed model, and gives the ids of the Node CLI',
  async (name) => {
    const m = models[name];
    const loaded = await harness<StoreLoad>('storeLoad', m.repo, byHubId(m));
    expect(loaded.dtype).toBe('q4');
    expect(loaded.phases).toEqual(['convert', 'load']);
    expect(loaded.last.convert.loadedBytes).toBe(loaded.last.convert.totalBytes);
    const run = await harness<GenerateRun>('generate', { promptIds: m.prompt, maxTokens: MAX_TOKENS, greedy: true, ignoreEos: true });
    await page.screenshot({ path: join(SHOTS, `convert-store-${name}.png`), fullPage: true });
    expect(run.value.ids).toEqual(m.ids);
    if (m.expertCacheBytes !== undefined) {
      expect(run.value.stats.expertCacheHitRate).toBeLessThan(1);
      expect(run.value.stats.expertBytesStreamed).toBeGreaterThan(0);
    }
    const id = `${server.url}${m.path.slice(0, -1)}`;
    const stored = await harness<StoredModel[]>('listModels');
    // Exactly the packed model's bytes, under an id of its own; the source itself is not stored.
    expect(stored).toContainEqual(expect.objectContaining({ id: `${id}#int4`, url: id, bytes: m.packedBytes, complete: true }));
    expect(stored.map((s) => s.id)).not.toContain(id);
    expect(pageErrors).toEqual([]);
  },
);

test('a conversion the page aborts is listed incomplete, and the next load resumes it without fetching everything again', async () => {
  const m = models.generated;
  const id = `${server.url}/generated-aborted#int4`;
  const aborted = await harness<{ name: string; isAbortError: boolean }>('storeLoadAborted', '/generated-aborted/', m.weightBytes / 2, int4(m));
  expect(aborted).toMatchObject({ name: 'AbortError', isAbortError: true });
  expect(await harness<StoredModel[]>('listModels')).toContainEqual(expect.objectContaining({ id, complete: false }));
  expect(await harness<number>('storeRecordCount', id)).toBeGreaterThan(1);

  const from = server.sent.length;
  const loaded = await harness<StoreLoad>('storeLoad', '/generated-aborted/', int4(m));
  expect(loaded.phases).toEqual(['convert', 'load']);
  // The tensors stored whole are read back from IndexedDB, not fetched again.
  expect(sentUnder('/generated-aborted/', from)).toBeLessThan(m.weightBytes * 0.8);
  const run = await harness<GenerateRun>('generate', { promptIds: m.prompt, maxTokens: MAX_TOKENS, greedy: true, ignoreEos: true });
  expect(run.value.ids).toEqual(m.ids);
  expect(await harness<StoredModel[]>('listModels')).toContainEqual(expect.objectContaining({ id, bytes: m.packedBytes, complete: true }));
  expect(await harness<boolean>('deleteModel', id)).toBe(true);
  expect(await harness<number>('storeRecordCount', id)).toBe(0);
});

test('a GGUF file converts the same way: INT4 into IndexedDB from its URL, experts streamed, the ids of the Node CLI', async () => {
  const m = models.moe;
  const url = `/gguf/${gguf.file}`;
  const loaded = await harness<StoreLoad>('storeLoad', url, int4(m));
  expect(loaded.phases).toEqual(['convert', 'load']);
  const run = await harness<GenerateRun>('generate', { promptIds: m.prompt, maxTokens: MAX_TOKENS, greedy: true, ignoreEos: true });
  expect(run.value.ids).toEqual(gguf.ids);
  expect(run.value.stats.expertBytesStreamed).toBeGreaterThan(0);
  const id = `${server.url}${url}#int4`;
  expect(await harness<StoredModel[]>('listModels')).toContainEqual(expect.objectContaining({ id, complete: true }));
  expect(await harness<boolean>('deleteModel', id)).toBe(true);
});

test('too little storage fails with a QuotaError, is not counted complete, and the conversion resumes once space is freed', async () => {
  // Chromium's navigator.storage.estimate() does not follow the DevTools quota override, so the check
  // before any weight is fetched passes here and the refused write is what fails (its message says so).
  const m = models.generated;
  const other = await newTestPage(browser, pageErrors);
  const context = other.context();
  const call = <T>(name: string, ...args: unknown[]) => callHarness<T>(other, name, ...args);
  const id = `${server.url}/generated-quota#int4`;
  try {
    await openHarness(other, `${server.url}/`);
    const cdp = await context.newCDPSession(other);
    await cdp.send('Storage.overrideQuotaForOrigin', { origin: server.url, quotaSize: Math.floor(m.packedBytes / 2) });
    const failure = await call<LoadFailure>('storeLoadError', '/generated-quota/', int4(m));
    expect(failure?.name).toBe('QuotaError');
    expect(failure?.message).toMatch(/navigator\.storage\.estimate\(\) says \d+ bytes available|says this origin has \d+ bytes available/);
    expect(failure?.bytesNeeded).toBeGreaterThan(0);
    expect(failure?.bytesNeeded).toBeLessThanOrEqual(m.packedBytes);
    expect(await call<StoredModel[]>('listModels')).toEqual([expect.objectContaining({ id, complete: false })]);

    await cdp.send('Storage.overrideQuotaForOrigin', { origin: server.url });
    const loaded = await call<StoreLoad>('storeLoad', '/generated-quota/', int4(m));
    expect(loaded.phases).toEqual(['convert', 'load']);
    const run = await call<GenerateRun>('generate', { promptIds: m.prompt, maxTokens: MAX_TOKENS, greedy: true, ignoreEos: true });
    expect(run.value.ids).toEqual(m.ids);
    expect(await call<StoredModel[]>('listModels')).toEqual([expect.objectContaining({ id, bytes: m.packedBytes, complete: true })]);
    await call('terminate');
  } finally {
    await context.close();
  }
});

test('with the server stopped, a reloaded page loads every converted model from IndexedDB and generates the same ids', async () => {
  await openHarness(page);
  // A round trip through the worker: its script is in before the server goes.
  await harness('listModels');
  await server.close();
  serverStopped = true;
  for (const m of Object.values(models)) {
    const loaded = await harness<StoreLoad>('storeLoad', m.repo, byHubId(m));
    expect(loaded.phases).toEqual(['load']);
    const run = await harness<GenerateRun>('generate', { promptIds: m.prompt, maxTokens: MAX_TOKENS, greedy: true, ignoreEos: true });
    expect(run.value.ids).toEqual(m.ids);
    if (m.expertCacheBytes !== undefined) expect(run.value.stats.expertBytesStreamed).toBeGreaterThan(0);
  }
  await page.screenshot({ path: join(SHOTS, 'convert-store-offline.png'), fullPage: true });
  expect(pageErrors).toEqual([]);
});
