import { ContractError } from '../errors.ts';
import type { PendingToken } from './sequence.ts';
import type { SampledToken } from './sampler.ts';

/** Steps in flight beyond the token being read, at most: each may be computed in vain past an eos. */
export const MAX_AHEAD = 8;
/** Intervals between tokens averaged for the depth. */
const WINDOW = 8;

interface Queued {
  token: PendingToken;
  read?: Promise<SampledToken>;
}

/**
 * Decode steps submitted before their tokens are read. A token's readback costs a round trip on top of the GPU's
 * work (`readbackMs`: about 10 ms where the runtime polls maps on a timer, as Deno does; a process hop in a
 * browser; well under a millisecond under Node), and with one step ahead every token waits for it. So enough steps
 * stay in flight to cover it: 1 + ceil(readbackMs / the mean time between the last tokens read), up to MAX_AHEAD.
 * Where a round trip is shorter than a token that is two steps ahead (one more step computed in vain past an eos);
 * where it is longer, the depth grows while the tokens come faster, until they come as fast as the GPU makes them.
 * Before a first interval is known, one step ahead.
 */
export class RunAhead {
  private readonly queue: Queued[] = [];
  private readonly intervals: number[] = [];
  private lastRead: number | undefined;
  /** Most steps in flight at once so far. */
  deepest = 0;

  constructor(private readonly readbackMs: number) {}

  /** Steps to keep submitted beyond the token to be read next. */
  get depth(): number {
    if (this.intervals.length === 0) return 1;
    const interval = this.intervals.reduce((a, b) => a + b, 0) / this.intervals.length;
    return Math.min(MAX_AHEAD, 1 + Math.ceil(this.readbackMs / Math.max(interval, 1e-3)));
  }

  /** Tokens submitted and not yet read. */
  get size(): number {
    return this.queue.length;
  }

  /**
   * Submits steps (`submit`) until the depth is reached or `allowed(tokens not yet read)` says no more may go: the
   * caller's limits (the tokens left, a thinking budget).
   */
  async fill(allowed: (queued: number) => boolean, submit: () => Promise<PendingToken>): Promise<void> {
    while (this.queue.length <= this.depth && allowed(this.queue.length)) this.push(await submit());
  }

  push(token: PendingToken): void {
    this.queue.push({ token });
    this.deepest = Math.max(this.deepest, this.queue.length);
  }

  /**
   * Reads the oldest token. The maps of the tokens behind it are requested now too, all but the newest's: under
   * Deno a map request blocks until the queue is idle and then completes on a 10 ms timer, so requests made a token
   * apart overlap their timers, and the newest step is submitted before the request that waits for it.
   */
  async next(): Promise<SampledToken> {
    const head = this.queue[0];
    if (!head) throw new ContractError('nothing submitted to read', 'RunAhead.next');
    for (let i = 0; i < Math.max(1, this.queue.length - 1); i++) this.start(this.queue[i]);
    this.queue.shift();
    const token = await head.read!;
    const now = performance.now();
    if (this.lastRead !== undefined) {
      this.intervals.push(now - this.lastRead);
      if (this.intervals.length > WINDOW) this.intervals.shift();
    }
    this.lastRead = now;
    return token;
  }

  /** Gives up every token not yet read (their steps still run; their readbacks are released). */
  discard(): void {
    for (const q of this.queue.splice(0)) if (!q.read) q.token.discard();
  }

  private start(q: Queued): void {
    if (q.read) return;
    q.read = q.token.read();
    // A read started ahead and then discarded (a stop came first) must not surface as an unhandled rejection.
    q.read.catch(() => {});
  }
}

/** `count` decode steps from `submit` run ahead as generation runs them, every token read (the benches' loop). */
export async function runSteps(readbackMs: number, count: number, submit: () => Promise<PendingToken>): Promise<RunAhead> {
  const steps = new RunAhead(readbackMs);
  for (let read = 0; read < count; read++) {
    await steps.fill((queued) => read + queued < count, submit);
    await steps.next();
  }
  return steps;
}
