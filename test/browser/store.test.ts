/**
 * The browser's model store end to end, in Chromium's real IndexedDB: a packed MoE model and a Hugging Face
 * folder downloaded through the page with progress, generating what the Node CLI does with experts
 * streamed from IndexedDB; a reloaded page that loads offline; downloads cut off or aborted that resume; a
 * corrupt shard; too little storage, by the estimate and by refused writes; list and delete.
 */
import { cpSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Browser, Page, Route } from 'playwright-core';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { jsonLine, runCli } from '../helpers/cli.ts';
import { FIXTURES_DIR, fixtureDir, golden } from '../helpers/fixtures.ts';
import { HARNESS_MOUNTS, ROOT, callHarness, ensureBuild, launchChromium, newTestPage, openHarness } from './browser.ts';
import { type StaticServer, serveStatic } from '../helpers/static_server.ts';
import { openModel } from '../../src/storage/locate.ts';

const SHOTS = join(ROOT, 'test-results/browser');
const TMP = mkdtempSync(join(tmpdir(), 'qwen-store-'));
/** The MoE fixture converted to the packed int4 format; a copy of it serves the interrupted download. */
const PACKED = join(TMP, 'moe-int4');
const PACKED_COPY = join(TMP, 'moe-int4-copy');
/** Copies with one byte of the largest shard flipped, and for a download the page aborts. */
const PACKED_CORRUPT = join(TMP, 'moe-int4-corrupt');
const PACKED_ABORTED = join(TMP, 'moe-int4-aborted');
/** Only a manifest, whose largest shard claims 32 TiB: more than any origin's quota. */
const PACKED_HUGE = join(TMP, 'moe-int4-huge');
const MAX_TOKENS = 8;

let server: StaticServer;
let browser: Browser;
let page: Page;
const pageErrors: string[] = [];
let cliIds: number[];
let expertCacheBytes: number;
let shardName: string;
let modelBytes: number;

const harness = <T>(name: string, ...args: unknown[]) => callHarness<T>(page, name, ...args);

async function shot(name: string): Promise<void> {
  await page.screenshot({ path: join(SHOTS, `store-${name}.png`), fullPage: true });
}

interface Progress {
  phase: string;
  loadedBytes: number;
  totalBytes: number;
  file?: string;
  bytesPerSecond?: number;
  secondsLeft?: number;
}
interface StoreLoad {
  name: string;
  dtype: string;
  phases: string[];
  last: Record<string, Progress>;
  progressCalls: number;
}
interface StoredModel {
  id: string;
  url: string;
  bytes: number;
  complete: boolean;
  date: string;
}
interface LoadFailure {
  name: string;
  message: string;
  file?: string;
  bytesNeeded?: number;
  bytesAvailable?: number;
}
interface GenerateRun {
  value: { ids: number[]; stats: Record<string, number> };
}

/** Bytes the server sent for paths under `prefix` from log entry `from` on. */
const sentUnder = (prefix: string, from = 0) =>
  server.sent
    .slice(from)
    .filter((s) => s.path.startsWith(prefix))
    .reduce((sum, s) => sum + s.bytes, 0);
const modelRequests = (prefix: string, from = 0) => server.log.slice(from).filter((l) => l.includes(` ${prefix}`)).length;

