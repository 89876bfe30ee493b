/**
 * The demo page and the <qwen-chat> element in Chromium (SwiftShader WebGPU, no shader-f16): the demo built
 * for production (vite build --mode demo) and a plain page that embeds dist/browser/qwen-chat.js with one
 * script tag, both against the tiny fixture served from localhost, with every other request refused.
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Browser, Page } from 'playwright-core';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { runCli } from '../helpers/cli.ts';
import { FIXTURES_DIR, fixtureDir } from '../helpers/fixtures.ts';
import { openModel } from '../../src/storage/locate.ts';
import { DIST, ROOT, ensureBuild, launchChromium, newTestPage } from './browser.ts';
import { type StaticServer, serveStatic } from '../helpers/static_server.ts';

const SHOTS = join(ROOT, 'test-results/browser');
const TMP = mkdtempSync(join(tmpdir(), 'qwen-ui-'));
const DEMO = join(TMP, 'demo');
const MODEL = '/fixtures/tiny-qwen35/';
/** The MoE fixture, packed (f32): what the demo streams experts from. */
const PACKED = join(TMP, 'moe-packed');

const WIDGET_PAGE = `<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>an app with its own CSS</title>
  <style>
    * { color: rgb(255, 0, 0); font-family: serif; }
    p { margin: 7px; font-size: 17px; }
    div { padding: 3px; border: 2px solid rgb(0, 128, 0); }
    button { background: rgb(255, 255, 0); }
    qwen-chat { height: 360px; }
  </style>
  <script>window.globalsBefore = Object.getOwnPropertyNames(window);</script>
  <script type="module" src="/dist/qwen-chat.js"></script>
</head>
<body>
  <p id="para">The app's paragraph.</p>
  <div id="box">The app's box.</div>
  <qwen-chat model="${MODEL}" max-tokens="6" reasoning="off" system-prompt="Be brief."></qwen-chat>
</body>
</html>`;

let server: StaticServer;
let browser: Browser;
const pageErrors: string[] = [];

const newPage = () => newTestPage(browser, pageErrors, { height: 800, consoleErrors: true });

/** Sends `prompt` in the demo with thinking off and 4 tokens at most; the reply shows its tokens/s. */
async function chatBriefly(page: Page, prompt: string): Promise<void> {
  await page.locator('#thinking').uncheck();
  await page.locator('#max-tokens').fill('4');
  await page.locator('#prompt').fill(prompt);
  await page.locator('#send').click();
  await page.locator('#messages .msg.assistant .stats').waitFor({ timeout: 120_000 });
  expect(await page.locator('#messages .msg.assistant .stats').textContent()).toMatch(/^\d+ tokens · \d+\.\d tokens\/s/);
}

beforeAll(async () => {
  ensureBuild();
  mkdirSync(SHOTS, { recursive: true });
  execFileSync(process.execPath, [join(ROOT, 'node_modules/vite/bin/vite.js'), 'build', '--mode', 'demo', '--outDir', DEMO, '--logLevel', 'warn'], {
    cwd: ROOT,
    stdio: 'pipe',
  });
  writeFileSync(join(TMP, 'widget.html'), WIDGET_PAGE);
  const converted = await runCli('node', ['convert', '--model', fixtureDir('tiny-qwen35-moe'), '--dtype', 'f32', '--out', PACKED]);
  expect(converted.code, converted.stderr).toBe(0);
  server = await serveStatic({ '/demo/': DEMO, '/app.html': join(TMP, 'widget.html'), '/dist/': DIST, '/fixtures/': FIXTURES_DIR, '/packed/': PACKED });
  browser = await launchChromium();
}, 180_000);

afterAll(async () => {
  await browser?.close();
  await server?.close();
});

