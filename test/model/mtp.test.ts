import { expect, it } from 'vitest';
import type { Dispatch, GpuContext } from '../../src/gpu/context.ts';
import { StepParams, packParams } from '../../src/gpu/kernel.ts';
import { logSoftmax } from '../../src/kernels/log_softmax.ts';
import { lmHead } from '../../src/model/layers.ts';
import { loadModel } from '../../src/model/load.ts';
import type { Model } from '../../src/model/model.ts';
import { type MtpBuffers, createMtpBuffers, destroyMtpBuffers, mtpForward } from '../../src/model/mtp.ts';
import { GpuSampler } from '../../src/runtime/sampler.ts';
import { Session } from '../../src/runtime/session.ts';
import { MtpDrafter } from '../../src/runtime/speculation.ts';
import { openModel } from '../../src/storage/locate.ts';
import { FIXTURES, compareLogprobs, fixtureDir, golden, goldenMtpLogprobs } from '../helpers/fixtures.ts';
import { describeOnAdapters, readF32, readU32 } from '../helpers/gpu.ts';

/**
 * Draft rows [first, first + count) (token ids[p + 1], hidden row p, position p) in chunks the activations hold;
 * their log-softmaxed logits.
 */
async function draftRows(
  ctx: GpuContext,
  session: Session,
  buffers: MtpBuffers,
  rows: { ids: number[]; hidden: Float32Array; first: number; count: number; input: 'ids' | 'token' },
): Promise<Float32Array> {
  const { model, activations: act } = session;
  const { hiddenSize: H, vocabSize: V } = model.config;
  const out = new Float32Array(rows.count * V);
  for (let done = 0; done < rows.count; done += act.maxTokens) {
    const first = rows.first + done;
    const count = Math.min(act.maxTokens, rows.count - done);
    ctx.write(rows.input === 'token' ? act.token : act.ids, 0, Uint32Array.from(rows.ids.slice(first + 1, first + 1 + count)));
    ctx.write(buffers.hidden, 0, rows.hidden.subarray(first * H, (first + count) * H));
    ctx.write(act.step, 0, packParams(StepParams, { pos: first }));
    ctx.write(
      act.positions,
      0,
      Uint32Array.from({ length: count }, (_, r) => first + r),
    );
    const logits = ctx.storage('mtp logits', count * V * 4);
    const dispatches: Dispatch[] = [
      ...(await mtpForward(ctx, model, buffers, act, { tokens: count, input: rows.input })),
      ...(await lmHead(ctx, model, act, logits, { first: 0, count })),
      await logSoftmax(ctx, { x: logits, y: logits, rows: count, cols: V }),
    ];
    ctx.run(dispatches, 'mtp');
    out.set(await readF32(ctx, logits, count * V), done * V);
    ctx.release(dispatches);
    ctx.free(logits);
  }
  return out;
}

/** log_softmax over the first n values (logits, or logprobs renormalised to those ids). */
function logSoftmaxOver(values: Float32Array, n: number): Float32Array {
  const head = values.subarray(0, n);
  const max = head.reduce((m, v) => Math.max(m, v), -Infinity);
  const lse = max + Math.log(head.reduce((sum, v) => sum + Math.exp(v - max), 0));
  return head.map((v) => v - lse);
}

/** The prompt's final-normed hidden rows, as the main model leaves them in act.x after each prefill chunk. */
async function promptHidden(ctx: GpuContext, session: Session, ids: number[]): Promise<Float32Array> {
  const H = session.model.config.hiddenSize;
  const hidden = new Float32Array(ids.length * H);
  await session.prefill(ids, { onChunk: async (first, rows) => hidden.set(await readF32(ctx, session.activations.x, rows * H), first * H) });
  return hidden;
}