beforeAll(async () => {
  ensureBuild();
  mkdirSync(SHOTS, { recursive: true });
  const converted = await runCli('node', ['convert', '--model', fixtureDir('tiny-qwen35-moe'), '--dtype', 'int4', '--out', PACKED]);
  expect(converted.code, converted.stderr).toBe(0);
  for (const copy of [PACKED_COPY, PACKED_CORRUPT, PACKED_ABORTED]) cpSync(PACKED, copy, { recursive: true });
  const g = golden('tiny-qwen35-moe');
  const cli = await runCli('node', [
    'generate',
    '--model',
    PACKED,
    '--prompt-ids',
    g.prompt_ids.join(','),
    '--greedy',
    '--json',
    '--max-tokens',
    String(MAX_TOKENS),
  ]);
  expect(cli.code, cli.stderr).toBe(0);
  cliIds = jsonLine(cli).ids as number[];

  const packed = (await openModel(PACKED)).packed!;
  const perExpert = packed.tensors.get('layers.0.mlp.experts_gate_up')!.itemBytes + packed.tensors.get('layers.0.mlp.experts_down')!.itemBytes;
  const config = JSON.parse(readFileSync(join(fixtureDir('tiny-qwen35-moe'), 'config.json'), 'utf8'));
  const { num_experts: numExperts, num_hidden_layers: layers } = config.text_config ?? config;
  expertCacheBytes = (numExperts / 4) * layers * perExpert;
  const manifest = packed.manifest;
  shardName = [...manifest.shards].sort((a, b) => b.bytes - a.bytes)[0].name;
  const corrupt = readFileSync(join(PACKED_CORRUPT, shardName));
  corrupt[corrupt.length >> 1] ^= 0x40;
  writeFileSync(join(PACKED_CORRUPT, shardName), corrupt);
  mkdirSync(PACKED_HUGE);
  const huge = JSON.parse(readFileSync(join(PACKED, 'qwen-webgpu.json'), 'utf8'));
  huge.shards.find((f: { name: string }) => f.name === shardName).bytes = 2 ** 45;
  writeFileSync(join(PACKED_HUGE, 'qwen-webgpu.json'), JSON.stringify(huge));
  modelBytes = [...manifest.shards, ...manifest.files].reduce((sum, f) => sum + f.bytes, 0) + Buffer.byteLength(readFileSync(join(PACKED, 'qwen-webgpu.json')));

  server = await serveStatic({
    ...HARNESS_MOUNTS,
    '/fixtures/': FIXTURES_DIR,
    '/packed/': PACKED,
    '/packed-copy/': PACKED_COPY,
    '/packed-corrupt/': PACKED_CORRUPT,
    '/packed-aborted/': PACKED_ABORTED,
    '/packed-huge/': PACKED_HUGE,
  });
  browser = await launchChromium();
  page = await newTestPage(browser, pageErrors);
  await openHarness(page, `${server.url}/`, pageErrors);
});

afterAll(async () => {
  if (page) await harness('terminate').catch(() => undefined);
  await browser?.close();
  await server?.close();
});

test('a packed MoE model downloads into IndexedDB with progress and streams its experts from there: the ids of the Node CLI', async () => {
  const loaded = await harness<StoreLoad>('storeLoad', '/packed/', { expertCacheBytes });
  expect(loaded.dtype).toBe('q4');
  expect(loaded.phases).toEqual(['download', 'verify', 'load']);
  const download = loaded.last.download;
  expect(download.loadedBytes).toBe(modelBytes);
  expect(download.totalBytes).toBe(modelBytes);
  expect(download.bytesPerSecond).toBeGreaterThan(0);
  expect(download.secondsLeft).toBe(0);
  expect(download.file).toMatch(/\S/);
  expect(loaded.last.verify.loadedBytes).toBe(loaded.last.verify.totalBytes);

  // Generation reads experts from IndexedDB: the server sees no request for the model meanwhile.
  const before = server.log.length;
  const run = await harness<GenerateRun>('generate', { promptIds: golden('tiny-qwen35-moe').prompt_ids, maxTokens: MAX_TOKENS, greedy: true });
  await shot('packed-download');
  expect(run.value.ids).toEqual(cliIds);
  expect(run.value.stats.expertCacheHitRate).toBeLessThan(1);
  expect(run.value.stats.expertBytesStreamed).toBeGreaterThan(0);
  expect(modelRequests('/packed/', before)).toBe(0);

  const models = await harness<StoredModel[]>('listModels');
  expect(models).toContainEqual(expect.objectContaining({ id: `${server.url}/packed`, url: `${server.url}/packed`, bytes: modelBytes, complete: true }));
  expect(pageErrors).toEqual([]);
});

test('after a reload, with every request to the model refused, it loads from IndexedDB and generates the same ids', async () => {
  await openHarness(page);
  let refused = 0;
  const block = (route: Route) => {
    refused++;
    return route.abort();
  };
  await page.route(`${server.url}/packed/**`, block);
  const before = server.log.length;
  try {
    const loaded = await harness<StoreLoad>('storeLoad', '/packed/', { expertCacheBytes });
    expect(loaded.phases).toEqual(['load']);
    const run = await harness<GenerateRun>('generate', { promptIds: golden('tiny-qwen35-moe').prompt_ids, maxTokens: MAX_TOKENS, greedy: true });
    await shot('packed-offline');
    expect(run.value.ids).toEqual(cliIds);
    expect(run.value.stats.expertBytesStreamed).toBeGreaterThan(0);
  } finally {
    await page.unroute(`${server.url}/packed/**`, block);
  }
  expect(refused).toBe(0);
  expect(modelRequests('/packed/', before)).toBe(0);
});

