export interface ReasoningSplit {
  reasoning: string;
  content: string;
}

const OPEN = '<think>';
const CLOSE = '</think>';

/**
 * Splits generated text into reasoning and answer. Everything before '</think>' (less a leading '<think>' and
 * the newline after it) is reasoning; the rest, leading newlines trimmed, is content. With no '</think>' yet,
 * all of it is reasoning when thinking was on (the prompt ended in '<think>\n') or the text opened with
 * '<think>', else content.
 */
export function splitReasoning(text: string, thinking: boolean): ReasoningSplit {
  const opened = text.startsWith(OPEN);
  const body = opened ? text.slice(OPEN.length).replace(/^\n/, '') : text;
  const end = body.indexOf(CLOSE);
  if (end >= 0) return { reasoning: body.slice(0, end), content: body.slice(end + CLOSE.length).replace(/^\n+/, '') };
  return thinking || opened ? { reasoning: body, content: '' } : { reasoning: '', content: text };
}

type State = 'start' | 'reasoning' | 'afterClose' | 'content';

/**
 * splitReasoning for a stream: push text as it is decoded, get the new reasoning and content. Text that may be
 * the start of '<think>\n' or '</think>' (or newlines after it) is held until the next push or flush.
 * The concatenated pieces equal splitReasoning of the whole text, except when thinking was off and the text
 * did not open with '<think>': content is then passed straight through, and a stray '</think>' stays in it.
 */
export class ReasoningStream {
  private state: State = 'start';
  private held = '';

  constructor(private readonly thinking: boolean) {}

  push(text: string): ReasoningSplit {
    this.held += text;
    return this.run(false);
  }

  /** Releases what is held: the stream has ended. */
  flush(): ReasoningSplit {
    return this.run(true);
  }

  private run(final: boolean): ReasoningSplit {
    const out: ReasoningSplit = { reasoning: '', content: '' };
    for (let state = this.state; ; state = this.state) {
      this.step(out, final);
      if (this.state === state) return out;
    }
  }

  private step(out: ReasoningSplit, final: boolean): void {
    const held = this.held;
    switch (this.state) {
      case 'start': {
        // '<think>' must be seen whole, and then the character after it, before deciding.
        const undecided = held.length <= OPEN.length && OPEN.startsWith(held);
        if (undecided && !final) return;
        const opened = held.startsWith(OPEN);
        if (opened) this.held = held.slice(OPEN.length).replace(/^\n/, '');
        this.state = opened || this.thinking ? 'reasoning' : 'content';
        return;
      }
      case 'reasoning': {
        const end = held.indexOf(CLOSE);
        if (end >= 0) {
          out.reasoning += held.slice(0, end);
          this.held = held.slice(end + CLOSE.length);
          this.state = 'afterClose';
          return;
        }
        const keep = final ? 0 : partialSuffix(held, CLOSE);
        out.reasoning += held.slice(0, held.length - keep);
        this.held = held.slice(held.length - keep);
        return;
      }
      case 'afterClose': {
        this.held = held.replace(/^\n+/, '');
        if (this.held !== '' || final) this.state = 'content';
        return;
      }
      case 'content':
        out.content += held;
        this.held = '';
        return;
    }
  }
}

/** Length of the longest end of `text` that is a proper beginning of `tag`. */
function partialSuffix(text: string, tag: string): number {
  for (let n = Math.min(text.length, tag.length - 1); n > 0; n--) if (text.endsWith(tag.slice(0, n))) return n;
  return 0;
}
