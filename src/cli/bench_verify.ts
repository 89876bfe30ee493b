import type { GpuContext } from '../gpu/context.ts';
import { lmHead } from '../model/layers.ts';
import type { Model } from '../model/model.ts';
import { GpuSampler } from '../runtime/sampler.ts';
import { Session } from '../runtime/session.ts';
import { MtpDrafter, Speculator } from '../runtime/speculation.ts';
import { generateIds } from '../runtime/generation.ts';
import { UsageError } from '../errors.ts';
import { PUBLISHED_MTP_ACCEPTANCE, projectSpeculation } from '../bench/speculation.ts';
import { median, roundTo } from '../bench/stats.ts';

/**
 * What speculative decoding costs on this adapter (random weights accept almost nothing, so speed is judged by cost),
 * on a session of its own that verifies: one decode step (submitted, then its token read); one verification of k + 1
 * tokens (Session.verify: the decode arithmetic of k + 1 rows, the LM head and a pick on each, read back, then one
 * row kept); one whole pass as generation runs it (the MTP drafter's k drafts, the verification, the rows kept). The
 * projection puts the published acceptance of Qwen3.5's MTP head on the measured pass; a generation with MTP on
 * reports the acceptance these weights reach and its decode rate against the plain one.
 */
export interface VerifyCost {
  decode_ms: number;
  /** The ids drafts come from: [0, draft_vocab). */
  draft_vocab: number;
  /** Dispatches of a decode step and of each verification, without their picks. */
  decode_dispatches: number;
  passes: {
    k: number;
    verify_dispatches: number;
    verify_ms: number;
    verify_steps: number;
    pass_ms: number;
    pass_steps: number;
    tokens_per_pass: number;
    projected_speedup: number;
  }[];
  generation: { k: number; decode_tokens_per_s: number; plain_decode_tokens_per_s: number; acceptance_rate: number; tokens_per_pass: number };
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

export async function measureVerifyCost(
  ctx: GpuContext,
  model: Model,
  prompt: number[],
  run: { ks: number[]; decodeTokens: number; decodeRate: number; draftVocab?: number },
): Promise<VerifyCost> {
  if (!model.weights.mtp) throw new UsageError('--verify-cost needs a model with its MTP block (mtp.* tensors)');
  const most = Math.max(...run.ks);
  // Room for the prompt, the timed steps and passes (each keeps one row), and a generation after them.
  const contextLength = prompt.length + (2 + run.ks.length * 2) * (REPEATS + 1) + run.decodeTokens * (most + 1) + most + 2;
  const session = Session.create(ctx, model, { contextLength, verifyRows: most + 1 });
  const drafter = new MtpDrafter(session, most, run.draftVocab);
  const speculator = new Speculator(session, drafter, most);
  session.speculator = speculator;
  const sampler = GpuSampler.create(ctx, { vocabSize: model.config.vocabSize, tokenizerSize: model.tokenizerSize });
  try {
    sampler.begin({ temperature: 0 }, prompt);
    speculator.begin();
    await session.prefill(prompt);
    let pending = (await session.sample(sampler)).id;
    const decodeMs = await timed(REPEATS, async () => {
      pending = (await (await session.advance(sampler)).read()).id;
    });
    const passes: VerifyCost['passes'] = [];
    for (const k of run.ks) {
      const verifyMs = await timed(REPEATS, async () => {
        session.ctx.write(session.activations.token, 0, Uint32Array.of(pending));
        await (await session.verify(sampler, k + 1)).bytes();
        session.keepVerified(k + 1, 1);
      });
      // A pass of k drafts as generation runs it: a speculator of its own size, the rows it keeps kept.
      const pass = new Speculator(session, drafter, k);
      const passMs = await timed(REPEATS, async () => {
        const targets = await pass.pass(sampler, pending, 1);
        pending = targets[targets.length - 1].id;
      });
      await pass.settle(sampler, 1);
      const projection = projectSpeculation(PUBLISHED_MTP_ACCEPTANCE.rate, k, passMs / decodeMs, 0);
      passes.push({
        k,
        verify_dispatches: await session.verifyDispatches(k + 1),
        verify_ms: round(verifyMs),
        verify_steps: round(verifyMs / decodeMs),
        pass_ms: round(passMs),
        pass_steps: round(passMs / decodeMs),
        tokens_per_pass: round(projection.tokensPerPass),
        projected_speedup: round(projection.speedup),
      });
    }
    const generated = await generateIds(session, sampler, { promptIds: prompt, maxTokens: run.decodeTokens + 1, sampling: { temperature: 0 } });
    const s = generated.speculation ?? { passes: 1, drafted: 1, accepted: 0 };
    const generation = {
      k: most,
      decode_tokens_per_s: round((run.decodeTokens * 1000) / generated.decodeMs),
      plain_decode_tokens_per_s: round(run.decodeRate),
      acceptance_rate: round(s.accepted / s.drafted),
      tokens_per_pass: round((s.passes + s.accepted) / s.passes),
    };
    return {
      decode_ms: round(decodeMs),
      draft_vocab: drafter.vocab,
      decode_dispatches: await session.decodeDispatches(),
      passes,
      generation,
      acceptance: PUBLISHED_MTP_ACCEPTANCE,
    };
  } finally {
    sampler.destroy();
    session.destroy();
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
      `  k=${p.k}: verifying ${p.k + 1} tokens ${p.verify_ms} ms = ${p.verify_steps} decode steps (${p.verify_dispatches} dispatches); a whole pass (drafts, verification, rows kept) ${p.pass_ms} ms = ${p.pass_steps} steps; at ${(c.acceptance.rate * 100).toFixed(1)}% acceptance ${p.tokens_per_pass} tokens per pass, projected ${p.projected_speedup}x`,
  );
  const g = c.generation;
  return `speculative decoding (decode step ${c.decode_ms} ms, ${c.decode_dispatches} dispatches; drafts from ids below ${c.draft_vocab}; acceptance for the projection from ${c.acceptance.source}, drafting from every id)
${lines.join('\n')}
  generation with MTP, k=${g.k}: decode ${g.decode_tokens_per_s} tokens/s (without: ${g.plain_decode_tokens_per_s}); ${(g.acceptance_rate * 100).toFixed(1)}% of drafts accepted, ${g.tokens_per_pass} tokens per pass (these weights' own acceptance)
`;
}

const round = (x: number) => roundTo(x, 3);
