/**
 * Answer text as it streams: emits what can no longer become part of a stop string, and holds back a tool
 * call (`<tool_call>` onwards) for parsing at the end. `finish()` gives the whole text.
 */
export class TextStream {
  private text = '';
  private emitted = 0;
  private stoppedAt: number | undefined;
  private readonly holdMarkers: string[];

  constructor(
    private readonly stops: string[],
    /** Text from the first of these markers on is held back (tool calls). */
    holdFrom: string[] = [],
    /** Leading whitespace is dropped (the "\n\n" after `</think>`). */
    private readonly trimStart = false,
  ) {
    this.holdMarkers = holdFrom;
  }

  get stopped(): boolean {
    return this.stoppedAt !== undefined;
  }

  /** Adds decoded text; returns the part that is safe to show now. */
  push(piece: string): string {
    if (this.stopped) return '';
    this.text += piece;
    if (this.trimStart && this.emitted === 0) this.text = this.text.replace(/^\s+/, '');
    const from = Math.max(0, this.emitted - Math.max(0, ...this.stops.map((s) => s.length)));
    let limit = this.text.length;
    for (const stop of this.stops) {
      const at = this.text.indexOf(stop, from);
      if (at >= 0 && at < limit) {
        limit = at;
        this.stoppedAt = at;
      }
    }
    if (this.stoppedAt !== undefined) this.text = this.text.slice(0, this.stoppedAt);
    else limit = this.text.length - this.partialSuffix([...this.stops, ...this.holdMarkers]);
    for (const marker of this.holdMarkers) {
      const at = this.text.indexOf(marker);
      if (at >= 0) limit = Math.min(limit, at);
    }
    if (limit <= this.emitted) return '';
    const out = this.text.slice(this.emitted, limit);
    this.emitted = limit;
    return out;
  }

  /** The longest end of the text that is a proper prefix of a stop string or marker. */
  private partialSuffix(patterns: string[]): number {
    let longest = 0;
    for (const p of patterns) {
      for (let n = Math.min(p.length - 1, this.text.length); n > longest; n--) {
        if (this.text.endsWith(p.slice(0, n))) {
          longest = n;
          break;
        }
      }
    }
    return longest;
  }

  /** Everything pushed (cut at a stop string), and what has not been emitted yet. */
  finish(): { text: string; rest: string } {
    return { text: this.text, rest: this.text.slice(this.emitted) };
  }
}
