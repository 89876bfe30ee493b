import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { FIXTURES, compareLogprobs, fixtureDir, golden, goldenLogprobs } from '../helpers/fixtures.ts';
import { jsonLine, runCli } from '../helpers/cli.ts';

// The same CLI under Deno (wgpu, naga): same flags, same output, its own software adapter.
const out = mkdtempSync(join(tmpdir(), 'qwen-deno-'));

for (const fixture of FIXTURES) {
  const g = golden(fixture);
  describe(`${fixture} under Deno`, () => {
    it('generate --greedy --dtype f32 returns the golden ids', async () => {
      const r = await runCli('deno', [
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
      ]);
      const line = jsonLine(r);
      expect(line.ids).toEqual(g.greedy_ids);
      expect(line.adapter).toMatchObject({ backend: 'wgpu (Deno)' });
    });
    it('tokenize --text and generate --messages give the golden ids', async () => {
      const text = JSON.parse(readFileSync(join(fixtureDir(fixture), 'golden.json'), 'utf8')) as {
        tokenizer_cases: { text: string; ids: number[] }[];
        prompt_messages: unknown[];
      };
      const c = text.tokenizer_cases[text.tokenizer_cases.length - 1];
      expect(jsonLine(await runCli('deno', ['tokenize', '--model', fixtureDir(fixture), '--text', c.text, '--json'])).ids).toEqual(c.ids);
      const file = join(out, `${fixture}-messages.json`);
      writeFileSync(file, JSON.stringify(text.prompt_messages));
      const r = jsonLine(
        await runCli('deno', [
          'generate',
          '--model',
          fixtureDir(fixture),
          '--messages',
          file,
          '--greedy',
          '--max-tokens',
          String(g.greedy_ids.length),
          '--dtype',
          'f32',
          '--json',
        ]),
      );
      expect(r.prompt_ids).toEqual(g.prompt_ids);
      expect(r.ids).toEqual(g.greedy_ids);
    });
    for (const dtype of ['f32', 'f16'] as const) {
      it(`score --dtype ${dtype}`, async () => {
        const file = join(out, `${fixture}-${dtype}.f32`);
        const r = await runCli('deno', ['score', '--model', fixtureDir(fixture), '--ids', g.prompt_ids.join(','), '--dtype', dtype, '--out', file]);
        expect(jsonLine(r)).toMatchObject({ tokens: g.prompt_ids.length, dtype });
        const bytes = readFileSync(file);
        const { maxAbs, top1Agreement } = compareLogprobs(
          new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4),
          goldenLogprobs(fixture),
          g.vocab_size,
        );
        expect(maxAbs).toBeLessThanOrEqual(dtype === 'f32' ? 5e-3 : 0.2);
        expect(top1Agreement).toBeGreaterThanOrEqual(dtype === 'f32' ? 1 : 0.97);
      });
    }
  });
}
