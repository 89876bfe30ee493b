import { throwIfAborted } from '../errors.ts';
import { RunAhead } from './run_ahead.ts';
import type { PendingToken, SpeculativeDecoder, TokenSequence } from './sequence.ts';
import type { GpuSampler, SampledToken, SamplingOptions } from './sampler.ts';
import type { SpeculationStats } from './speculation.ts';

/** One generated token: sampled, or forced by the engine (the `</think>` that closes a spent reasoning budget). */
export interface TokenEvent extends SampledToken {
  forced: boolean;
  /** Whether the token belongs to the thinking block (the closing `</think>` included). */
  reasoning: boolean;
}

export interface GenerationPlan {
  promptIds: number[];
  maxTokens: number;
  sampling: SamplingOptions;
  /** Generation ends after one of these (not emitted as text). */
  stopIds: ReadonlySet<number>;
  /** The prompt left a `<think>` block open: tokens are reasoning until `</think>`. */
  thinking: boolean;
  /** Thinking tokens allowed before the engine closes the thought itself. */
  reasoningBudget?: number;
  /** `</think>` and the ids of `</think>\n\n` that the engine appends when the budget is spent. */
  thinkEndId?: number;
  thinkEndIds?: number[];
  signal?: AbortSignal;
  /** Called with every generated id (sampled or forced, the eos id included), as it is known. */
  onToken?: (id: number) => void;
}

export type StopReason = 'stop' | 'length';

/**
 * The token loop shared by every API: prefill, then sample → decode until an eos id or max tokens. The
 * sampler runs on the GPU and leaves its token where the next decode step reads it; each step maps back
 * only the sampler's result. An AbortSignal stops it within one step.
 */
