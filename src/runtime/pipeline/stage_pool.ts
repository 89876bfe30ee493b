import type { GpuContext } from '../../gpu/context.ts';
import { SessionError, StageError, throwIfAborted } from '../../errors.ts';
import type { Model } from '../../model/model.ts';
import { GpuSampler, type SampledToken } from '../sampler.ts';
import type { PendingToken, TokenSequence } from '../sequence.ts';
import { Session } from '../session.ts';
import { SlotQueue } from '../slot_queue.ts';
import type { FrameConnection } from './link.ts';
import type { PickReply, SamplerUpdate, StepCall } from './stage_worker.ts';
import type { Frame } from './frame.ts';
import { PipelineSpeculator } from './speculation.ts';

export interface StagePoolOptions {
  contextLength: number;
  /** Sequences in flight at once (each a slot on every stage): several keep every stage busy. */
  slots: number;
  prefillChunk: number;
  /** How long a stage may take to answer one call before it counts as hung. */
  callTimeoutMs: number;
  /** Speculative decoding: drafts per pass (the last stage drafts with the MTP block), or 0 (default). */
  draftTokens?: number;
}

/**
 * Stage 0 of a pipeline (runtime/pipeline): the sequences (slots) that requests lease, each running its forward
 * calls through this process's layers and then through every other stage in turn; the last stage answers with the
 * sampled token. With several requests in flight the stages work on different sequences at once. When a stage's
 * connection fails, every call in flight fails with a StageError naming it, and so does every lease until the stage
 * is replaced (`replace`): `unavailable` says why meanwhile.
 */
export class StagePool {
  readonly slots: PipelineSlot[];
  private readonly queue: SlotQueue<PipelineSlot>;
  /** Connections to stages 1..N−1 (index 0 unused: that is this process). */
  private readonly stages: (FrameConnection | undefined)[];

  constructor(
    readonly ctx: GpuContext,
    readonly model: Model,
    stages: FrameConnection[],
    readonly options: StagePoolOptions,
  ) {
    this.stages = [undefined, ...stages];
    stages.forEach((conn, i) => this.watch(i + 1, conn));
    const sizes = { vocabSize: model.config.vocabSize, tokenizerSize: model.tokenizerSize };
    const drafts = options.draftTokens ?? 0;
    this.slots = Array.from({ length: options.slots }, (_, i) => {
      const session = Session.create(ctx, model, {
        contextLength: options.contextLength,
        prefillChunk: options.prefillChunk,
        verifyRows: drafts && drafts + 1,
      });
      return new PipelineSlot(this, i, session, GpuSampler.create(ctx, sizes), drafts);
    });
    this.queue = new SlotQueue(this.slots);
  }

  get stageCount(): number {
    return this.stages.length;
  }

  get capacity(): number {
    return this.options.contextLength;
  }

  /** Why the group cannot serve (a stage failed and is not back yet), or undefined when it is whole. */
  get unavailable(): StageError | undefined {
    return this.stages.map((s) => s?.failure).find((f) => f !== undefined);
  }

  /** Puts a new connection for stage `index` in place of a failed one (the group is whole again once every stage is). */
  replace(index: number, conn: FrameConnection): void {
    this.stages[index] = conn;
    this.watch(index, conn);
  }

  private watch(index: number, conn: FrameConnection): void {
    conn.serveCalls();
    conn.name = `stage ${index} (${conn.remote})`;
  }

  /** One call to stage `index` (its answer: header and body); a failed or missing stage fails it at once. */
  call(index: number, header: StepCall, body: Uint8Array): Promise<Frame> {
    const conn = this.stages[index];
    if (!conn) return Promise.reject(new StageError('is not connected', `stage ${index}`));
    return conn.call({ ...header }, body, this.options.callTimeoutMs);
  }

  get running(): number {
    return this.queue.held;
  }

  get queued(): number {
    return this.queue.queued;
  }

  /** A free slot, waiting in turn when every slot is taken; refused while a stage is down. */
  acquire(signal?: AbortSignal): Promise<PipelineSlot> {
    const down = this.unavailable;
    if (down) return Promise.reject(down);
    return this.queue.acquire(signal);
  }

  release(slot: PipelineSlot): void {
    slot.reset();
    this.queue.release(slot);
  }

  destroy(): void {
    for (const conn of this.stages) conn?.close();
    for (const slot of this.slots) slot.destroy();
  }
}

/**
 * One sequence through the pipeline. Prompts go a chunk at a time: this stage's layers, then each other stage's on
 * the rows the one before produced; a decode step the same with one row. Steps cannot run ahead: stage 0 embeds the
 * previous token, which the last stage picked, so each waits for it.
 */
export class PipelineSlot implements TokenSequence {
  readonly runsAhead = false;
  position = 0;
  private lastId?: number;
  /** The sampler request (serial) the last stage has, and how many forced tokens of it. */
  private shipped?: { serial: number; forced: number };
  /** Speculative decoding through the stages, when the pool drafts. */
  readonly speculator?: PipelineSpeculator;
  /** While speculating: the drafts the last stage sent with its last answer, for the next pass. */
  drafts?: number[];
  /** Rows of the last verification the other stages are to keep before their next step, and the sampler's draws. */
  private keep?: { rows: number; kept: number };
  private draws?: number;

