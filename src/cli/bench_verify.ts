import type { GpuContext } from '../gpu/context.ts';
import { lmHead } from '../model/layers.ts';
import type { Model } from '../model/model.ts';
import { GpuSampler } from '../runtime/sampler.ts';
import type { Session } from '../runtime/session.ts';
import { PUBLISHED_MTP_ACCEPTANCE, projectSpeculation } from '../bench/speculation.ts';
import { median, roundTo } from '../bench/stats.ts';

/**
 * What speculative decoding would cost on this adapter, measured without a trained drafter (random weights accept
 * almost nothing, so speed is judged by cost): one decode step (submitted, then its token read), a verification
 * pass of k + 1 tokens (the prefill forward over them, the LM head on every row, read back; then rolled back), and
 * the LM head alone, from which one MTP draft step is estimated (one layer's share of a step plus the head). The
 * projection uses the published acceptance of Qwen3.5's MTP head.
 */
export interface VerifyCost {
  decode_ms: number;
  lm_head_ms: number;
  draft_steps: number;
  passes: { k: number; verify_ms: number; verify_steps: number; tokens_per_pass: number; projected_speedup: number }[];
  acceptance: typeof PUBLISHED_MTP_ACCEPTANCE;
}

const REPEATS = 7;

async function timed(repeats: number, body: () => Promise<void>): Promise<number> {
  await body();
  const times: number[] = [];
  for (let i = 0; i < repeats; i++) {
    const t0 = performance.now();
    await body();
    times.push(performance.now() - t0);
  }
  return median(times);
}

export async function measureVerifyCost(ctx: GpuContext, model: Model, session: Session, prompt: number[], ks: number[]): Promise<VerifyCost> {
  const V = model.config.vocabSize;
  const most = Math.max(...ks) + 1;
  const sampler = GpuSampler.create(ctx, { vocabSize: V, tokenizerSize: model.tokenizerSize });
  const logits = ctx.storage('verify logits', most * V * 4);
  try {
    sampler.begin({ temperature: 0 }, prompt);
    session.reset();
    await session.prefill(prompt);
    await session.sample(sampler);
    session.mark();
    const decodeMs = await timed(REPEATS, async () => {
      await (await session.advance(sampler)).read();
    });
    session.rollback();
    const headMs = await measureHeadMs(ctx, model, session);
    const draftSteps = ((decodeMs - headMs) / model.config.numLayers + headMs) / decodeMs;
    const passes: VerifyCost['passes'] = [];
    for (const k of ks) {
      const ids = prompt.slice(0, k + 1);
      // Session.prefill's own head covers the last row; the other k rows' logits come from one more head call.
      const rest = await lmHead(ctx, model, session.activations, logits, { first: 0, count: k });
      const verifyMs = await timed(REPEATS, async () => {
        session.mark();
        await session.prefill(ids);
        ctx.run(rest, 'verify head');
        await ctx.read(logits, 0, 4);
        session.rollback();
      });
      ctx.release(rest);
      const projection = projectSpeculation(PUBLISHED_MTP_ACCEPTANCE.rate, k, verifyMs / decodeMs, draftSteps);
      passes.push({
        k,
        verify_ms: round(verifyMs),
        verify_steps: round(verifyMs / decodeMs),
        tokens_per_pass: round(projection.tokensPerPass),
        projected_speedup: round(projection.speedup),
      });
    }
    return { decode_ms: round(decodeMs), lm_head_ms: round(headMs), draft_steps: round(draftSteps), passes, acceptance: PUBLISHED_MTP_ACCEPTANCE };
  } finally {
    ctx.free(logits);
    sampler.destroy();
  }
}

/** One LM head call (a decode step's: the final norm folded in), run and waited for. */
export async function measureHeadMs(ctx: GpuContext, model: Model, session: Session): Promise<number> {
  const logits = ctx.storage('head logits', model.config.vocabSize * 4);
  const head = await lmHead(ctx, model, session.activations, logits, { decoded: 1 });
  try {
    return await timed(REPEATS, async () => {
      ctx.run(head, 'lm head');
      await ctx.read(logits, 0, 4);
    });
  } finally {
    ctx.release(head);
    ctx.free(logits);
  }
}

export function describeVerifyCost(c: VerifyCost): string {
  const lines = c.passes.map(
    (p) =>
      `  k=${p.k}: a verification pass of ${p.k + 1} tokens ${p.verify_ms} ms = ${p.verify_steps} decode steps; at ${(c.acceptance.rate * 100).toFixed(1)}% acceptance ${p.tokens_per_pass} tokens per pass, projected ${p.projected_speedup}x`,
  );
  return `speculative decoding cost (decode step ${c.decode_ms} ms, LM head ${c.lm_head_ms} ms, one MTP draft ≈ ${c.draft_steps} steps; acceptance from ${c.acceptance.source})\n${lines.join('\n')}\n`;
}

const round = (x: number) => roundTo(x, 3);
