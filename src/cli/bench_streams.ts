import type { GpuContext } from '../gpu/context.ts';
import type { Model } from '../model/model.ts';
import { Batch } from '../runtime/batch.ts';
import { generateTokens } from '../runtime/generation.ts';

export interface StreamsFigure {
  streams: number;
  /** Tokens/s of all streams together while every one of them decodes. */
  decode_tokens_per_s: number;
  per_stream_tokens_per_s: number;
  /** Against one stream's tokens/s in the same run. */
  speedup: number;
}

/**
 * Aggregate decode speed of `counts` concurrent streams through continuous batching (runtime/batch.ts), each
 * greedy on a prompt of its own. Measured over the window in which every stream decodes: from the moment the
 * last stream has its first token to the moment the first stream ends, counting every token in between.
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

  /** Runs `streams` sequences together; returns the tokens/s of the window where all decode. */
  const run = async (streams: number, tokens: number): Promise<number> => {
    const times: number[][] = Array.from({ length: streams }, () => []);
    await Promise.all(
      times.map(async (stamps) => {
        const slot = await batch.acquire();
        try {
          const generation = generateTokens(slot, slot.sampler, {
            promptIds: prompt(),
            maxTokens: tokens,
            sampling: { temperature: 0 },
            stopIds: new Set(),
            thinking: false,
            onToken: () => stamps.push(performance.now()),
          });
          while (!(await generation.next()).done);
        } finally {
          batch.release(slot);
        }
      }),
    );
    const start = Math.max(...times.map((t) => t[0]));
    const end = Math.min(...times.map((t) => t[t.length - 1]));
    const counted = times.reduce((n, t) => n + t.filter((s) => s > start && s <= end).length, 0);
    return end > start ? (counted * 1000) / (end - start) : 0;
  };

  try {
    // Warm-up: every pipeline, and the decode plan of each row count.
    for (const streams of counts) await run(streams, 3);
    const figures: StreamsFigure[] = [];
    let single = 0;
    for (const streams of counts) {
      const rate = await run(streams, decodeTokens);
      if (streams === 1 || single === 0) single = rate / streams;
      figures.push({
        streams,
        decode_tokens_per_s: round(rate),
        per_stream_tokens_per_s: round(rate / streams),
        speedup: single > 0 ? round(rate / single, 2) : 0,
      });
    }
    return figures;
  } finally {
    batch.destroy();
  }
}

const round = (x: number, digits = 1) => Math.round(x * 10 ** digits) / 10 ** digits;
