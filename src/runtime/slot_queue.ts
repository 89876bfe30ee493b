import { AbortError, throwIfAborted } from '../errors.ts';

/**
 * Slots that requests hold one at a time each (a batch's, a pipeline's): a free one at once, the lowest first (so a
 * batch's steps run few rows), else in turn, first come first served; a request aborted while it waits leaves the line.
 */
export class SlotQueue<S extends { index: number }> {
  private readonly free: number[];
  private readonly waiting: { resolve(slot: S): void; reject(error: unknown): void }[] = [];

  constructor(readonly slots: readonly S[]) {
    this.free = slots.map((s) => s.index);
  }

  /** Slots held, and requests waiting for one. */
  get held(): number {
    return this.slots.length - this.free.length;
  }

  get queued(): number {
    return this.waiting.length;
  }

  /** A free slot at once (the lowest), or undefined when every slot is held. */
  tryAcquire(): S | undefined {
    const index = this.free.shift();
    return index === undefined ? undefined : this.slots[index];
  }

  acquire(signal?: AbortSignal): Promise<S> {
    throwIfAborted(signal);
    const free = this.tryAcquire();
    if (free) return Promise.resolve(free);
    return new Promise((resolve, reject) => {
      const entry = { resolve, reject };
      this.waiting.push(entry);
      signal?.addEventListener(
        'abort',
        () => {
          const at = this.waiting.indexOf(entry);
          if (at >= 0) this.waiting.splice(at, 1);
          reject(new AbortError('aborted'));
        },
        { once: true },
      );
    });
  }

  /** Gives a slot back: to the first request waiting, else to the free ones. */
  release(slot: S): void {
    const next = this.waiting.shift();
    if (next) next.resolve(slot);
    else {
      this.free.push(slot.index);
      this.free.sort((a, b) => a - b);
    }
  }
}
