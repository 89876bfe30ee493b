import { describe, expect, it } from 'vitest';
import { jsonLine, runCli } from '../helpers/cli.ts';
import { fixtureDir } from '../helpers/fixtures.ts';

// bench --verify-cost end to end on a fixture: the figures it prints are measured (only their presence and range
// are checked here; speed is judged in docs/benchmarks.md, never in a test).
describe('bench --verify-cost', () => {
  it('measures a verification and a whole pass for k = 1, 2, 3, and a generation with MTP against without', async () => {
    const r = await runCli('node', [
      'bench',
      '--model',
      fixtureDir('tiny-qwen35'),
      '--verify-cost',
      '--json',
      '--prompt-tokens',
      '16',
      '--decode-tokens',
      '8',
      '--adapter',
      'llvmpipe',
    ]);
    expect(r.code, r.stderr).toBe(0);
    const cost = jsonLine(r).verify_cost as {
      decode_ms: number;
      decode_dispatches: number;
      passes: { k: number; verify_dispatches: number; verify_steps: number; pass_steps: number; tokens_per_pass: number; projected_speedup: number }[];
      generation: { k: number; decode_tokens_per_s: number; acceptance_rate: number; tokens_per_pass: number };
      acceptance: { rate: number; source: string };
    };
    expect(cost.decode_ms).toBeGreaterThan(0);
    expect(cost.passes.map((p) => p.k)).toEqual([1, 2, 3]);
    // A verification runs all its rows in each of its dispatches (the DeltaNet step included), whatever k.
    expect(cost.decode_dispatches).toBeGreaterThan(0);
    expect(cost.passes.map((p) => p.verify_dispatches)).toEqual(cost.passes.map(() => cost.passes[0].verify_dispatches));
    for (const p of cost.passes) {
      expect(p.verify_steps).toBeGreaterThan(0);
      expect(p.pass_steps).toBeGreaterThan(0);
      // 1 + α + … + α^k at the published α.
      expect(p.tokens_per_pass).toBeCloseTo((1 - cost.acceptance.rate ** (p.k + 1)) / (1 - cost.acceptance.rate), 2);
    }
    expect(cost.generation.k).toBe(3);
    expect(cost.generation.decode_tokens_per_s).toBeGreaterThan(0);
    expect(cost.generation.acceptance_rate).toBeGreaterThanOrEqual(0);
    expect(cost.generation.acceptance_rate).toBeLessThanOrEqual(1);
    expect(cost.generation.tokens_per_pass).toBeGreaterThanOrEqual(1);
    expect(cost.acceptance.source).toMatch(/mlx-lm/);
  }, 300_000);
});
