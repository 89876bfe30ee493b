import type { Dispatch } from '../../src/gpu/context.ts';
import type { Session } from '../../src/runtime/session.ts';
import type { Drafter } from '../../src/runtime/speculation.ts';

/**
 * Drafts from a script, to drive every accept count through a verification: the right continuation (`truth`, the
 * tokens step-by-step decoding generates after a prompt of `promptLength`) for `right(pass, k)` drafts, then wrong
 * ones. It follows the pending token's position through the drafter hooks, as the MTP drafter follows its rows.
 */
export class ScriptedDrafter implements Drafter {
  passes = 0;
  /** The position of the pending token (the one the drafts follow). */
  private pending = 0;

  constructor(
    private readonly session: Session,
    private readonly promptLength: number,
    private readonly truth: number[],
    private readonly right: (pass: number, k: number) => number,
  ) {}

  async draft(_pending: number, k: number): Promise<Dispatch[]> {
    // The pending token is generated token (position − prompt length); the drafts are the ones after it.
    const next = this.pending - this.promptLength + 1;
    const good = this.right(this.passes++, k);
    const vocab = this.session.model.tokenizerSize;
    const drafts = Array.from({ length: k }, (_, j) => {
      const want = this.truth[next + j] ?? 0;
      return j < good ? want : (want + 1 + j) % vocab;
    });
    this.session.ctx.write(this.session.activations.token, 4, Uint32Array.from(drafts));
    return [];
  }

  async prefilled(_ids: ArrayLike<number>, _first: number, _rows: number, last: boolean): Promise<void> {
    if (last) this.pending = this.session.position;
  }

  kept(position: number, targets: number[]): void {
    this.pending = position + targets.length;
  }

  destroy(): void {}
}
