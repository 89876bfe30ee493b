import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { FIXTURES, fixtureDir } from '../helpers/fixtures.ts';
import { jsonLine, runCli } from '../helpers/cli.ts';
import { readFileSync } from 'node:fs';

// Issue 3's acceptance checks through the CLI: the fixtures' tokenizer and chat cases, and a chat generation
// whose prompt and greedy ids equal the goldens.
interface TextGolden {
  tokenizer_cases: { text: string; ids: number[] }[];
  chat_cases: { messages: unknown[]; add_generation_prompt: boolean; enable_thinking?: boolean; rendered: string }[];
  prompt_messages: unknown[];
  prompt_ids: number[];
  greedy_ids: number[];
}
const dir = mkdtempSync(join(tmpdir(), 'qwen-text-'));

for (const fixture of FIXTURES) {
  const g: TextGolden = JSON.parse(readFileSync(join(fixtureDir(fixture), 'golden.json'), 'utf8'));
  describe(fixture, () => {
    it('tokenize --text gives every tokenizer case', async () => {
      for (const c of g.tokenizer_cases) {
        const r = await runCli('node', ['tokenize', '--model', fixtureDir(fixture), '--text', c.text, '--json']);
        expect(jsonLine(r).ids, c.text).toEqual(c.ids);
      }
    });

    it('tokenize --messages renders every chat case', async () => {
      for (const [i, c] of g.chat_cases.entries()) {
        const file = join(dir, `${fixture}-chat-${i}.json`);
        writeFileSync(file, JSON.stringify(c.messages));
        const r = await runCli('node', [
          'tokenize',
          '--model',
          fixtureDir(fixture),
          '--messages',
          file,
          '--json',
          ...(c.enable_thinking === false ? ['--no-think'] : []),
        ]);
        expect(jsonLine(r).text).toBe(c.rendered);
      }
    });

    it('generate --messages --greedy --json gives the golden prompt ids and greedy ids', async () => {
      const file = join(dir, `${fixture}-prompt.json`);
      writeFileSync(file, JSON.stringify(g.prompt_messages));
      const r = await runCli('node', [
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
      ]);
      const out = jsonLine(r);
      expect(out.prompt_ids).toEqual(g.prompt_ids);
      expect(out.ids).toEqual(g.greedy_ids);
      expect(out).toMatchObject({ object: 'chat.completion', usage: { prompt_tokens: g.prompt_ids.length, completion_tokens: g.greedy_ids.length } });
    });
  });
}

describe('generate from text', () => {
  it('streams text and exits 0; bad input exits with a clear error', async () => {
    const ok = await runCli('node', [
      'generate',
      '--model',
      fixtureDir('tiny-qwen35'),
      '--prompt',
      'Hello',
      '--max-tokens',
      '5',
      '--seed',
      '3',
      '--temperature',
      '0.8',
      '--no-think',
    ]);
    expect(ok.code).toBe(0);
    expect(ok.stdout.length).toBeGreaterThan(1);
    const bad = await runCli('node', ['generate', '--model', fixtureDir('tiny-qwen35'), '--prompt', 'Hello', '--max-tokens', '0']);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/--max-tokens must be an integer ≥ 1/);
    const budget = await runCli('node', ['generate', '--model', fixtureDir('tiny-qwen35-moe'), '--prompt', 'Hello', '--expert-cache-mb', '-0.5']);
    expect(budget.code).toBe(2);
    expect(budget.stderr).toMatch(/--expert-cache-mb must be a number ≥ 0, got "-0.5"/);
    const file = join(dir, 'bad-role.json');
    writeFileSync(file, JSON.stringify([{ role: 'wizard', content: 'hi' }]));
    const role = await runCli('node', ['generate', '--model', fixtureDir('tiny-qwen35'), '--messages', file]);
    expect(role.code).toBe(1);
    expect(role.stderr).toMatch(/messages\[0\]\.role/);
  });
});
