import { execFileSync } from 'node:child_process';
import { mkdtempSync, readdirSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { type Browser, chromium } from 'playwright-core';

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
      '--no-sandbox', '--enable-unsafe-webgpu', '--disable-background-networking', '--disable-component-update',
      '--disable-sync', '--no-first-run', '--disable-quic',
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
