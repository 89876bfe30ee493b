import { throwIfAborted } from '../gpu/errors.ts';
import type { Session } from './session.ts';

export interface GreedyOptions {
  maxTokens: number;
  /** Generation ends after emitting one of these (e.g. the eos ids); none by default. */
  stopIds?: number[];
  signal?: AbortSignal;
  onToken?: (id: number) => void;
}

export interface GreedyResult {
  ids: number[];
  promptTokens: number;
  /** Prompt in, first token out (includes its readback). */
  prefillMs: number;
  decodeMs: number;
  stopped: 'max_tokens' | 'stop';
}

/** Greedy decoding: prefill the prompt, then one token per step; each step reads back only the picked id. */
export async function generateGreedy(session: Session, prompt: ArrayLike<number>, options: GreedyOptions): Promise<GreedyResult> {
  const stop = new Set(options.stopIds ?? []);
  const ids: number[] = [];
  const t0 = performance.now();
  await session.prefill(prompt, { signal: options.signal });
  let id = await session.greedy();
  const t1 = performance.now();
  let stopped: GreedyResult['stopped'] = 'max_tokens';
  for (;;) {
    ids.push(id);
    options.onToken?.(id);
    if (stop.has(id)) {
      stopped = 'stop';
      break;
    }
    if (ids.length >= options.maxTokens) break;
    throwIfAborted(options.signal);
    await session.decode();
    id = await session.greedy();
  }
  return { ids, promptTokens: prompt.length, prefillMs: t1 - t0, decodeMs: performance.now() - t1, stopped };
}
