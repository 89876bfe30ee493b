import type { GpuContext } from '../gpu/context.ts';
import type { Model } from '../model/model.ts';
import { Batch, decodesTiled } from '../runtime/batch.ts';
import { roundTo } from '../bench/stats.ts';
import { memoise } from '../gpu/memo.ts';
import { generateIds } from '../runtime/generation.ts';
import { runSteps } from '../runtime/run_ahead.ts';
import type { PendingToken } from '../runtime/sequence.ts';

export interface StreamsFigure {
  streams: number;
  /** How the batch's decode steps ran their projections. */
  projections: 'tiled matmul' | 'matvec';
  /** Tokens/s of all streams together.  */
  decode_tokens_per_s: number;
  per_stream_tokens_per_s: number;
  /** Against one stream decoding alone as fast as the engine can (see benchStreams), in the same run. */
  speedup: number;
  /**
   * The streams as a server runs them (on the count's default projections only): each its own token loop, starting
   * one single-stream step after the one before; tokens/s of all from the first prompt to the last token, and the
   * rows per decode step (the count itself when every step served every stream).
   */
  staggered?: { tokens_per_s: number; rows_per_step: number };
}

export interface StreamsResult {
  /** One stream alone through matvec: the single-sequence decode path, the baseline of `speedup`. */
  single_tokens_per_s: number;
  figures: StreamsFigure[];
}

/**
 * Aggregate decode speed of `counts` concurrent streams through continuous batching (runtime/batch.ts), each
 * greedy on a prompt of its own: every stream is prefilled first, then all decode together, steps submitted ahead
 * of their tokens being read as generation runs them (runtime/run_ahead.ts), and the decode steps are timed. Each
 * count runs in a batch of that many slots, as `serve --max-batch N` with N users would (on GPUs matvec up to
 * MATVEC_DECODE_ROWS slots, the tiled matmul above); on GPUs every count also runs through the other, the figures
 * that would move that threshold. The speedup is against one stream through matvec (the single-sequence path).
 */
export async function benchStreams(
  ctx: GpuContext,
  model: Model,
  options: { counts: number[]; promptTokens: number; decodeTokens: number },
): Promise<StreamsResult> {
  const { counts, promptTokens, decodeTokens } = options;
  const contextLength = promptTokens + decodeTokens + 1;
  let seed = 777;
  const prompt = () => Array.from({ length: promptTokens }, () => (seed = (seed * 1103515245 + 12345) >>> 0) % model.tokenizerSize);

  /** Decode tokens/s of `streams` sequences of `batch` stepping together for `steps` steps. */
  const run = async (batch: Batch, streams: number, steps: number): Promise<number> => {
    const slots = await Promise.all(Array.from({ length: streams }, () => batch.acquire()));
    try {
      const first: PendingToken[] = [];
      for (const slot of slots) {
        const ids = prompt();
        slot.sampler.begin({ temperature: 0 }, ids);
        first.push(await slot.prefillAndPick(ids, slot.sampler));
      }
      await Promise.all(first.map((p) => p.read()));
      // Each batch step is one entry of the run-ahead queue: its streams' tokens read together.
      const t0 = performance.now();
      await runSteps(ctx.readbackMs, steps, async () => together(await Promise.all(slots.map((slot) => slot.advance(slot.sampler)))));
      return (streams * steps * 1000) / (performance.now() - t0);
    } finally {
      for (const slot of slots) batch.release(slot);
    }
  };

  /** `streams` token loops of their own on `batch`, the next starting `apartMs` after the one before (StreamsFigure.staggered). */
  const staggered = async (batch: Batch, streams: number, apartMs: number): Promise<StreamsFigure['staggered']> => {
    const [steps, rows] = [batch.stepsRun, batch.rowsRun];
    const stream = async (i: number) => {
      await new Promise((started) => setTimeout(started, i * apartMs));
      const slot = await batch.acquire();
      try {
        await generateIds(slot, slot.sampler, { promptIds: prompt(), maxTokens: decodeTokens, sampling: { temperature: 0 } });
      } finally {
        batch.release(slot);
      }
    };
    const t0 = performance.now();
    await Promise.all(Array.from({ length: streams }, (_, i) => stream(i)));
    const seconds = (performance.now() - t0) / 1000;
    return { tokens_per_s: round((streams * decodeTokens) / seconds), rows_per_step: round((batch.rowsRun - rows) / (batch.stepsRun - steps), 2) };
  };

  /**
   * Tokens/s of `streams` streams in a batch of as many slots (a warm-up run first: every pipeline, the decode plan),
   * measured once per stream count and projections (one stream through matvec is also the baseline); with
   * `apartMs`, the same streams staggered too.
   */
  const rates = new Map<string, Promise<{ rate: number; staggered?: StreamsFigure['staggered'] }>>();
  const measure = (streams: number, tiled: boolean, apartMs?: number) =>
    memoise(rates, `${streams} ${tiled}`, async () => {
      const batch = Batch.create(ctx, model, { contextLength, maxBatch: streams, tiledDecode: tiled });
      try {
        await run(batch, streams, 2);
        const rate = await run(batch, streams, decodeTokens);
        return { rate, staggered: apartMs === undefined ? undefined : await staggered(batch, streams, apartMs) };
      } finally {
        batch.destroy();
      }
    });
  const { rate: single } = await measure(1, false);
  const runs = counts.flatMap((streams) => {
    const tiled = decodesTiled(ctx.caps, streams);
    return [{ streams, tiled, usual: true }, ...(ctx.caps.cpu ? [] : [{ streams, tiled: !tiled, usual: false }])];
  });
  const figures: StreamsFigure[] = [];
  for (const { streams, tiled, usual } of runs) {
    const { rate, staggered } = await measure(streams, tiled, usual && streams > 1 ? 1000 / single : undefined);
    figures.push({
      streams,
      projections: tiled ? 'tiled matmul' : 'matvec',
      decode_tokens_per_s: round(rate),
      per_stream_tokens_per_s: round(rate / streams),
      speedup: round(rate / single, 2),
      ...(staggered && { staggered }),
    });
  }
  return { single_tokens_per_s: round(single), figures };
}

/** The tokens of one batch step as one pending token (the first stream's is returned). */
const together = (tokens: PendingToken[]): PendingToken => ({
  read: async () => (await Promise.all(tokens.map((t) => t.read())))[0],
  discard: () => {
    for (const t of tokens) t.discard();
  },
});

const round = (x: number, digits = 1) => roundTo(x, digits);