test('a download cut off mid-shard is listed incomplete, and the next load resumes from the last whole record', async () => {
  const id = `${server.url}/packed-copy`;
  const shardUrl = `${server.url}/packed-copy/${shardName}`;
  // The first request for the shard gets only its first half, then the connection ends.
  let cut = 0;
  const truncate = async (route: Route) => {
    if (cut++ > 0) return route.continue();
    const response = await route.fetch();
    const body = await response.body();
    const headers = { ...response.headers() };
    delete headers['content-length'];
    await route.fulfill({ status: response.status(), headers, body: body.subarray(0, body.length >> 1) });
  };
  await page.context().route(shardUrl, truncate);
  try {
    const failure = await harness<LoadFailure>('storeLoadError', '/packed-copy/', { expertCacheBytes });
    expect(failure?.name).toBe('ModelFormatError');
    expect(failure?.message).toContain(shardName);
  } finally {
    await page.context().unroute(shardUrl, truncate);
  }
  expect(cut).toBe(1);
  expect(await harness<StoredModel[]>('listModels')).toContainEqual(expect.objectContaining({ id, complete: false }));

  const from = server.sent.length;
  const loaded = await harness<StoreLoad>('storeLoad', '/packed-copy/', { expertCacheBytes });
  expect(loaded.phases).toEqual(['download', 'verify', 'load']);
  const fetched = sentUnder('/packed-copy/', from);
  await shot('resumed');
  // The manifest is read again to plan; the shard's first half is not.
  expect(fetched).toBeGreaterThan(0);
  expect(fetched).toBeLessThan(modelBytes);
  const run = await harness<GenerateRun>('generate', { promptIds: golden('tiny-qwen35-moe').prompt_ids, maxTokens: MAX_TOKENS, greedy: true });
  expect(run.value.ids).toEqual(cliIds);
  expect(await harness<StoredModel[]>('listModels')).toContainEqual(expect.objectContaining({ id, complete: true }));
});

test('a shard whose bytes do not match the sha256 of the manifest fails to load, naming it, and is not counted complete', async () => {
  const failure = await harness<LoadFailure>('storeLoadError', '/packed-corrupt/', { expertCacheBytes });
  expect(failure?.name).toBe('ModelFormatError');
  expect(failure?.file).toBe(shardName);
  expect(failure?.message).toMatch(/sha256 [0-9a-f]{64} does not match [0-9a-f]{64}/);
  expect(await harness<StoredModel[]>('listModels')).toContainEqual(expect.objectContaining({ id: `${server.url}/packed-corrupt`, complete: false }));
  // Served the same again, it fails the same way: a corrupt shard is never kept.
  expect((await harness<LoadFailure>('storeLoadError', '/packed-corrupt/', { expertCacheBytes }))?.file).toBe(shardName);
  expect(await harness<boolean>('deleteModel', `${server.url}/packed-corrupt`)).toBe(true);
});

test('a download the page aborts ends with an AbortError, is listed incomplete, and resumes on the next load', async () => {
  const id = `${server.url}/packed-aborted`;
  const aborted = await harness<{ name: string; isAbortError: boolean }>('storeLoadAborted', '/packed-aborted/', modelBytes / 3, { expertCacheBytes });
  expect(aborted).toMatchObject({ name: 'AbortError', isAbortError: true });
  expect(await harness<StoredModel[]>('listModels')).toContainEqual(expect.objectContaining({ id, complete: false }));
  const from = server.sent.length;
  const loaded = await harness<StoreLoad>('storeLoad', '/packed-aborted/', { expertCacheBytes });
  expect(loaded.phases).toEqual(['download', 'verify', 'load']);
  expect(sentUnder('/packed-aborted/', from)).toBeLessThan(modelBytes);
  const run = await harness<GenerateRun>('generate', { promptIds: golden('tiny-qwen35-moe').prompt_ids, maxTokens: MAX_TOKENS, greedy: true });
  expect(run.value.ids).toEqual(cliIds);
  expect(await harness<boolean>('deleteModel', id)).toBe(true);
});

