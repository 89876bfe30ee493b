import { describe, expect, it } from 'vitest';
import { jsonLine, runCli } from '../helpers/cli.ts';
import { fixtureDir } from '../helpers/fixtures.ts';

// bench --streams end to end on a fixture: the figures are measured (only their presence and consistency are checked
// here; speed is judged in docs/benchmarks.md, never in a test).
describe('bench --streams', () => {
  it('prints aggregate decode tokens/s per stream count, the projections each batch ran, the speedup over one stream, and the streams staggered', async () => {
    const r = await runCli('node', [
      'bench',
      '--model',
      fixtureDir('tiny-qwen35'),
      '--streams',
      '1,3',
      '--json',
      '--prompt-tokens',
      '8',
      '--decode-tokens',
      '4',
      '--adapter',
      'llvmpipe',
    ]);
    expect(r.code, r.stderr).toBe(0);
    const result = jsonLine(r) as {
      single_tokens_per_s: number;
      streams: {
        streams: number;
        projections: string;
        decode_tokens_per_s: number;
        per_stream_tokens_per_s: number;
        speedup: number;
        staggered?: { tokens_per_s: number; rows_per_step: number };
      }[];
    };
    expect(result.single_tokens_per_s).toBeGreaterThan(0);
    // A CPU adapter runs every batch through matvec, and measures each count once.
    expect(result.streams.map((f) => [f.streams, f.projections])).toEqual([
      [1, 'matvec'],
      [3, 'matvec'],
    ]);
    for (const f of result.streams) {
      expect(f.decode_tokens_per_s).toBeGreaterThan(0);
      expect(f.per_stream_tokens_per_s).toBeCloseTo(f.decode_tokens_per_s / f.streams, 0);
      expect(f.speedup).toBeCloseTo(f.decode_tokens_per_s / result.single_tokens_per_s, 1);
    }
    // Several streams also run staggered, each its own token loop: a step serves from 1 to all of them.
    expect(result.streams[0].staggered).toBeUndefined();
    const staggered = result.streams[1].staggered!;
    expect(staggered.tokens_per_s).toBeGreaterThan(0);
    expect(staggered.rows_per_step).toBeGreaterThanOrEqual(1);
    expect(staggered.rows_per_step).toBeLessThanOrEqual(3);
  }, 300_000);

  it('refuses a stream count that is not a positive integer', async () => {
    const r = await runCli('node', ['bench', '--model', fixtureDir('tiny-qwen35'), '--streams', '1,0', '--adapter', 'llvmpipe']);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/--streams must be comma-separated stream counts from 1 to 256, got "1,0"/);
  }, 60_000);
});
