import { execFileSync } from 'node:child_process';
import { mkdtempSync, readdirSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { type Browser, type Page, chromium } from 'playwright-core';

export const ROOT = fileURLToPath(new URL('../../', import.meta.url));
export const DIST = join(ROOT, 'dist/browser');
export const CHROMIUM = process.env.QWEN_CHROMIUM ?? '/usr/bin/chromium';

/** Chromium with WebGPU on (SwiftShader where there is no GPU), headless, with no network beyond what pages ask. */
export async function launchChromium(): Promise<Browser> {
  try {
    statSync(CHROMIUM);
  } catch {
    throw new Error(`Chromium not found at ${CHROMIUM}: run \`npm run setup\` (it installs Debian's chromium) or set QWEN_CHROMIUM`);
  }
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--no-sandbox',
      '--enable-unsafe-webgpu',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--no-first-run',
      '--disable-quic',
    ],
    env: { ...process.env, XDG_RUNTIME_DIR: process.env.XDG_RUNTIME_DIR ?? mkdtempSync(join(tmpdir(), 'xdg-')) },
  });
}

function newest(dir: string): { file: string; mtime: number } {
  let best = { file: dir, mtime: 0 };
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    const candidate = entry.isDirectory() ? newest(path) : { file: path, mtime: statSync(path).mtimeMs };
    if (candidate.mtime > best.mtime) best = candidate;
  }
  return best;
}

function builtAt(): number {
  try {
    return Math.min(...['index.js', 'worker.js', 'qwen-chat.js'].map((f) => statSync(join(DIST, f)).mtimeMs));
  } catch {
    return 0;
  }
}

/**
 * Makes sure dist/browser holds a build at least as new as every file under src/: scripts/test.sh runs
 * `npm run build` first; when the sources changed since (or there is no build), this runs it again.
 */
export function ensureBuild(): void {
  if (newest(join(ROOT, 'src')).mtime <= builtAt()) return;
  try {
    execFileSync(process.execPath, [join(ROOT, 'node_modules/vite/bin/vite.js'), 'build', '--logLevel', 'warn'], { cwd: ROOT, stdio: 'pipe' });
  } catch (error) {
    const e = error as { stderr?: Buffer; stdout?: Buffer; message: string };
    throw new Error(`npm run build failed: ${e.message}\n${e.stdout?.toString() ?? ''}${e.stderr?.toString() ?? ''}`);
  }
  if (builtAt() === 0) throw new Error('npm run build did not write dist/browser/index.js, worker.js and qwen-chat.js');
}

/**
 * A page in a context of its own (its own IndexedDB) that reaches only the local server and records its
 * uncaught errors, and with `consoleErrors` the console's errors too, into `errors`.
 */
export async function newTestPage(browser: Browser, errors: string[], options: { height?: number; consoleErrors?: boolean } = {}): Promise<Page> {
  const page = await browser.newPage({ viewport: { width: 1000, height: options.height ?? 700 } });
  page.on('pageerror', (e) => errors.push(`pageerror: ${e.message}`));
  if (options.consoleErrors) {
    page.on('console', (m) => {
      if (m.type() === 'error') errors.push(`console: ${m.text()}`);
    });
  }
  // The tests must not reach the network: only the local test server answers.
  await page.context().route(/^(?!http:\/\/127\.0\.0\.1:)/, (route) => route.abort());
  return page;
}

/** The test page (page.html, page.js) and the built library it imports, as serveStatic mounts. */
export const HARNESS_MOUNTS = {
  '/': join(ROOT, 'test/browser/page.html'),
  '/page.js': join(ROOT, 'test/browser/page.js'),
  '/dist/': DIST,
} as const;

/** Calls window.harness[name](...args) in a page of test/browser/page.js. */
export function callHarness<T>(page: Page, name: string, ...args: unknown[]): Promise<T> {
  return page.evaluate(
    ([n, a]) => (window as unknown as { harness: Record<string, (...x: unknown[]) => Promise<unknown>> }).harness[n as string](...(a as unknown[])),
    [name, args] as const,
  ) as Promise<T>;
}

/** Opens (or reloads, without `url`) the harness page and starts its engine; `errors` says why it did not start. */
export async function openHarness(page: Page, url?: string, errors: string[] = []): Promise<void> {
  if (url) await page.goto(url);
  else await page.reload();
  await page
    .waitForFunction(() => (window as unknown as { harnessReady?: boolean }).harnessReady === true, undefined, { timeout: 30_000 })
    .catch((error: unknown) => {
      throw new Error(`the test page did not start: ${(error as Error).message}\n${errors.join('\n')}`);
    });
  await callHarness(page, 'start');
}