export async function* generateTokens(session: TokenSequence, sampler: GpuSampler, plan: GenerationPlan): AsyncGenerator<TokenEvent, StopReason> {
  session.reset();
  sampler.begin(plan.sampling, plan.promptIds);
  session.speculator?.resetStats();
  const speculator = session.speculator;
  speculator?.begin();
  let thinking = plan.thinking;
  let reasoningTokens = 0;
  let produced = 0;
  // The sequence decoding: `session`, or the batch slot a speculating sequence moves into (TokenSequence.joinBatch).
  let sequence = session;

  // Counts a picked token and gives its event, or undefined for a stop id (the generation ends there).
  const picked = (token: SampledToken): TokenEvent | undefined => {
    produced++;
    plan.onToken?.(token.id);
    if (plan.stopIds.has(token.id)) return undefined;
    const reasoning = thinking;
    if (token.id === plan.thinkEndId) thinking = false;
    else if (thinking) reasoningTokens++;
    return { ...token, forced: false, reasoning };
  };

  // Whether the thinking budget is spent once `queued` more tokens (not yet read) are the thought's too.
  const budgetSpent = (queued = 0) => thinking && plan.reasoningBudget !== undefined && reasoningTokens + queued >= plan.reasoningBudget;

  // Closes the thought: feeds `fed` (the last sampled token, not yet processed) and `</think>\n\n`, then picks the
  // token after them (returned when the generator finishes).
  const closeThought = async function* (fed: number[]): AsyncGenerator<TokenEvent, PendingToken> {
    const forced = (plan.thinkEndIds ?? []).slice(0, plan.maxTokens - produced);
    const next = await sequence.prefillAndPick([...fed, ...forced], sampler, plan.signal);
    sampler.markGenerated(forced);
    for (const id of forced) {
      produced++;
      plan.onToken?.(id);
      yield { id, forced: true, reasoning: id === plan.thinkEndId };
    }
    thinking = false;
    return next;
  };

  // Run-ahead: steps are submitted before earlier tokens are read (runtime/run_ahead.ts) whenever what follows does
  // not depend on those tokens: none past the last token allowed, and none that a thinking budget could close (that
  // feeds the token as prompt instead). Steps submitted past an eos id or a stop are never read; each request
  // resets the session.
  let first: PendingToken;
  if (thinking && plan.reasoningBudget === 0) {
    await session.prefill(plan.promptIds, { signal: plan.signal });
    first = yield* closeThought([]);
  } else first = await session.prefillAndPick(plan.promptIds, sampler, plan.signal);
  if (speculator) {
    try {
      return yield* speculate(speculator, first);
    } finally {
      speculator.end();
    }
  }
  return yield* stepByStep(first);

  async function* stepByStep(first: PendingToken): AsyncGenerator<TokenEvent, StopReason> {
    const steps = new RunAhead(sequence.readbackMs);
    steps.push(first);
    // Whether a step may be submitted with `queued` tokens not yet read: every one of them could be a thought's.
    const mayRunAhead = (queued: number) => sequence.runsAhead && produced + queued < plan.maxTokens && !budgetSpent(queued);
    try {
      while (produced < plan.maxTokens) {
        throwIfAborted(plan.signal);
        await steps.fill(mayRunAhead, () => sequence.advance(sampler, plan.signal));
        const event = picked(await steps.next());
        if (!event) return 'stop';
        yield event;
        if (produced >= plan.maxTokens || steps.size > 0) continue;
        if (budgetSpent()) steps.push(yield* closeThought([event.id]));
        else steps.push(await sequence.advance(sampler, plan.signal));
      }
      return 'length';
    } finally {
      // Steps submitted and never read give their staging buffers back.
      steps.discard();
    }
  }

  // Speculative decoding: each pass yields the tokens of the rows it keeps; a stop, the length or a spent thinking
  // budget keeps fewer. `draws` counts the tokens picked (not forced), the sampler's RNG step.
  async function* speculate(spec: SpeculativeDecoder, first: PendingToken): AsyncGenerator<TokenEvent, StopReason> {
    let batch = [await first.read()];
    let fromPass = false;
    let draws = 0;
    for (;;) {
      for (let i = 0; i < batch.length; i++) {
        const token = batch[i];
        draws++;
        const event = picked(token);
        if (!event) return 'stop';
        yield event;
        if (produced < plan.maxTokens && !budgetSpent()) continue;
        if (produced >= plan.maxTokens) return 'length';
        if (fromPass) spec.keep(i + 1);
        await spec.settle(sampler, draws);
        const next = yield* closeThought([token.id]);
        if (produced >= plan.maxTokens) {
          next.discard();
          return 'length';
        }
        batch = [await next.read()];
        fromPass = false;
        i = -1;
      }
      throwIfAborted(plan.signal);
      const pending = batch[batch.length - 1].id;
      const slot = await session.joinBatch?.(pending, () => spec.settle(sampler, draws));
      if (slot) {
        sequence = slot;
        return yield* stepByStep(await slot.advance(sampler, plan.signal));
      }
      if (spec.fits) {
        batch = await spec.pass(sampler, pending, draws, plan.signal);
        fromPass = true;
      } else {
        // Too near the end of the context for a pass: step by step.
        await spec.settle(sampler, draws);
        batch = [await (await session.advance(sampler, plan.signal)).read()];
        fromPass = false;
      }
    }
  }
}

export interface IdsResult {
  ids: number[];
  promptTokens: number;
  /** Prompt in, first token out (includes its readback). */
  prefillMs: number;
  decodeMs: number;
  stopped: StopReason;
  /** Verification passes, drafts and drafts accepted, when the generation speculated. */
  speculation?: SpeculationStats;
}

/** Token ids in, token ids out (no tokenizer): the CLI's --prompt-ids and the browser's generate({ promptIds }). */
export async function generateIds(
  session: TokenSequence,
  sampler: GpuSampler,
  a: { promptIds: number[]; maxTokens: number; sampling: SamplingOptions; stopIds?: number[]; signal?: AbortSignal },
): Promise<IdsResult> {
  const ids: number[] = [];
  const t0 = performance.now();
  let first = 0;
  const tokens = generateTokens(session, sampler, {
    promptIds: a.promptIds,
    maxTokens: a.maxTokens,
    sampling: a.sampling,
    stopIds: new Set(a.stopIds ?? []),
    thinking: false,
    signal: a.signal,
    onToken: (id) => {
      if (ids.push(id) === 1) first = performance.now();
    },
  });
  let next = await tokens.next();
  while (!next.done) next = await tokens.next();
  const end = performance.now();
  const stats = session.speculator?.stats;
  const speculation = stats && stats.passes > 0 ? { ...stats } : undefined;
  return { ids, promptTokens: a.promptIds.length, prefillMs: first - t0, decodeMs: end - first, stopped: next.value, speculation };
}