describeOnAdapters(
  'MTP drafter',
  (ctx) => {
    for (const fixture of FIXTURES) {
      it(`${fixture}: draft distributions match the golden (prefill form, and decode rows after it)`, async () => {
        const c = ctx();
        const model: Model = await loadModel(c, await openModel(fixtureDir(fixture)), { dtype: 'f32', mtp: true });
        const { prompt_ids: ids, vocab_size: V } = golden(fixture);
        const expected = goldenMtpLogprobs(fixture);
        // 64-row chunks: the main prefill and the drafter's both cross chunk boundaries (the MTP KV cache carries over).
        const session = Session.create(c, model, { contextLength: ids.length, prefillChunk: 64 });
        const hidden = await promptHidden(c, session, ids);
        const S = session.activations.maxTokens;
        const drafts = ids.length - 1;

        const prefillBuffers = createMtpBuffers(c, model, S, ids.length);
        const prefilled = await draftRows(c, session, prefillBuffers, { ids, hidden, first: 0, count: drafts, input: 'ids' });
        const golden32 = compareLogprobs(prefilled, expected, V);
        console.log(`${fixture} MTP prefill form vs golden: max abs ${golden32.maxAbs.toExponential(3)}, top-1 ${golden32.top1Agreement}`);
        expect(golden32.maxAbs).toBeLessThan(5e-3);

        // Decode form: a cache of its own filled by a prefill of all but the last rows, then one row per step.
        const decodeBuffers = createMtpBuffers(c, model, S, ids.length);
        const stepped = 4;
        await draftRows(c, session, decodeBuffers, { ids, hidden, first: 0, count: drafts - stepped, input: 'ids' });
        let worst = 0;
        for (let p = drafts - stepped; p < drafts; p++) {
          const row = await draftRows(c, session, decodeBuffers, { ids, hidden, first: p, count: 1, input: 'token' });
          worst = Math.max(worst, compareLogprobs(row, prefilled.subarray(p * V, (p + 1) * V), V).maxAbs);
        }
        console.log(`${fixture} MTP decode rows vs prefill form: max abs ${worst.toExponential(3)}`);
        expect(worst).toBeLessThan(1e-4);

        destroyMtpBuffers(c, prefillBuffers);
        destroyMtpBuffers(c, decodeBuffers);
        session.destroy();
        model.destroy();
      });
    }

    for (const fixture of FIXTURES) {
      it(`${fixture}: the speculating drafter's first draft, after a prompt and after a verification, is the golden distribution`, async () => {
        const c = ctx();
        const model: Model = await loadModel(c, await openModel(fixtureDir(fixture)), { dtype: 'f32', mtp: true });
        const { prompt_ids: ids, vocab_size: V } = golden(fixture);
        const expected = goldenMtpLogprobs(fixture);
        const L = ids.length;
        const session = Session.create(c, model, { contextLength: L, prefillChunk: 64, verifyRows: 3 });
        const drafter = new MtpDrafter(session, 2);
        session.chunkObserver = (chunk, first, rows) => drafter.prefilled(chunk, first, rows, first + rows === chunk.length);
        const sampler = GpuSampler.create(c, { vocabSize: V, tokenizerSize: model.tokenizerSize });
        sampler.begin({ temperature: 0 }, []);
        /**
         * The drafter's first draft from `pending` against the golden row of its position, both log-softmaxed over the
         * ids the drafter drafts from (every id but the padding rows).
         */
        const checkDraft = async (pending: number, row: number) => {
          c.run(await drafter.draft(pending, 1), 'draft');
          const n = drafter.vocab;
          const got = compareLogprobs(logSoftmaxOver(await readF32(c, drafter.act.logits, n), n), logSoftmaxOver(expected.subarray(row * V), n), n);
          expect(got.maxAbs, `row ${row}`).toBeLessThan(5e-3);
        };

        // The prompt but its last 4 tokens, prefilled in 64-token chunks; the next prompt token as the pending pick.
        await session.prefill(ids.slice(0, L - 4));
        await checkDraft(ids[L - 4], L - 5);
        // A verification of the pending token and two drafts (the prompt's next tokens), all kept: the drafter
        // catches up over the three rows with the verification's hidden states.
        c.write(session.activations.token, 0, Uint32Array.from(ids.slice(L - 4, L - 1)));
        await (await session.verify(sampler, 3)).bytes();
        const position = session.position;
        session.keepVerified(3, 3);
        drafter.kept(position, ids.slice(L - 3, L));
        await checkDraft(ids[L - 1], L - 2);

        sampler.destroy();
        drafter.destroy();
        session.destroy();
        model.destroy();
      });
    }

    for (const fixture of FIXTURES) {
      it(`${fixture}: with a draft vocabulary of n ids, the draft is the golden's argmax below n and the logits its rows`, async () => {
        const c = ctx();
        const model: Model = await loadModel(c, await openModel(fixtureDir(fixture)), { dtype: 'f32', mtp: true });
        const { prompt_ids: ids, vocab_size: V } = golden(fixture);
        const L = ids.length;
        const row = L - 5;
        const expected = goldenMtpLogprobs(fixture).subarray(row * V, (row + 1) * V);
        // n leaves out the draft over every id (where it can), so that the subset changes the draft.
        const best = expected.reduce((b, v, i) => (v > expected[b] ? i : b), 0);
        const n = Math.max(1, best);
        const session = Session.create(c, model, { contextLength: L, prefillChunk: 64, verifyRows: 2 });
        const everyId = new MtpDrafter(session, 1, 0);
        expect(everyId.vocab, 'every id but the padding rows').toBe(model.tokenizerSize);
        everyId.destroy();
        const drafter = new MtpDrafter(session, 1, n);
        expect(drafter.vocab).toBe(n);
        session.chunkObserver = (chunk, first, rows) => drafter.prefilled(chunk, first, rows, first + rows === chunk.length);
        await session.prefill(ids.slice(0, row + 1));
        c.run(await drafter.draft(ids[row + 1], 1), 'draft');
        const logits = await readF32(c, drafter.act.logits, n);
        const [draft] = await readU32(c, session.activations.token, 1, 1);
        const want = logSoftmaxOver(expected, n);
        expect(compareLogprobs(logSoftmaxOver(logits, n), want, n).maxAbs).toBeLessThan(5e-3);
        expect(draft).toBe(want.reduce((b, v, i) => (v > want[b] ? i : b), 0));
        drafter.destroy();
        session.destroy();
        model.destroy();
      });
    }
  },
  { wholeModel: true },
);