test('a model larger than the storage estimate leaves fails before any download with a QuotaError, and stores nothing', async () => {
  const before = server.log.length;
  const failure = await harness<LoadFailure>('storeLoadError', '/packed-huge/', { expertCacheBytes });
  expect(failure?.name).toBe('QuotaError');
  expect(failure?.message).toMatch(/navigator\.storage\.estimate\(\) says this origin has \d+ bytes available/);
  expect(failure?.bytesNeeded).toBeGreaterThan(2 ** 45);
  expect(failure?.bytesAvailable).toBeLessThan(2 ** 45);
  // Only the manifest was asked for, and nothing of the model is listed.
  expect(
    server.log
      .slice(before)
      .filter((l) => l.includes('/packed-huge/'))
      .every((l) => l.includes('/packed-huge/qwen-webgpu.json')),
  ).toBe(true);
  expect((await harness<StoredModel[]>('listModels')).map((m) => m.id)).not.toContain(`${server.url}/packed-huge`);
});

test('a download that runs out of quota fails with a QuotaError, is not counted complete, and resumes once space is freed', async () => {
  // A page in a fresh browser context: its own empty IndexedDB, with the origin's quota cut to half the model.
  const other = await newTestPage(browser, pageErrors);
  const context = other.context();
  const call = <T>(name: string, ...args: unknown[]) => callHarness<T>(other, name, ...args);
  try {
    await openHarness(other, `${server.url}/`);
    const cdp = await context.newCDPSession(other);
    await cdp.send('Storage.overrideQuotaForOrigin', { origin: server.url, quotaSize: Math.floor(modelBytes / 2) });

    const failure = await call<LoadFailure>('storeLoadError', '/packed/', { expertCacheBytes });
    await other.screenshot({ path: join(SHOTS, 'store-quota.png'), fullPage: true });
    expect(failure?.name).toBe('QuotaError');
    expect(failure?.message).toMatch(/QuotaExceededError/);
    expect(failure?.message).toMatch(/delete stored models/);
    expect(failure?.bytesNeeded).toBeGreaterThan(0);
    expect(failure?.bytesNeeded).toBeLessThan(modelBytes);
    expect(await call<StoredModel[]>('listModels')).toEqual([expect.objectContaining({ id: `${server.url}/packed`, complete: false })]);

    // Space again (the override lifted): the next load keeps what was written and fetches the rest.
    await cdp.send('Storage.overrideQuotaForOrigin', { origin: server.url });
    const from = server.sent.length;
    const loaded = await call<StoreLoad>('storeLoad', '/packed/', { expertCacheBytes });
    expect(loaded.phases).toEqual(['download', 'verify', 'load']);
    expect(sentUnder('/packed/', from)).toBeLessThan(modelBytes);
    const run = await call<GenerateRun>('generate', { promptIds: golden('tiny-qwen35-moe').prompt_ids, maxTokens: MAX_TOKENS, greedy: true });
    expect(run.value.ids).toEqual(cliIds);
    expect(await call<StoredModel[]>('listModels')).toEqual([expect.objectContaining({ id: `${server.url}/packed`, complete: true })]);
    await call('terminate');
  } finally {
    await context.close();
  }
});

test('a Hugging Face folder downloads into IndexedDB and generates the golden greedy ids', async () => {
  const g = golden('tiny-qwen35');
  const loaded = await harness<StoreLoad>('storeLoad', '/fixtures/tiny-qwen35/', { dtype: 'f32' });
  expect(loaded.phases).toEqual(['download', 'load']);
  expect(loaded.last.download.loadedBytes).toBe(loaded.last.download.totalBytes);
  const run = await harness<GenerateRun>('generate', { promptIds: g.prompt_ids, maxTokens: g.greedy_ids.length, greedy: true });
  await shot('hf-folder');
  expect(run.value.ids).toEqual(g.greedy_ids);
  expect(await harness<StoredModel[]>('listModels')).toContainEqual(expect.objectContaining({ id: `${server.url}/fixtures/tiny-qwen35`, complete: true }));
});

test('models.list names every stored model, and models.delete removes every record of one', async () => {
  const ids = (await harness<StoredModel[]>('listModels')).map((m) => m.id).sort();
  expect(ids).toEqual([`${server.url}/fixtures/tiny-qwen35`, `${server.url}/packed`, `${server.url}/packed-copy`]);
  const id = `${server.url}/packed-copy`;
  expect(await harness<number>('storeRecordCount', id)).toBeGreaterThan(2);
  expect(await harness<boolean>('deleteModel', id)).toBe(true);
  expect(await harness<number>('storeRecordCount', id)).toBe(0);
  expect(await harness<boolean>('deleteModel', id)).toBe(false);
  expect((await harness<StoredModel[]>('listModels')).map((m) => m.id).sort()).toEqual([`${server.url}/fixtures/tiny-qwen35`, `${server.url}/packed`]);
  await shot('list-delete');
  expect(pageErrors).toEqual([]);
});
