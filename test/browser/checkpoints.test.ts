/**
 * MoE checkpoints written by the test (shapes the fixtures do not have) through dist/browser in Chromium
 * (SwiftShader): greedy ids with every expert resident (the Hugging Face folder over HTTP, and the packed
 * model with expertCacheBytes of all its experts) and with a GPU expert cache of a quarter of the experts (the
 * packed model, experts streamed) must be the Node CLI's.
 */
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Browser, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { type CheckpointSpec, writeCheckpoint } from '../helpers/checkpoint.ts';
import { jsonLine, runCli } from '../helpers/cli.ts';
import { rng } from '../helpers/random.ts';
import { type StaticServer, serveStatic } from '../helpers/static_server.ts';
import { HARNESS_MOUNTS, ROOT, callHarness, ensureBuild, launchChromium, newTestPage, openHarness } from './browser.ts';
import { openModel } from '../../src/storage/locate.ts';

const SHOTS = join(ROOT, 'test-results/browser');
const MAX_TOKENS = 8;

const SPECS: Record<string, CheckpointSpec> = {
  // More experts than the fixture, ten routed (a quarter is exactly topk slots: the smallest cache allowed).
  'experts-40-top-10': {
    seed: 31,
    hidden: 64,
    layers: 4,
    heads: [2, 1],
    linearHeads: [1, 2],
    experts: { count: 40, topk: 10, intermediate: 32, shared: 32 },
    tied: false,
    dtype: 'F32',
  },
  // Per-expert tensor names, BF16, a flat config, two shards, a wider model.
  'experts-24-top-4-bf16': {
    seed: 32,
    hidden: 128,
    layers: 4,
    heads: [4, 2],
    linearHeads: [2, 4],
    experts: { count: 24, topk: 4, intermediate: 48, shared: 64, perExpert: true },
    tied: false,
    dtype: 'BF16',
    flat: true,
    shards: 2,
  },
};

interface Case {
  dir: string;
  packed: string;
  prompt: number[];
  allBytes: number;
}
interface Run {
  value: { ids: number[]; stats: Record<string, number> };
}
interface Cli {
  ids: number[];
  expert_bytes_streamed?: number;
}

const cases = new Map<string, Case>();
let server: StaticServer;
let browser: Browser;
let page: Page;
const pageErrors: string[] = [];

/** `length` token ids below the checkpoints' vocabulary of 1024. */
function randomPrompt(seed: number, length: number): number[] {
  const draw = rng(seed);
  return Array.from({ length }, () => Math.floor(draw() * 1024));
}

const harness = <T>(name: string, ...args: unknown[]) => callHarness<T>(page, name, ...args);

async function cliGenerate(model: string, prompt: number[], expertCacheBytes?: number): Promise<Cli> {
  const budget = expertCacheBytes === undefined ? [] : ['--expert-cache-mb', String(expertCacheBytes / 2 ** 20)];
  const r = await runCli('node', [
    'generate',
    '--model',
    model,
    '--prompt-ids',
    prompt.join(','),
    '--max-tokens',
    String(MAX_TOKENS),
    '--greedy',
    '--ignore-eos',
    '--dtype',
    'f32',
    '--json',
    ...budget,
  ]);
  expect(r.code, r.stderr).toBe(0);
  return jsonLine(r) as unknown as Cli;
}

beforeAll(async () => {
  ensureBuild();
  const mounts: Record<string, string> = { ...HARNESS_MOUNTS };
  for (const [name, spec] of Object.entries(SPECS)) {
    const dir = writeCheckpoint(spec);
    const packed = join(mkdtempSync(join(tmpdir(), 'qwen-browser-ckpt-')), 'packed');
    const converted = await runCli('node', ['convert', '--model', dir, '--dtype', 'f32', '--out', packed]);
    expect(converted.code, converted.stderr).toBe(0);
    const tensors = (await openModel(packed)).packed!.tensors;
    const perExpert = tensors.get('layers.0.mlp.experts_gate_up')!.itemBytes + tensors.get('layers.0.mlp.experts_down')!.itemBytes;
    cases.set(name, { dir, packed, prompt: randomPrompt(spec.seed, 13), allBytes: spec.experts!.count * spec.layers * perExpert });
    mounts[`/${name}/`] = dir;
    mounts[`/${name}-packed/`] = packed;
  }
  server = await serveStatic(mounts);
  browser = await launchChromium();
  page = await newTestPage(browser, pageErrors);
  await openHarness(page, `${server.url}/`, pageErrors);
});

afterAll(async () => {
  if (page) await harness('terminate').catch(() => undefined);
  await browser?.close();
  await server?.close();
});

describe.each(Object.keys(SPECS))('%s in Chromium', (name) => {
  test('every expert resident, read from the Hugging Face folder: the ids of the Node CLI', async () => {
    const c = cases.get(name)!;
    await harness('load', `/${name}/`, { store: false });
    const run = await harness<Run>('generate', { promptIds: c.prompt, maxTokens: MAX_TOKENS, greedy: true, ignoreEos: true });
    const cli = await cliGenerate(c.dir, c.prompt);
    expect(run.value.ids).toEqual(cli.ids);
    // Ids that change from step to step: a run stuck on one token would hide a wrong expert.
    expect(new Set(cli.ids).size).toBeGreaterThan(MAX_TOKENS / 2);
    expect(run.value.stats.expertCacheHitRate).toBe(1);
    expect(run.value.stats.expertBytesStreamed).toBe(0);
    expect(pageErrors).toEqual([]);
  });

  test('the packed model with expertCacheBytes of all its experts: nothing streams, the same ids', async () => {
    const c = cases.get(name)!;
    await harness('load', `/${name}-packed/`, { store: false, expertCacheBytes: c.allBytes });
    const run = await harness<Run>('generate', { promptIds: c.prompt, maxTokens: MAX_TOKENS, greedy: true, ignoreEos: true });
    const cli = await cliGenerate(c.packed, c.prompt, c.allBytes);
    expect(run.value.ids).toEqual(cli.ids);
    expect(run.value.ids).toEqual((await cliGenerate(c.dir, c.prompt)).ids);
    expect(run.value.stats.expertCacheHitRate).toBe(1);
    expect(run.value.stats.expertBytesStreamed).toBe(0);
  });

  test('a quarter of the experts on the GPU, the rest streamed: the same ids and bytes streamed as the Node CLI', async () => {
    const c = cases.get(name)!;
    const quarterBytes = c.allBytes / 4;
    await harness('load', `/${name}-packed/`, { store: false, expertCacheBytes: quarterBytes });
    const run = await harness<Run>('generate', { promptIds: c.prompt, maxTokens: MAX_TOKENS, greedy: true, ignoreEos: true });
    await page.screenshot({ path: join(SHOTS, `checkpoint-${name}.png`), fullPage: true });
    const cli = await cliGenerate(c.packed, c.prompt, quarterBytes);
    const all = await cliGenerate(c.dir, c.prompt);
    expect(run.value.ids).toEqual(cli.ids);
    // Streaming is exact: the same ids as with every expert resident.
    expect(run.value.ids).toEqual(all.ids);
    expect(run.value.stats.expertCacheHitRate).toBeLessThan(1);
    expect(run.value.stats.expertBytesStreamed).toBeGreaterThan(0);
    expect(run.value.stats.expertBytesStreamed).toBe(cli.expert_bytes_streamed);
    expect(pageErrors).toEqual([]);
  });
});
