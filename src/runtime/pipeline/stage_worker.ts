import type { GpuContext } from '../../gpu/context.ts';
import { QwenError, StageError } from '../../errors.ts';
import type { Model } from '../../model/model.ts';
import { hasHead } from '../../model/model.ts';
import { GpuSampler, type SamplingOptions } from '../sampler.ts';
import { Session } from '../session.ts';
import type { Assign } from './handshake.ts';
import type { FrameConnection } from './link.ts';

/** What stage 0 asks of a stage for one forward call of one sequence (a slot). */
export interface StepCall {
  type: 'step';
  slot: number;
  position: number;
  rows: number;
  decode: boolean;
  /** On the last stage: pick the next token, after bringing the slot's sampler up to stage 0's request. */
  pick?: SamplerUpdate;
}

/** Stage 0's sampler request, replayed on the last stage's sampler of the slot: all of it when new, else the tokens forced since. */
export interface SamplerUpdate {
  serial: number;
  begin?: { options: SamplingOptions; promptIds: number[] };
  forced: number[];
}

/**
 * A stage past the first at work: answers stage 0's step calls on `conn`, one at a time in the order they come,
 * until the connection ends. Each slot is a sequence of its own (a Session of this stage's layers); a prefill at
 * position 0 starts it over. A stage before the last answers with its output rows, the last with the sampler's
 * result (or nothing, for a prefill chunk before the prompt's last). A step that fails is answered with an error
 * frame; the connection goes on.
 */
export async function serveStage(ctx: GpuContext, model: Model, conn: FrameConnection, assign: Assign): Promise<void> {
  const slots: { session: Session; sampler?: GpuSampler; serial?: number }[] = [];
  const slotOf = (i: number) => {
    if (!Number.isInteger(i) || i < 0 || i >= assign.slots) throw new StageError(`asked for slot ${i} of ${assign.slots}`, 'stage 0');
    slots[i] ??= { session: Session.create(ctx, model, { contextLength: assign.contextLength, prefillChunk: assign.prefillChunk }) };
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
        if (call.position === 0 && !call.decode) slot.session.reset();
        const sampler = call.pick && hasHead(model) ? replay(ctx, model, slot, call.pick) : undefined;
        const step = { position: call.position, rows: call.rows, decode: call.decode };
        const out = await slot.session.stageStep({ hidden: frame.body }, step, sampler);
        const body = out ? new Uint8Array(await out.bytes()) : undefined;
        await conn.send({ type: hasHead(model) ? (body ? 'picked' : 'done') : 'rows', id: call.id }, body);
      } catch (error) {
        if (!(error instanceof QwenError)) throw error;
        await conn.send({ type: 'error', id: call.id, message: error.message });
      }
    }
  } finally {
    for (const slot of slots) {
      slot?.session.destroy();
      slot?.sampler?.destroy();
    }
  }
}

/** The slot's sampler, brought to stage 0's request: begun anew for a new request, and told of the tokens forced since. */
function replay(ctx: GpuContext, model: Model, slot: { sampler?: GpuSampler; serial?: number }, update: SamplerUpdate): GpuSampler {
  slot.sampler ??= GpuSampler.create(ctx, { vocabSize: model.config.vocabSize, tokenizerSize: model.tokenizerSize });
  if (update.begin) {
    slot.sampler.begin(update.begin.options, update.begin.promptIds);
    slot.serial = update.serial;
  } else if (slot.serial !== update.serial) throw new StageError(`sampler request ${update.serial} was never begun on this stage`, 'stage 0');
  if (update.forced.length > 0) slot.sampler.markGenerated(update.forced);
  return slot.sampler;
}
