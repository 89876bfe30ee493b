import { describe, expect, it } from 'vitest';
import { FileSource } from '../../src/storage/file.ts';
import { StreamDecoder } from '../../src/text/stream_decoder.ts';
import { Tokenizer } from '../../src/text/tokenizer.ts';
import { FIXTURES, fixtureDir } from '../helpers/fixtures.ts';
import { textGolden } from './sources.ts';

/** Pushes ids one at a time, checking that the text so far never contains a broken character. */
function stream(decoder: StreamDecoder, ids: number[], expected: string): string[] {
  const chunks: string[] = [];
  for (const id of ids) {
    chunks.push(decoder.push(id));
    expect(expected.startsWith(chunks.join(''))).toBe(true);
  }
  chunks.push(decoder.flush());
  return chunks;
}

for (const fixture of FIXTURES) {
  const golden = textGolden(fixture);
  describe(`${fixture} streaming decode`, async () => {
    const tokenizer = await Tokenizer.load(new FileSource(fixtureDir(fixture)));

    it('holds back the bytes of an emoji and CJK characters until they are complete', () => {
      const c = golden.tokenizer_cases.find((t) => t.text.includes('😀'))!;
      const chunks = stream(new StreamDecoder(tokenizer), c.ids, tokenizer.decode(c.ids));
      expect(chunks.join('')).toBe(tokenizer.decode(c.ids));
      expect(chunks.join('')).toBe(c.decoded);
      for (const chunk of chunks) expect(chunk).not.toContain('\uFFFD');
      // Byte-level tokens split these characters: some pushes must have returned nothing.
      expect(chunks.slice(0, -1).filter((chunk) => chunk === '').length).toBeGreaterThan(0);
      expect(chunks.filter((chunk) => chunk.includes('😀'))).toEqual(['😀']);
    });

    it('reproduces decode() for every golden text and the prompt, with and without special tokens', () => {
      for (const ids of [...golden.tokenizer_cases.map((c) => c.ids), golden.prompt_ids]) {
        for (const skipSpecialTokens of [false, true]) {
          const expected = tokenizer.decode(ids, { skipSpecialTokens });
          const chunks = stream(new StreamDecoder(tokenizer, { skipSpecialTokens }), ids, expected);
          expect(chunks.join('')).toBe(expected);
          for (const chunk of chunks) expect(chunk).not.toContain('\uFFFD');
        }
      }
    });

    it('flushes a sequence cut short as U+FFFD and starts afresh', () => {
      const emoji = tokenizer.encode('😀');
      expect(emoji.length).toBeGreaterThan(1);
      const decoder = new StreamDecoder(tokenizer);
      for (const id of emoji.slice(0, -1)) expect(decoder.push(id)).toBe('');
      expect(decoder.flush()).toBe('\uFFFD');
      expect(decoder.flush()).toBe('');
      expect(decoder.push(tokenizer.encode('a')[0])).toBe('a');
    });

    it('passes on a U+FFFD that is really in the text', () => {
      const text = 'a\uFFFDb\uFFFD';
      const ids = tokenizer.encode(text);
      const chunks = stream(new StreamDecoder(tokenizer), ids, text);
      expect(chunks.join('')).toBe(text);
    });
  });
}
