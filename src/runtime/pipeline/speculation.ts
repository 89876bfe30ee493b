import { SessionError, StageError } from '../../errors.ts';
import type { GpuSampler, SampledToken } from '../sampler.ts';
import type { SpeculativeDecoder } from '../sequence.ts';
import { PassLedger, sampledTargets } from '../speculation.ts';
import type { Session } from '../session.ts';
import type { Frame } from './frame.ts';
import type { PickReply, StepCall } from './stage_worker.ts';

/** What a pass needs of stage 0's slot (stage_pool.ts PipelineSlot). */
export interface SpeculatingSlot {
  readonly position: number;
  readonly session: Session;
  /** The drafts the last stage sent with its last answer. */
  drafts?: number[];
  setDraws(draws: number): void;
  throughStages(step: Omit<StepCall, 'type' | 'slot' | 'keep' | 'pick' | 'ids'>, body: Uint8Array, sampler?: GpuSampler, ids?: number[]): Promise<Frame>;
  keepVerified(rows: number, kept: number, lastId: number, draws?: number): void;
}

/**
 * Speculative decoding through pipeline stages (runtime/speculation.ts for one process): the last stage drafts with
 * the MTP block and sends the drafts with each answer; a pass sends the pending token and those drafts through every
 * stage as rows of one sequence (Session.stageVerify), and the last stage answers with the targets of the rows its
 * drafts let it keep and the drafts for the next pass. Keeping rows happens here at once and on each other stage
 * before its next step.
 */
export class PipelineSpeculator extends PassLedger implements SpeculativeDecoder {
  /** Between begin and end: the last stage's drafter follows the request's prefills. */
  active = false;

  constructor(
    private readonly slot: SpeculatingSlot,
    drafts: number,
  ) {
    super(drafts);
  }

  begin(): void {
    this.active = true;
    this.last = undefined;
    this.slot.drafts = undefined;
    this.resetStats();
  }

  end(): void {
    this.active = false;
  }

  get fits(): boolean {
    return this.slot.position + (this.last?.kept ?? 0) + this.drafts + 1 <= this.slot.session.capacity;
  }

  async pass(sampler: GpuSampler, pending: number, draws: number): Promise<SampledToken[]> {
    await this.settle();
    const drafts = this.slot.drafts;
    if (drafts?.length !== this.drafts) throw new SessionError('the last stage sent no drafts for this pass');
    const rows = this.drafts + 1;
    const ids = [pending, ...drafts];
    const position = this.slot.position;
    this.slot.setDraws(draws);
    const out = await this.slot.session.stageVerify({ ids: Uint32Array.from(ids) }, position, rows);
    const reply = await this.slot.throughStages({ position, rows, decode: true, verify: true }, new Uint8Array(await out.bytes()), sampler, ids);
    const targets = (reply.header as unknown as PickReply).targets;
    if (!Array.isArray(targets) || targets.length < 1 || targets.length > rows)
      throw new StageError('answered a verification without its targets', 'the last stage');
    // With logprobs the body holds the kept targets' result rows.
    return this.record(rows, sampledTargets(sampler, targets, reply.body?.slice().buffer));
  }

  async settle(_sampler?: GpuSampler, draws?: number): Promise<void> {
    const last = this.takeLast();
    if (!last) return;
    this.slot.keepVerified(last.rows, last.kept, last.targets[last.kept - 1].id, draws);
  }

  destroy(): void {}
}
