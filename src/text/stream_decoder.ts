import type { Tokenizer } from './tokenizer.ts';

const REPLACEMENT = '\uFFFD';

/**
 * Decodes generated ids one at a time without ever emitting a broken character. A byte-level token can hold
 * part of a UTF-8 sequence (an emoji often spans several tokens); such text decodes to a trailing U+FFFD,
 * so it is held until a later id completes it. Only a short window of ids is decoded per push: the ids of
 * the last emitted piece (context for the decoder) and those not yet emitted.
 */
export class StreamDecoder {
  private ids: number[] = [];
  /** ids[0..emitted) produced the text already returned; ids before that have been dropped. */
  private emitted = 0;
  private readonly skipSpecialTokens: boolean;

  constructor(
    private readonly tokenizer: Tokenizer,
    options: { skipSpecialTokens?: boolean } = {},
  ) {
    this.skipSpecialTokens = options.skipSpecialTokens ?? false;
  }

  /** The text this id completes ('' while a character is still incomplete). */
  push(id: number): string {
    this.ids.push(id);
    return this.take(false);
  }

  /** Whatever is held back, as it decodes now (a sequence cut short ends in U+FFFD); the window is reset. */
  flush(): string {
    const text = this.take(true);
    this.ids = [];
    this.emitted = 0;
    return text;
  }

  private take(final: boolean): string {
    const options = { skipSpecialTokens: this.skipSpecialTokens };
    const before = this.tokenizer.decode(this.ids.slice(0, this.emitted), options);
    const all = this.tokenizer.decode(this.ids, options);
    // A special token skipped, or bytes still incomplete: nothing new to show yet.
    if (all.length <= before.length || (!final && all.endsWith(REPLACEMENT))) return '';
    // Keep the newly emitted ids as the next window's leading context.
    this.ids = this.ids.slice(this.emitted);
    this.emitted = this.ids.length;
    return all.slice(before.length);
  }
}
