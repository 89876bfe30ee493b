import { describe, expect, it } from 'vitest';
import { ReasoningStream, splitReasoning } from '../../src/text/reasoning.ts';

describe('splitReasoning', () => {
  it('splits at </think>, dropping a leading <think> and its newline and the newlines after </think>', () => {
    expect(splitReasoning('Let me think.\n</think>\n\nThe answer.', true)).toEqual({ reasoning: 'Let me think.\n', content: 'The answer.' });
    expect(splitReasoning('<think>\nHm.\n</think>\n\nYes.', true)).toEqual({ reasoning: 'Hm.\n', content: 'Yes.' });
    expect(splitReasoning('<think>Hm.</think>Yes.\n', false)).toEqual({ reasoning: 'Hm.', content: 'Yes.\n' });
    expect(splitReasoning('</think>\n\nA', true)).toEqual({ reasoning: '', content: 'A' });
    expect(splitReasoning('a</think>b</think>c', true)).toEqual({ reasoning: 'a', content: 'b</think>c' });
  });

  it('with no </think> yet, is all reasoning when thinking was on or the text opened with <think>, else all content', () => {
    expect(splitReasoning('Still thinking', true)).toEqual({ reasoning: 'Still thinking', content: '' });
    expect(splitReasoning('<think>\nStill', false)).toEqual({ reasoning: 'Still', content: '' });
    expect(splitReasoning('Hello <think>', false)).toEqual({ reasoning: '', content: 'Hello <think>' });
    expect(splitReasoning('', true)).toEqual({ reasoning: '', content: '' });
  });
});

describe('ReasoningStream', () => {
  const texts = [
    'Let me think.\n</think>\n\nThe answer.',
    '<think>\nHm.\n</think>\n\nYes.',
    '<think>Hm</think>Yes',
    'a < b and </thi is not </think>\n\n\nok </think> stays',
    '<thin',
    '<think>',
    'Still thinking\n</th',
    '</think>\n\n',
    '\n\nplain',
    'x',
    '',
  ];
  const chunkings = (text: string): string[][] => {
    const out = [[text]];
    for (const size of [1, 2, 3, 5]) {
      const chunks: string[] = [];
      for (let i = 0; i < text.length; i += size) chunks.push(text.slice(i, i + size));
      out.push(chunks);
    }
    return out;
  };

  for (const thinking of [true, false]) {
    it(`adds up to splitReasoning however the text is cut (thinking ${thinking})`, () => {
      for (const text of texts) {
        // Thinking off without an opening <think>: content streams straight through (documented).
        if (!thinking && !text.startsWith('<think>') && text.includes('</think>')) continue;
        for (const chunks of chunkings(text)) {
          const stream = new ReasoningStream(thinking);
          let reasoning = '';
          let content = '';
          for (const piece of [...chunks.map((c) => stream.push(c)), stream.flush()]) {
            reasoning += piece.reasoning;
            content += piece.content;
          }
          expect({ reasoning, content }, `${JSON.stringify(text)} in ${JSON.stringify(chunks)}`).toEqual(splitReasoning(text, thinking));
        }
      }
    });
  }

  it('holds only what may be the start of a tag', () => {
    const stream = new ReasoningStream(true);
    expect(stream.push('abc</th')).toEqual({ reasoning: 'abc', content: '' });
    expect(stream.push('ink>\n')).toEqual({ reasoning: '', content: '' });
    expect(stream.push('\nHi')).toEqual({ reasoning: '', content: 'Hi' });
    expect(stream.push(' there</think>')).toEqual({ reasoning: '', content: ' there</think>' });
    expect(stream.flush()).toEqual({ reasoning: '', content: '' });
  });

  it('passes content straight through when thinking was off and the text did not open with <think>', () => {
    const stream = new ReasoningStream(false);
    expect(stream.push('Hello')).toEqual({ reasoning: '', content: 'Hello' });
    expect(stream.push(' a</think>b')).toEqual({ reasoning: '', content: ' a</think>b' });
  });
});
