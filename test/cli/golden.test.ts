import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { FIXTURES, compareLogprobs, fixtureDir, golden, goldenLogprobs } from '../helpers/fixtures.ts';
import { jsonLine, runCli } from '../helpers/cli.ts';

// The acceptance checks, through the CLI as users run it: score within 5e-3 (f32) / 0.2 with the
// golden top-1 at ≥ 97% of positions (f16), on an adapter with shader-f16 and on one without; greedy ids
// equal to the golden with f32 weights.
const ADAPTERS = [
  { name: 'lavapipe (shader-f16)', flags: ['--adapter', 'llvmpipe'], f16: true },
  { name: 'SwiftShader (no shader-f16)', flags: ['--adapter', 'SwiftShader'], f16: false },
];
const out = mkdtempSync(join(tmpdir(), 'qwen-cli-'));

for (const fixture of FIXTURES) {
  const g = golden(fixture);
  for (const adapter of ADAPTERS) {
    describe(`${fixture} on ${adapter.name}`, () => {
      for (const dtype of ['f32', 'f16'] as const) {
        it(`score --dtype ${dtype}`, async () => {
          const file = join(out, `${fixture}-${adapter.flags[1]}-${dtype}.f32`);
          const r = await runCli('node', [
            'score',
            '--model',
            fixtureDir(fixture),
            '--ids',
            g.prompt_ids.join(','),
            '--dtype',
            dtype,
            '--out',
            file,
            ...adapter.flags,
          ]);
          const line = jsonLine(r);
          expect(r.code).toBe(0);
          expect(line).toMatchObject({ tokens: g.prompt_ids.length, vocab_size: g.vocab_size, dtype });
          expect((line.adapter as { f16: boolean }).f16).toBe(adapter.f16);
          const bytes = readFileSync(file);
          const got = new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
          expect(got.length).toBe(g.prompt_ids.length * g.vocab_size);
          const { maxAbs, top1Agreement } = compareLogprobs(got, goldenLogprobs(fixture), g.vocab_size);
          if (dtype === 'f32') expect(maxAbs).toBeLessThanOrEqual(5e-3);
          else {
            expect(maxAbs).toBeLessThanOrEqual(0.2);
            expect(top1Agreement).toBeGreaterThanOrEqual(0.97);
          }
        });
      }
      it('generate --greedy --dtype f32', async () => {
        const r = await runCli('node', [
          'generate',
          '--model',
          fixtureDir(fixture),
          '--prompt-ids',
          g.prompt_ids.join(','),
          '--max-tokens',
          String(g.greedy_ids.length),
          '--greedy',
          '--dtype',
          'f32',
          '--json',
          ...adapter.flags,
        ]);
        const line = jsonLine(r);
        expect(line.ids).toEqual(g.greedy_ids);
        expect(line.prefill_tokens_per_s).toBeGreaterThan(0);
        expect(line.decode_tokens_per_s).toBeGreaterThan(0);
        expect(line.adapter).toMatchObject({ backend: 'vulkan (Dawn)' });
      });
      it('generate --greedy --dtype f32 --draft-tokens 3: the golden ids, speculating with the MTP block', async () => {
        const r = await runCli('node', [
          'generate',
          '--model',
          fixtureDir(fixture),
          '--prompt-ids',
          g.prompt_ids.join(','),
          '--max-tokens',
          String(g.greedy_ids.length),
          '--greedy',
          '--dtype',
          'f32',
          '--draft-tokens',
          '3',
          '--json',
          ...adapter.flags,
        ]);
        const line = jsonLine(r);
        expect(line.ids).toEqual(g.greedy_ids);
        expect(line.mtp_passes).toBeGreaterThan(0);
        expect(line.mtp_tokens_per_pass).toBeGreaterThanOrEqual(1);
      });
    });
  }
}
