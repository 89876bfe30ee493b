import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs the CLI as a user does: `node bin/qwen-webgpu.js ...` or `deno task qwen-webgpu ...`. */
export function runCli(host: 'node' | 'deno', args: string[], env: Record<string, string> = {}): Promise<CliResult> {
  const [cmd, pre] = host === 'node' ? [process.execPath, ['bin/qwen-webgpu.js']] : [`${ROOT}node_modules/.bin/deno`, ['task', '--quiet', 'qwen-webgpu']];
  return new Promise((resolve) => {
    execFile(cmd, [...pre, ...args], { cwd: ROOT, env: { ...process.env, ...env }, maxBuffer: 64 << 20 }, (error, stdout, stderr) => {
      resolve({ code: error ? ((error as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
  });
}

/** The last line of stdout as JSON; fails with the CLI's stderr when it did not print one. */
export function jsonLine(r: CliResult): Record<string, unknown> {
  const line = r.stdout.trim().split('\n').pop() ?? '';
  try {
    return JSON.parse(line);
  } catch {
    throw new Error(`CLI exited ${r.code} without JSON.\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
  }
}

export interface BoundedResult extends CliResult {
  ms: number;
}

/**
 * Runs the Node CLI with a memory guard (test/helpers/rss_guard.mjs: the process exits 99 once its resident
 * memory passes `rssMb`) and times it: the hardening tests' bound on every failure case.
 */
export async function runBounded(args: string[], options: { rssMb?: number; env?: Record<string, string> } = {}): Promise<BoundedResult> {
  const guard = new URL('./rss_guard.mjs', import.meta.url).href;
  const t0 = performance.now();
  const r = await runCli('node', args, { NODE_OPTIONS: `--import=${guard}`, QWEN_RSS_LIMIT_MB: String(options.rssMb ?? 500), ...options.env });
  return { ...r, ms: performance.now() - t0 };
}

/**
 * The one `error: ...` line of a failed run. Fails when the run succeeded, printed no error line or several,
 * or printed a JavaScript stack trace (Dawn's own adapter warnings on stderr are not ours and are ignored).
 */
export function errorLine(r: CliResult): string {
  if (r.code === 0) throw new Error(`expected the CLI to fail; it exited 0.\nstdout: ${r.stdout}`);
  const lines = r.stderr.split('\n');
  const errors = lines.filter((l) => l.startsWith('error:'));
  if (errors.length !== 1) throw new Error(`expected one "error:" line, got ${errors.length}:\n${r.stderr}`);
  const frames = lines.filter((l) => /^\s+at .*\.(ts|js|mjs|cjs):\d+/.test(l));
  if (frames.length > 0) throw new Error(`stack trace printed:\n${r.stderr}`);
  return errors[0];
}
