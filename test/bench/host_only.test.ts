import { describe, expect, it } from 'vitest';
import { jsonLine, runCli } from '../helpers/cli.ts';

// bench --host-only on Dawn's null backend: the host's share of a decode step at real shapes, with no GPU. Only the
// figures' presence and consistency are checked here; what they are is recorded in docs/benchmarks.md.
describe('bench --host-only', () => {
  it("times decode steps of the real 0.8B shapes on Dawn's null backend, which computes nothing", async () => {
    const r = await runCli('node', [
      'bench',
      '--synthetic',
      'qwen3.5-0.8b',
      '--layers',
      '4',
      '--dtype',
      'int4',
      '--decode-tokens',
      '16',
      '--host-only',
      '--json',
    ]);
    expect(r.code, r.stderr).toBe(0);
    const f = jsonLine(r) as Record<string, number> & { backend: string };
    expect(f.backend).toBe('null (Dawn)');
    expect(f.layers).toBe(4);
    expect(f.dispatches_per_step).toBeGreaterThan(4 * 3);
    expect(f.host_ms_per_step).toBeGreaterThan(0);
    expect(f.step_ms).toBeGreaterThanOrEqual(f.host_ms_per_step);
    expect(Math.abs((f.host_bound_tokens_per_s * f.step_ms) / 1000 - 1)).toBeLessThan(0.01);
    // No GPU figure is printed where no GPU worked.
    expect(f).not.toHaveProperty('decode_tokens_per_s');
    expect(f).not.toHaveProperty('copy_gb_per_s');
  });

  it('is refused with --streams, --verify-cost and --adapter, and under Deno', async () => {
    for (const extra of [['--streams', '1,2'], ['--verify-cost']]) {
      const r = await runCli('node', ['bench', '--synthetic', 'qwen3.5-0.8b', '--layers', '1', '--host-only', ...extra]);
      expect(r.code).toBe(2);
      expect(r.stderr).toMatch(/--host-only times decode steps alone/);
    }
    const withAdapter = await runCli('node', ['bench', '--synthetic', 'qwen3.5-0.8b', '--layers', '1', '--host-only', '--adapter', 'llvmpipe']);
    expect(withAdapter.code).toBe(2);
    expect(withAdapter.stderr).toMatch(/--host-only runs on Dawn's null backend: not with --adapter/);
    const deno = await runCli('deno', ['bench', '--synthetic', 'qwen3.5-0.8b', '--layers', '1', '--host-only']);
    expect(deno.code).toBe(2);
    expect(deno.stderr).toMatch(/Deno's WebGPU \(wgpu\) does not have: run it under Node/);
  });
});
