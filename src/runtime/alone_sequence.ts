import type { Batch, BatchSlot } from './batch.ts';
import type { GpuSampler } from './sampler.ts';
import type { PendingToken, SpeculativeDecoder, TokenSequence } from './sequence.ts';
import type { Session } from './session.ts';

/**
 * The sequence of a request that finds no other running beside a batch (the Engine's request alone): it speculates in
 * a Session of its own, where one pass yields several tokens for about one step's reads of the weights. Once others
 * decode in the batch it moves into a free slot there: apart, each of its passes and each batch step would read the
 * weights again, while in the batch one step serves every sequence.
 */
export class AloneSequence implements TokenSequence {
  /** The batch slot it moved into, until the request ends. */
  private slot?: BatchSlot;

  constructor(
    /** A Session that speculates (Session.speculator), of the batch's context length. */
    readonly session: Session,
    private readonly batch: Batch,
  ) {}

  /** Whether the current request has moved into the batch. */
  get moved(): boolean {
    return this.slot !== undefined;
  }

  get speculator(): SpeculativeDecoder | undefined {
    return this.session.speculator;
  }

  get runsAhead(): boolean {
    return this.session.runsAhead;
  }

  get readbackMs(): number {
    return this.session.readbackMs;
  }

  reset(): void {
    this.leave();
    this.session.reset();
  }

  prefill(ids: ArrayLike<number>, options: { signal?: AbortSignal }): Promise<void> {
    return this.session.prefill(ids, options);
  }

  prefillAndPick(ids: ArrayLike<number>, sampler: GpuSampler, signal?: AbortSignal): Promise<PendingToken> {
    return this.session.prefillAndPick(ids, sampler, signal);
  }

  advance(sampler: GpuSampler, signal?: AbortSignal): Promise<PendingToken> {
    return this.session.advance(sampler, signal);
  }

  async joinBatch(pending: number, settle: () => Promise<void>): Promise<TokenSequence | undefined> {
    if (this.slot || this.batch.running === 0 || !this.batch.hasFreeSlot) return undefined;
    await settle();
    // Another request may have taken the last free slot meanwhile: the sequence then speculates on (settled).
    this.slot = this.batch.adopt(this.session, pending);
    return this.slot;
  }

  /** Gives the batch slot back when the request that moved there ends. */
  leave(): void {
    if (!this.slot) return;
    this.batch.release(this.slot);
    this.slot = undefined;
  }

  destroy(): void {
    this.leave();
    this.session.destroy();
  }
}