  constructor(
    private readonly pool: StagePool,
    readonly index: number,
    /** This stage's layers' state of the sequence. */
    readonly session: Session,
    /** Stage 0's copy of the sampler: it holds the request the last stage replays, and parses what it picks. */
    readonly sampler: GpuSampler,
    draftTokens = 0,
  ) {
    if (draftTokens > 0) this.speculator = new PipelineSpeculator(this, draftTokens);
  }

  /** Back to an empty sequence here; the other stages start over at its next prefill from position 0. */
  reset(): void {
    this.session.reset();
    this.position = 0;
    this.lastId = undefined;
    this.keep = undefined;
    this.draws = undefined;
    this.drafts = undefined;
  }

  async prefill(ids: ArrayLike<number>, options: { signal?: AbortSignal }): Promise<void> {
    await this.forward(Uint32Array.from(ids), false, undefined, options.signal);
  }

  prefillAndPick(ids: ArrayLike<number>, sampler: GpuSampler, signal?: AbortSignal): Promise<PendingToken> {
    return this.forward(Uint32Array.from(ids), false, sampler, signal) as Promise<PendingToken>;
  }

  get readbackMs(): number {
    return this.session.readbackMs;
  }

  advance(sampler: GpuSampler, signal?: AbortSignal): Promise<PendingToken> {
    if (this.lastId === undefined) throw new SessionError('a decode step needs the token picked before it, read');
    return this.forward(Uint32Array.of(this.lastId), true, sampler, signal) as Promise<PendingToken>;
  }

  private async forward(ids: Uint32Array, decode: boolean, sampler: GpuSampler | undefined, signal?: AbortSignal): Promise<PendingToken | undefined> {
    if (ids.length === 0) throw new SessionError('prefill needs at least one token');
    if (this.position + ids.length > this.pool.capacity) {
      throw new SessionError(
        `${this.position + ids.length} tokens do not fit the context of ${this.pool.capacity} (position ${this.position} + ${ids.length})`,
      );
    }
    const chunk = this.pool.options.prefillChunk;
    let picked: Uint8Array | undefined;
    for (let first = 0; first < ids.length; first += chunk) {
      throwIfAborted(signal);
      const rows = Math.min(chunk, ids.length - first);
      const last = first + rows === ids.length;
      const step = { position: this.position, rows, decode };
      const out = await this.session.stageStep({ ids: ids.subarray(first, first + rows) }, step);
      // Speculating, the last stage's drafter reads a prefill chunk's ids and the one after it.
      const drafterIds = this.speculator?.active && !decode ? Array.from(ids.subarray(first, first + rows + 1)) : undefined;
      const reply = await this.throughStages(step, new Uint8Array(await out!.bytes()), last ? sampler : undefined, drafterIds);
      this.position += rows;
      if (last && sampler) picked = reply.body;
    }
    if (!picked) return undefined;
    const bytes = picked;
    return {
      read: async (): Promise<SampledToken> => {
        const token = sampler!.parse(bytes.slice().buffer);
        this.lastId = token.id;
        return token;
      },
      discard: () => {},
    };
  }

  /**
   * One step through stages 1..N−1 from this stage's output `body`: each first keeps what a settled verification left
   * to keep; the last picks with `sampler` (when given) and reads `ids` (speculating). Its answer is returned; drafts
   * in it are kept for the next pass.
   */
  async throughStages(step: Omit<StepCall, 'type' | 'slot' | 'keep' | 'pick' | 'ids'>, body: Uint8Array, sampler?: GpuSampler, ids?: number[]): Promise<Frame> {
    const S = this.pool.stageCount;
    const keep = this.keep;
    this.keep = undefined;
    let reply: Frame = { header: { type: 'rows' }, body };
    for (let s = 1; s < S; s++) {
      const lastStage = s === S - 1;
      const pick = lastStage && sampler ? this.samplerUpdate(sampler) : undefined;
      reply = await this.pool.call(s, { type: 'step', slot: this.index, ...step, keep, pick, ids: lastStage ? ids : undefined }, reply.body);
    }
    const drafts = (reply.header as unknown as PickReply).drafts;
    if (drafts) this.drafts = drafts;
    return reply;
  }

  /** Keeps `kept` rows of the last verification of `rows` here, and on the other stages at their next step. */
  keepVerified(rows: number, kept: number, lastId: number, draws?: number): void {
    this.session.keepVerified(rows, kept);
    this.position += kept;
    this.lastId = lastId;
    this.keep = { rows, kept };
    if (draws !== undefined) this.draws = draws;
  }

  /** What the last stage's sampler for this slot lacks of `sampler`'s request. */
  private samplerUpdate(sampler: GpuSampler): SamplerUpdate {
    const request = sampler.request;
    if (!request) throw new SessionError('pick before the sampler was begun');
    const fresh = this.shipped?.serial !== request.serial;
    const update: SamplerUpdate = {
      serial: request.serial,
      begin: fresh ? { options: request.options, promptIds: request.promptIds } : undefined,
      forced: request.forced.slice(fresh ? 0 : this.shipped!.forced),
      draws: this.draws,
    };
    this.shipped = { serial: request.serial, forced: request.forced.length };
    this.draws = undefined;
    return update;
  }

  /** Tells the last stage the sampler's draws before its next pick. */
  setDraws(draws: number): void {
    this.draws = draws;
  }

  destroy(): void {
    this.session.destroy();
    this.sampler.destroy();
  }
}
