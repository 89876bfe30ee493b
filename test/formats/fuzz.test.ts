import { afterAll, describe, expect, it } from 'vitest';
import { FUZZ_TARGETS } from '../helpers/fuzz.ts';
import { removeWrittenGgufs } from '../helpers/gguf_writer.ts';

// Every parser meets mutated files (test/helpers/fuzz.ts): byte mutations, and for JSON structural ones, each
// answered with a clear error (a QwenError) or a valid result, with no read past the end of a file and no
// slow case. CI runs the counts below; `npm run fuzz` (scripts/fuzz.ts) runs 100,000 cases per parser.
const CASES: Record<string, number> = {
  safetensors: 10_000,
  GGUF: 10_000,
  'packed-manifest': 10_000,
  // Each of these loads a tokenizer or plans a checkpoint per case (a few ms): fewer in CI.
  'config.json': 2_000,
  'tokenizer.json': 2_000,
  'tokenizer_config.json': 2_000,
  'generation_config.json': 2_000,
};

afterAll(() => removeWrittenGgufs());

describe('parsers under mutated files', () => {
  it('covers every fuzz target', () => {
    expect(FUZZ_TARGETS.map((t) => t.name).sort()).toEqual(Object.keys(CASES).sort());
  });

  for (const target of FUZZ_TARGETS) {
    it(`${target.name} (${CASES[target.name].toLocaleString('en')} cases per mutation kind)`, async () => {
      for (const report of await target.run(CASES[target.name])) {
        // Most mutations must be noticed: a fuzzer that never breaks anything tests nothing. (A structural
        // mutation often hits a field the engine ignores, such as most of tokenizer_config.json's.)
        expect(report.clear).toBeGreaterThan(report.cases / (report.kind === 'bytes' ? 10 : 20));
      }
    });
  }
});
