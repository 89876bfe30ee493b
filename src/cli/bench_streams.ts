import type { GpuContext } from '../gpu/context.ts';
import type { Model } from '../model/model.ts';
import { Batch } from '../runtime/batch.ts';
import type { PendingToken } from '../runtime/sequence.ts';

export interface StreamsFigure {
  streams: number;
  /** Tokens/s of all streams together.  */
  decode_tokens_per_s: number;
  per_stream_tokens_per_s: number;
  /** Against the first count's per-stream tokens/s in the same run (one stream's, with --streams 1,...). */
  speedup: number;
}

/**
 * Aggregate decode speed of `counts` concurrent streams through continuous batching (runtime/batch.ts), each
 * greedy on a prompt of its own: every stream is prefilled first, then all decode together, each step submitted
 * before the previous step's tokens are read (as generation runs), and the decode steps are timed.
 */
export async function benchStreams(
  ctx: GpuContext,
  model: Model,
  options: { counts: number[]; promptTokens: number; decodeTokens: number },
): Promise<StreamsFigure[]> {
  const { counts, promptTokens, decodeTokens } = options;
  const batch = Batch.create(ctx, model, { contextLength: promptTokens + decodeTokens + 1, maxBatch: Math.max(...counts) });
  let seed = 777;
  const prompt = () => Array.from({ length: promptTokens }, () => (seed = (seed * 1103515245 + 12345) >>> 0) % model.tokenizerSize);

  /** Decode tokens/s of `streams` sequences stepping together for `steps` steps. */
  const run = async (streams: number, steps: number): Promise<number> => {
    const slots = await Promise.all(Array.from({ length: streams }, () => batch.acquire()));
    try {
      let pending: PendingToken[] = [];
      for (const slot of slots) {
        const ids = prompt();
        slot.sampler.begin({ temperature: 0 }, ids);
        pending.push(await slot.prefillAndPick(ids, slot.sampler));
      }
      await Promise.all(pending.map((p) => p.read()));
      pending = [];
      const t0 = performance.now();
      for (let step = 0; step < steps; step++) {
        const next = await Promise.all(slots.map((slot) => slot.advance(slot.sampler)));
        await Promise.all(pending.map((p) => p.read()));
        pending = next;
      }
      await Promise.all(pending.map((p) => p.read()));
      return (streams * steps * 1000) / (performance.now() - t0);
    } finally {
      for (const slot of slots) batch.release(slot);
    }
  };

  try {
    // Warm-up: every pipeline, and the decode plan of each row count.
    for (const streams of counts) await run(streams, 2);
    const figures: StreamsFigure[] = [];
    let single = 0;
    for (const streams of counts) {
      const rate = await run(streams, decodeTokens);
      if (single === 0) single = rate / streams;
      figures.push({
        streams,
        decode_tokens_per_s: round(rate),
        per_stream_tokens_per_s: round(rate / streams),
        speedup: round(rate / single, 2),
      });
    }
    return figures;
  } finally {
    batch.destroy();
  }
}

const round = (x: number, digits = 1) => Math.round(x * 10 ** digits) / 10 ** digits;
