import type { GpuSampler, SampledToken } from './sampler.ts';

/** A picked token on its way back: `read` maps it (once); `discard` gives it up unread. */
export interface PendingToken {
  read(): Promise<SampledToken>;
  discard(): void;
}

/**
 * What the token loop drives: one sequence's state on the GPU — a Session of its own, or a slot of a batch
 * (runtime/batch.ts). Prefill and the pick after it go together, so a batch can keep its shared buffers between them.
 */
export interface TokenSequence {
  /** Back to an empty sequence. */
  reset(): void;
  /** Runs ids through the model (no pick). */
  prefill(ids: ArrayLike<number>, options: { signal?: AbortSignal }): Promise<void>;
  /** Runs ids through the model and picks the token after them, submitted but not yet read. */
  prefillAndPick(ids: ArrayLike<number>, sampler: GpuSampler, signal?: AbortSignal): Promise<PendingToken>;
  /** A decode step on the last picked token and the pick after it (see Session.advance). */
  advance(sampler: GpuSampler, signal?: AbortSignal): Promise<PendingToken>;
  /** Whether steps can be submitted before the previous token is read. */
  readonly runsAhead: boolean;
  /** What reading a token back costs beyond the GPU's work (GpuContext.readbackMs): how far steps run ahead. */
  readonly readbackMs: number;
  /** Drafts and verifies several tokens per forward pass, where the request's sampling allows (runtime/speculation). */
  readonly speculator?: SpeculativeDecoder;
  /**
   * For a sequence that speculates apart from a batch (runtime/alone_sequence.ts): once others decode in the batch
   * and a slot is free, settles its last pass (`settle`), moves into the slot with `pending` (its last pick, not yet
   * run) as the next input, and returns the slot to decode on in; undefined while it stays.
   */
  joinBatch?(pending: number, settle: () => Promise<void>): Promise<TokenSequence | undefined>;
}

/** Speculative decoding of one sequence as the token loop drives it (runtime/speculation.ts Speculator). */
export interface SpeculativeDecoder {
  /** The current (or last) generation's passes, drafts and drafts accepted; `totals`, every generation's. */
  readonly stats: { passes: number; drafted: number; accepted: number };
  readonly totals: { passes: number; drafted: number; accepted: number };
  resetStats(): void;
  /** Before a request's prompt. */
  begin(): void;
  end(): void;
  /** Whether a pass fits the context from here. */
  readonly fits: boolean;
  /** Drafts from the pending token, verifies, and returns the targets of the rows it would keep. */
  pass(sampler: GpuSampler, pending: number, draws: number, signal?: AbortSignal): Promise<SampledToken[]>;
  /** Keeps only the first `count` rows of the last pass. */
  keep(count: number): void;
  /** Makes the kept rows the sequence's (before decoding on without a pass). */
  settle(sampler?: GpuSampler, draws?: number): Promise<void>;
  destroy(): void;
}
