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
  const [cmd, pre] =
    host === 'node' ? [process.execPath, ['bin/qwen-webgpu.js']] : [`${ROOT}node_modules/.bin/deno`, ['task', '--quiet', 'qwen-webgpu']];
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
