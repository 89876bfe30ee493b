import type { Dispatch } from '../gpu/context.ts';
import { logSoftmax } from '../kernels/log_softmax.ts';
import { lmHead } from '../model/layers.ts';
import type { Session } from './session.ts';

/**
 * Log-probabilities of every position of `ids`: row t = log_softmax(logits after ids[0..t]) over all
 * vocab_size rows. Rows are computed in blocks that fit one binding and handed to `onRows` in order.
 */
export async function scoreIds(
  session: Session,
  ids: ArrayLike<number>,
  onRows: (rows: Float32Array, first: number) => void | Promise<void>,
  signal?: AbortSignal,
): Promise<void> {
  const { ctx, model, activations } = session;
  const V = model.config.vocabSize;
  const block = Math.max(1, Math.min(activations.maxTokens, 64, Math.floor(ctx.caps.maxStorageBindingBytes / (V * 4))));
  const logits = ctx.storage('score logits', block * V * 4);
  // Bound to this call's logits buffer: released with it, so repeated scoring does not grow the context's caches.
  const built: Dispatch[] = [];
  try {
    session.reset();
    await session.prefill(ids, {
      signal,
      onChunk: async (first, rows) => {
        for (let r = 0; r < rows; r += block) {
          const n = Math.min(block, rows - r);
          const dispatches = [
            ...(await lmHead(ctx, model, activations, logits, { first: r, count: n })),
            await logSoftmax(ctx, { x: logits, y: logits, rows: n, cols: V }),
          ];
          built.push(...dispatches);
          ctx.run(dispatches, 'score');
          await onRows(new Float32Array(await ctx.read(logits, 0, n * V * 4)), first + r);
        }
      },
    });
  } finally {
    ctx.release(built);
    ctx.free(logits);
  }
}
