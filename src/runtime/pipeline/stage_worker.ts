import type { GpuContext } from '../../gpu/context.ts';
import { QwenError, StageError } from '../../errors.ts';
import type { Model } from '../../model/model.ts';
import { hasHead } from '../../model/model.ts';
import { GpuSampler, type SamplingOptions } from '../sampler.ts';
import { Session } from '../session.ts';
import { type Drafter, MtpDrafter, readVerification } from '../speculation.ts';
import type { Assign } from './handshake.ts';
import type { FrameConnection } from './link.ts';

/** What stage 0 asks of a stage for one forward call of one sequence (a slot). */
export interface StepCall {
  type: 'step';
  slot: number;
  position: number;
  rows: number;
  decode: boolean;
  /** The rows are drafted tokens of one sequence, verified together (speculative decoding: Session.stageVerify). */
  verify?: boolean;
  /** Before the step: keep `kept` rows of the slot's last verification of `rows` rows (Session.keepVerified). */
  keep?: { rows: number; kept: number };
  /**
   * For the last stage's drafter (speculative decoding): the rows' token ids, and for a prefill chunk the token after
   * its last row when the prompt goes on.
   */
  ids?: number[];
  /** On the last stage: pick the next token, after bringing the slot's sampler up to stage 0's request. */
  pick?: SamplerUpdate;
}

/** Stage 0's sampler request, replayed on the last stage's sampler of the slot: all of it when new, else the tokens forced since. */
export interface SamplerUpdate {
  serial: number;
  begin?: { options: SamplingOptions; promptIds: number[] };
  forced: number[];
  /** The tokens picked so far, when a verification picked rows that were not kept (GpuSampler.setDraws). */
  draws?: number;
}

/**
 * The last stage's answer to a pick: the sampler's result (the body), and with speculative decoding the drafts for
 * the next pass; to a verification, the targets of the rows its drafts let it keep, and the next drafts.
 */
export interface PickReply {
  type: 'picked' | 'verified';
  targets?: number[];
  drafts?: number[];
}

interface StageSlot {
  session: Session;
  sampler?: GpuSampler;
  serial?: number;
  drafter?: Drafter;
  /** The targets the last verification picked on every row (the last stage): those of rows not kept are taken back. */
  picked?: number[];
}

/**
 * A stage past the first at work: answers stage 0's step calls on `conn`, one at a time in the order they come,
 * until the connection ends. Each slot is a sequence of its own (a Session of this stage's layers); a prefill at
 * position 0 starts it over. A stage before the last answers with its output rows, the last with the sampler's
 * result (or nothing, for a prefill chunk before the prompt's last). A step that fails is answered with an error
 * frame; the connection goes on.
 */