test('the production demo loads a model from ?model=, streams a chat reply and shows tokens/s', async () => {
  const page = await newPage();
  await page.goto(`${server.url}/demo/index.html?model=${encodeURIComponent(MODEL)}`);
  await page.waitForFunction(() => !(document.getElementById('send') as HTMLButtonElement).disabled, undefined, { timeout: 120_000 });
  expect(await page.locator('#status').textContent()).toMatch(/tiny-qwen35 \(f32.*WebGPU \(browser\).*loaded in/);
  expect(await page.locator('#progress').evaluate((p: HTMLProgressElement) => p.value)).toBe(1);
  expect(server.log.some((l) => l.startsWith(`GET ${MODEL}`) && l.includes('bytes='))).toBe(true);

  await page.locator('#thinking').uncheck();
  await page.locator('#max-tokens').fill('6');
  await page.locator('#prompt').fill('Hello there');
  // Record every text the reply shows while it streams.
  await page.evaluate(() => {
    const seen: string[] = [];
    (window as unknown as { seen: string[] }).seen = seen;
    new MutationObserver(() => {
      const last = document.querySelector('#messages .msg.assistant:last-child span');
      if (last?.textContent) seen.push(last.textContent);
    }).observe(document.getElementById('messages')!, { subtree: true, childList: true, characterData: true });
  });
  await page.locator('#send').click();
  await page.locator('#messages .msg.assistant .stats').waitFor({ timeout: 120_000 });
  const figures = await page.locator('#messages .msg.assistant .stats').textContent();
  expect(figures).toMatch(/^\d+ tokens · \d+\.\d tokens\/s/);
  expect(Number(/· (\d+\.\d) tokens\/s/.exec(figures!)![1])).toBeGreaterThan(0);
  expect(await page.locator('#messages .msg.user').textContent()).toBe('Hello there');
  const seen = await page.evaluate(() => (window as unknown as { seen: string[] }).seen);
  expect(seen.length).toBeGreaterThan(0);
  await expect.poll(() => page.locator('#send').isDisabled()).toBe(false);
  await page.screenshot({ path: join(SHOTS, 'demo.png'), fullPage: true });
  expect(pageErrors).toEqual([]);
  await page.close();
}, 240_000);

test('the production demo opens again with its server gone: its service worker serves the page, IndexedDB the model', async () => {
  // A server of its own, stopped mid-test; another port is another origin, so the other tests' pages stay online.
  const own = await serveStatic({ '/demo/': DEMO, '/fixtures/': FIXTURES_DIR });
  let stopped = false;
  const page = await newPage();
  const ready = () => page.waitForFunction(() => !(document.getElementById('send') as HTMLButtonElement).disabled, undefined, { timeout: 120_000 });
  try {
    await page.goto(`${own.url}/demo/index.html?model=${encodeURIComponent(MODEL)}`);
    await ready();
    await page.locator('#offline').waitFor({ timeout: 60_000 });
    await page.waitForFunction(() => navigator.serviceWorker.controller !== null, undefined, { timeout: 60_000 });
    const kept = await page.evaluate(async () => (await (await caches.open('qwen-webgpu-demo-shell')).keys()).map((r) => new URL(r.url).pathname));
    expect(kept).toContain('/demo/index.html');
    expect(kept.some((p) => /^\/demo\/assets\/worker-.*\.js$/.test(p))).toBe(true);
    expect(await page.locator('#cached option').allTextContents()).toEqual(expect.arrayContaining([expect.stringMatching(/tiny-qwen35/)]));

    await own.close();
    stopped = true;
    await page.reload();
    await ready();
    expect(await page.locator('#status').textContent()).toMatch(/tiny-qwen35 \(f32.*loaded in/);
    await chatBriefly(page, 'Hello there');
    await page.screenshot({ path: join(SHOTS, 'demo-offline.png'), fullPage: true });
    expect(pageErrors).toEqual([]);
  } finally {
    await page.close();
    if (!stopped) await own.close();
  }
}, 300_000);

test('`npm start`, as the README says: the dev server serves the demo and the fixtures, and a fixture model chats', async () => {
  // `npm start` is `vite`; the port is pinned to a free one so that the test can find it.
  const port = 20_000 + Math.floor(Math.random() * 20_000);
  const dev: ChildProcess = spawn(
    process.execPath,
    [join(ROOT, 'node_modules/vite/bin/vite.js'), '--port', String(port), '--strictPort', '--host', '127.0.0.1'],
    {
      cwd: ROOT,
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
  let output = '';
  dev.stdout!.on('data', (d) => (output += d));
  dev.stderr!.on('data', (d) => (output += d));
  try {
    // Vite colours its banner where the environment asks for colour (CI does): read it without the escapes.
    // biome-ignore lint/suspicious/noControlCharactersInRegex: the escapes are what it removes
    await expect.poll(() => output.replace(/\x1b\[[0-9;]*m/g, ''), { timeout: 60_000 }).toContain(`http://127.0.0.1:${port}/`);
    const page = await newPage();
    await page.goto(`http://127.0.0.1:${port}/?model=/fixtures/tiny-qwen35/`);
    await page.waitForFunction(() => !(document.getElementById('send') as HTMLButtonElement | null)?.disabled, undefined, { timeout: 180_000 });
    expect(await page.locator('#status').textContent()).toMatch(/^tiny-qwen35 \(/);
    await chatBriefly(page, 'Hello');
    await page.screenshot({ path: join(SHOTS, 'npm-start.png'), fullPage: true });
    // A file that is not among the fixtures is a plain 404, not the demo's HTML.
    const missing = await page.evaluate(() => fetch('/fixtures/no-such-model/config.json').then((r) => r.status));
    expect(missing).toBe(404);
    expect(pageErrors.filter((e) => !e.includes('404'))).toEqual([]);
    pageErrors.length = 0;
    await page.close();
  } finally {
    dev.kill();
  }
}, 300_000);

test('the demo streams the experts of a MoE model at a quarter budget: its panel shows the hit rate and a heatmap of expert use, and Stop ends a reply', async () => {
  const config = JSON.parse(await (await openModel(fixtureDir('tiny-qwen35-moe'))).files.text('config.json'));
  const { num_experts: experts, num_hidden_layers: layers, num_experts_per_tok: topk } = config.text_config ?? config;
  const tensors = (await openModel(PACKED)).packed!.tensors;
  const perExpert = tensors.get('layers.0.mlp.experts_gate_up')!.itemBytes + tensors.get('layers.0.mlp.experts_down')!.itemBytes;
  const quarterMb = ((experts / 4) * layers * perExpert) / 2 ** 20;

  const page = await newPage();
  await page.goto(`${server.url}/demo/index.html`);
  await page.locator('#model').fill('/packed/');
  await page.locator('#expert-mb').fill(String(quarterMb));
  await page.locator('#load').click();
  await page.waitForFunction(() => !(document.getElementById('send') as HTMLButtonElement).disabled, undefined, { timeout: 120_000 });
  expect(await page.locator('#status').textContent()).toMatch(/^packed \(f32/);
  // Kept in this browser (the box is ticked by default): the cached list names it.
  await expect.poll(() => page.locator('#cached option').allTextContents()).toContainEqual(expect.stringContaining('/packed'));
  expect(await page.locator('#experts-section').isHidden()).toBe(true);

  await page.locator('#thinking').uncheck();
  await page.locator('#max-tokens').fill('6');
  await page.locator('#prompt').fill('Hello there');
  await page.locator('#send').click();
  await page.locator('#messages .msg.assistant .stats').waitFor({ timeout: 120_000 });
  await expect.poll(() => page.locator('#send').isDisabled()).toBe(false);

  expect(await page.locator('#experts-section').isVisible()).toBe(true);
  const figures = (await page.locator('#expert-figures').textContent())!;
  const m = /^hit rate (\d+\.\d)% · (\d+\.\d) MB streamed · (\d+\.\d\d) ms stall per token$/.exec(figures);
  expect(m, figures).not.toBeNull();
  expect(Number(m![1])).toBeGreaterThan(0);
  expect(Number(m![1])).toBeLessThan(100);
  // The heatmap: one row per layer, one column per expert; in every row at least topk experts were used
  // (shaded below white) and the most used one has the darkest shade.
  const heat = await page.locator('#heatmap').evaluate((canvas: HTMLCanvasElement) => {
    const data = canvas.getContext('2d')!.getImageData(0, 0, canvas.width, canvas.height).data;
    const rows: number[][] = [];
    for (let y = 0; y < canvas.height; y++) rows.push(Array.from({ length: canvas.width }, (_, x) => data[(y * canvas.width + x) * 4]));
    return { width: canvas.width, height: canvas.height, rows };
  });
  expect(heat).toMatchObject({ width: experts, height: layers });
  for (const row of heat.rows) {
    expect(row.filter((shade) => shade < 255).length).toBeGreaterThanOrEqual(topk);
    expect(Math.min(...row)).toBe(55);
  }
  await page.screenshot({ path: join(SHOTS, 'demo-experts.png'), fullPage: true });

  // Stop: a long reply ends at once, keeps what it showed, and the next message can be sent.
  await page.locator('#max-tokens').fill('400');
  await page.locator('#prompt').fill('Tell me a long story.');
  await page.locator('#send').click();
  await page.waitForFunction(() => (document.querySelector('#messages .msg.assistant:last-child span')?.textContent ?? '').length > 0, undefined, {
    timeout: 120_000,
  });
  await page.locator('#stop').click();
  await expect.poll(() => page.locator('#send').isDisabled(), { timeout: 60_000 }).toBe(false);
  const stopped = await page.locator('#messages .msg.assistant').last().textContent();
  expect(stopped!.length).toBeGreaterThan(0);
  expect(await page.locator('#messages .msg.assistant .stats').last().textContent()).toMatch(/^stopped · about \d+\.\d tokens\/s$/);
  expect(pageErrors).toEqual([]);
  await page.close();
}, 300_000);

test('<qwen-chat> from one script tag loads, streams a reply, fires its events, stops a reply on Stop, and leaves the page styles alone', async () => {
  const page = await newPage();
  const probe = () => {
    const pick = (el: Element) => {
      const s = getComputedStyle(el);
      return { color: s.color, font: s.fontFamily, size: s.fontSize, margin: s.margin, padding: s.padding, border: s.border, background: s.backgroundColor };
    };
    return { p: pick(document.getElementById('para')!), div: pick(document.getElementById('box')!), body: pick(document.body) };
  };
  // The page's styles with no widget in it, for comparison.
  await page.route('**/dist/qwen-chat.js', (route) => route.fulfill({ contentType: 'text/javascript', body: '' }));
  await page.goto(`${server.url}/app.html`);
  const before = await page.evaluate(probe);
  await page.unroute('**/dist/qwen-chat.js');

  await page.goto(`${server.url}/app.html`);
  await page.evaluate(() => {
    const w = window as unknown as { events: { type: string; detail: unknown }[] };
    w.events = [];
    for (const type of ['qwen-ready', 'qwen-progress', 'qwen-message', 'qwen-error']) {
      document.addEventListener(type, (e) => w.events.push({ type, detail: JSON.parse(JSON.stringify((e as CustomEvent).detail ?? null)) }));
    }
  });
  await page.waitForFunction(
    () => {
      const send = document.querySelector('qwen-chat')?.shadowRoot?.querySelector('button.send') as HTMLButtonElement | null;
      return send && !send.disabled;
    },
    undefined,
    { timeout: 120_000 },
  );
  expect(await page.evaluate(() => customElements.get('qwen-chat') !== undefined)).toBe(true);
  // No globals but the element's registration.
  expect(
    await page.evaluate(() => {
      const before = new Set((window as unknown as { globalsBefore: string[] }).globalsBefore);
      return Object.getOwnPropertyNames(window).filter((n) => !before.has(n) && n !== 'events' && n !== 'globalsBefore');
    }),
  ).toEqual([]);
  // A second copy of the module is harmless.
  // (A string, so that the test runner leaves the page's import() alone.)
  expect(await page.evaluate("import('/dist/qwen-chat.js?again').then(() => customElements.get('qwen-chat').name)")).toBe('QwenChatElement');

  const input = page.locator('qwen-chat textarea');
  await input.fill('Hi');
  await page.locator('qwen-chat button.send').click();
  await page.waitForFunction(
    () =>
      (window as unknown as { events: { type: string; detail: { role?: string } }[] }).events.some(
        (e) => e.type === 'qwen-message' && e.detail.role === 'assistant',
      ),
    undefined,
    { timeout: 120_000 },
  );
  const events = await page.evaluate(() => (window as unknown as { events: { type: string; detail: { role?: string; content?: string } }[] }).events);
  const types = events.map((e) => e.type);
  expect(types).not.toContain('qwen-error');
  expect(types).toContain('qwen-ready');
  const messages = events.filter((e) => e.type === 'qwen-message').map((e) => e.detail);
  expect(messages[0]).toEqual({ role: 'user', content: 'Hi' });
  expect(messages[1].role).toBe('assistant');
  expect(typeof messages[1].content).toBe('string');
  expect(messages[1].content!.length).toBeGreaterThan(0);
  // The reply shown in the element is the one the event carried.
  expect(await page.locator('qwen-chat .msg.assistant span').textContent()).toBe(messages[1].content);
  expect(await page.locator('qwen-chat .status').textContent()).toMatch(/tokens\/s/);

  // The page's own elements kept their computed styles.
  expect(await page.evaluate(probe)).toEqual(before);
  // Inside, the element's own styles hold: the page's `* { color; font-family }`, `div` and `button` rules do not reach in.
  const inside = await page.evaluate(() => {
    const root = document.querySelector('qwen-chat')!.shadowRoot!;
    const s = (sel: string) => getComputedStyle(root.querySelector(sel)!);
    return {
      message: { color: s('.msg.assistant').color, font: s('.msg.assistant').fontFamily, border: s('.msg.assistant').borderTopWidth },
      button: s('button.send').backgroundColor,
      textarea: s('textarea').color,
    };
  });
  expect(inside.message.color).not.toBe('rgb(255, 0, 0)');
  expect(inside.message.font).not.toBe('serif');
  expect(inside.message.font).toContain('system-ui');
  expect(inside.message.border).toBe('0px');
  expect(inside.button).toBe('rgb(61, 109, 242)');
  expect(inside.textarea).not.toBe('rgb(255, 0, 0)');
  await page.screenshot({ path: join(SHOTS, 'widget.png'), fullPage: true });

  // Its Stop button ends a long reply: what came so far stays, and is the message the event carries.
  // Without thinking the whole reply is answer text, so Stop has the whole reply to land in (the answer after a
  // thought can be a few tokens from its end when it first shows, on a loaded machine).
  await page.evaluate(() => {
    const chat = document.querySelector('qwen-chat') as HTMLElement & { maxTokens: number };
    chat.maxTokens = 400;
    chat.setAttribute('reasoning', 'off');
  });
  await input.fill('Tell me a long story.');
  await page.locator('qwen-chat button.send').click();
  await page.waitForFunction(
    () => (document.querySelector('qwen-chat')!.shadowRoot!.querySelectorAll('.msg.assistant span')[1]?.textContent ?? '').length > 0,
    undefined,
    { timeout: 120_000 },
  );
  await page.locator('qwen-chat button.stop').click();
  await expect.poll(() => page.locator('qwen-chat .status').textContent(), { timeout: 60_000 }).toBe('Stopped.');
  expect(await page.locator('qwen-chat button.send').isDisabled()).toBe(false);
  const stopped = (await page.evaluate(() => (window as unknown as { events: { type: string; detail: { role?: string; content?: string } }[] }).events))
    .filter((e) => e.type === 'qwen-message')
    .map((e) => e.detail);
  expect(stopped).toHaveLength(4);
  expect(stopped[3].role).toBe('assistant');
  expect(stopped[3].content!.length).toBeGreaterThan(0);
  expect(await page.locator('qwen-chat .msg.assistant span').nth(1).textContent()).toBe(stopped[3].content);
  expect(pageErrors).toEqual([]);
  await page.close();
}, 240_000);