export async function serveStage(
  ctx: GpuContext,
  model: Model,
  conn: FrameConnection,
  assign: Assign,
  /** The last stage's drafter per slot when speculating (default: the model's MTP block). */
  drafterOf: (session: Session, drafts: number) => Drafter = (session, drafts) => new MtpDrafter(session, drafts, assign.draftVocab),
): Promise<void> {
  const slots: StageSlot[] = [];
  const drafts = assign.draftTokens ?? 0;
  const slotOf = (i: number) => {
    if (!Number.isInteger(i) || i < 0 || i >= assign.slots) throw new StageError(`asked for slot ${i} of ${assign.slots}`, 'stage 0');
    if (!slots[i]) {
      const session = Session.create(ctx, model, { contextLength: assign.contextLength, prefillChunk: assign.prefillChunk, verifyRows: drafts && drafts + 1 });
      slots[i] = { session, drafter: drafts > 0 && hasHead(model) ? drafterOf(session, drafts) : undefined };
    }
    return slots[i];
  };
  try {
    for (;;) {
      let frame: Awaited<ReturnType<FrameConnection['next']>>;
      try {
        frame = await conn.next();
      } catch (error) {
        // Stage 0 closed the connection: the group is over (or being rebuilt without this process).
        if (error instanceof StageError) return;
        throw error;
      }
      const call = frame.header as unknown as StepCall & { id: number };
      try {
        if (call.type !== 'step') throw new StageError(`sent a ${call.type} frame; a stage at work takes step frames`, 'stage 0');
        const slot = slotOf(call.slot);
        if (call.keep) {
          slot.session.keepVerified(call.keep.rows, call.keep.kept);
          await slot.sampler?.unpick(slot.picked?.slice(call.keep.kept) ?? []);
        }
        slot.picked = undefined;
        if (call.position === 0 && !call.decode) slot.session.reset();
        const sampler = call.pick && hasHead(model) ? replay(ctx, model, slot, call.pick) : undefined;
        if (call.verify) {
          const out = await slot.session.stageVerify({ hidden: frame.body }, call.position, call.rows, sampler);
          const bytes = await out.bytes();
          if (!sampler) {
            await conn.send({ type: 'rows', id: call.id }, new Uint8Array(bytes));
            continue;
          }
          const reply = await verified(slot, sampler, call, bytes);
          // With logprobs, the kept targets' result rows go back as the body.
          const results = sampler.reportsLogprobs ? new Uint8Array(bytes, 2 * call.rows * 4) : undefined;
          await conn.send({ ...reply, id: call.id }, results);
          continue;
        }
        const step = { position: call.position, rows: call.rows, decode: call.decode };
        const out = await slot.session.stageStep({ hidden: frame.body }, step, sampler);
        const body = out ? new Uint8Array(await out.bytes()) : undefined;
        // Speculating (stage 0 sends the ids), the drafter follows the prompt and drafts from the token picked after it.
        if (slot.drafter && call.ids && !call.decode) await slot.drafter.prefilled(call.ids, 0, call.rows, call.ids.length === call.rows);
        const draftsNext = slot.drafter && call.ids && body && sampler ? await draft(slot, sampler.parse(body.slice().buffer).id, drafts) : undefined;
        await conn.send({ type: hasHead(model) ? (body ? 'picked' : 'done') : 'rows', id: call.id, ...(draftsNext && { drafts: draftsNext }) }, body);
      } catch (error) {
        if (!(error instanceof QwenError)) throw error;
        await conn.send({ type: 'error', id: call.id, message: error.message });
      }
    }
  } finally {
    for (const slot of slots) {
      slot?.drafter?.destroy();
      slot?.session.destroy();
      slot?.sampler?.destroy();
    }
  }
}

/**
 * The last stage's verification result: each draft (call.ids[1..]) kept while it equals the target picked before it;
 * the targets of the rows kept, and the drafts from the last of them.
 */
async function verified(slot: StageSlot, sampler: GpuSampler, call: StepCall, bytes: ArrayBuffer): Promise<PickReply> {
  const rows = call.rows;
  const { picked, kept } = readVerification(sampler, bytes, rows, (call.ids ?? []).slice(1, rows));
  slot.picked = picked;
  const targets = kept.map((t) => t.id);
  if (!slot.drafter) return { type: 'verified', targets };
  slot.drafter.kept(call.position, targets);
  return { type: 'verified', targets, drafts: await draft(slot, targets[targets.length - 1], rows - 1) };
}

/** `k` drafts from `pending` (the slot's drafter leaves them in act.token rows 1..k), read back. */
async function draft(slot: StageSlot, pending: number, k: number): Promise<number[]> {
  const { ctx, activations } = slot.session;
  const result = ctx.submit(await slot.drafter!.draft(pending, k), 'draft', { buffer: activations.token, offset: 4, size: k * 4 });
  return Array.from(new Uint32Array(await result.bytes()));
}

/** The slot's sampler, brought to stage 0's request: begun anew for a new request, and told of the tokens forced since. */
function replay(ctx: GpuContext, model: Model, slot: StageSlot, update: SamplerUpdate): GpuSampler {
  slot.sampler ??= GpuSampler.create(ctx, { vocabSize: model.config.vocabSize, tokenizerSize: model.tokenizerSize });
  if (update.begin) {
    slot.sampler.begin(update.begin.options, update.begin.promptIds);
    slot.serial = update.serial;
  } else if (slot.serial !== update.serial) throw new StageError(`sampler request ${update.serial} was never begun on this stage`, 'stage 0');
  if (update.forced.length > 0) slot.sampler.markGenerated(update.forced);
  if (update.draws !== undefined) slot.sampler.setDraws(update.draws);
  return slot.sampler;
}
