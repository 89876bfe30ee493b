import type { Caps } from '../gpu/caps.ts';
import type { Dispatch, GpuContext, ReadRange, Readback } from '../gpu/context.ts';
import { SessionError, throwIfAborted } from '../errors.ts';
import { dims } from '../model/config.ts';
import { type ForwardSegment, forwardSegments, lmHead, segmentDispatches } from '../model/layers.ts';
import type { Model } from '../model/model.ts';
import { type Activations, type LayerState, createActivations, createLayerStates, stateBytes } from '../model/activations.ts';
import { SKIPPED_ROW } from '../kernels/rows.ts';
import { ExpertCache } from './expert_cache.ts';
import { PlanCache } from './plan_cache.ts';
import { GpuSampler } from './sampler.ts';
import type { PendingToken, TokenSequence } from './sequence.ts';
import { Session } from './session.ts';
import { SlotQueue } from './slot_queue.ts';

export interface BatchOptions {
  /** Tokens each sequence can hold (prompt + generated). */
  contextLength: number;
  /** Sequences that decode together (slots). */
  maxBatch: number;
  /** Prefill chunk (tokens between two decode steps); default: the Session's. */
  prefillChunk?: number;
  /**
   * Decode projections through the tiled matmul, which reads the weights once per step for all rows (true), or
   * matvec, which reads them once per workgroup of up to 4 rows with each row's arithmetic as alone (false), for every
   * step of the batch, so that a sequence's arithmetic never depends on what else runs. Default: the tiled matmul on
   * GPUs for more than MATVEC_DECODE_ROWS slots; matvec on CPU adapters (where the tiled matmul is slow) and for fewer
   * slots.
   */
  tiledDecode?: boolean;
}

/**
 * A GPU batch of up to this many slots decodes through matvec: the tiled matmul's tiles are 64 rows high, so its
 * steps would do 16 times or more the arithmetic they need, while matvec loads each weight once for up to 4 rows
 * (a workgroup's); its rows then also get exactly the single-sequence arithmetic. Not yet measured on a GPU:
 * bench --streams runs every count through both on a GPU, the figures that would move it.
 */
export const MATVEC_DECODE_ROWS = 4;

/** Whether a batch of `maxBatch` slots decodes through the tiled matmul (BatchOptions.tiledDecode, when given, decides). */
export const decodesTiled = (caps: Caps, maxBatch: number, tiledDecode?: boolean): boolean => tiledDecode ?? (!caps.cpu && maxBatch > MATVEC_DECODE_ROWS);

interface StepRequest {
  slot: BatchSlot;
  sampler: GpuSampler;
  resolve(token: PendingToken): void;
  reject(error: unknown): void;
}

/**
 * Continuous batching: up to `maxBatch` sequences (slots), each with its own KV cache, DeltaNet states and sampler,
 * decode together — one decode step runs a row per sequence that asked for one (layers.ts: decode rows), so the
 * weights are read once per step for all of them. A new request's prompt is prefilled in a Session of its own, a
 * chunk at a time between decode steps (a long prompt does not stall the others), and its states are then copied
 * into its slot (as are those of a sequence that speculated apart and moves in: `adopt`); a slot is free again as
 * soon as its sequence ends. A row's arithmetic does not depend on the rows beside it, so every sequence gets exactly
 * the tokens it gets alone (greedy: the same ids; seeded: the same draws). With experts streamed, a step runs layer
 * by layer through the expert cache (ExpertCache.forward) with the experts its sequences' rows chose.
 */
export class Batch {
  readonly slots: BatchSlot[];
  /** Sequences in the last decode step. */
  lastStepRows = 0;
  /** Decode steps run, and the rows they ran (rows / steps: how well the sequences decoded together). */
  stepsRun = 0;
  rowsRun = 0;
  private readonly queue: SlotQueue<BatchSlot>;
  /** Slots past their first pick, which ask for decode steps. */
  private readonly decoding = new Set<BatchSlot>();
  private requests: StepRequest[] = [];
  /** A step queued to run in a microtask (everyone asked), or on a timer (some have). */
  private stepQueued = false;
  private stepTimer: ReturnType<typeof setTimeout> | undefined;
  private readonly decodePlans: PlanCache<Dispatch[]>;
  private readonly decodeSegmentPlans: PlanCache<ForwardSegment[]>;
  /** Present when the model's experts are streamed (shared with the prefill Session). */
  private readonly experts?: ExpertCache;
  /** A step is being built and submitted (a streamed one awaits each MoE layer's readback): the next waits for it. */
  private stepping = false;
  /** The prefill Session is one sequence's at a time, in the order they ask. */
  private prefillTurn: Promise<void> = Promise.resolve();

  private constructor(
    readonly ctx: GpuContext,
    readonly model: Model,
    readonly capacity: number,
    private readonly states: LayerState[],
    private readonly act: Activations,
    /** Where prompts are prefilled; also where the Engine scores (through `withPrefillSession`). */
    readonly prefillSession: Session,
    /** Whether decode steps run their projections through the tiled matmul (BatchOptions.tiledDecode). */
    readonly tiledDecode: boolean,
  ) {
    const samplerSizes = { vocabSize: model.config.vocabSize, tokenizerSize: model.tokenizerSize };
    this.slots = Array.from({ length: act.maxTokens }, (_, i) => new BatchSlot(this, i, GpuSampler.create(ctx, samplerSizes)));
    this.queue = new SlotQueue(this.slots);
    this.experts = ExpertCache.of(ctx, model);
    this.decodePlans = new PlanCache(ctx, Infinity, (d) => d);
    this.decodeSegmentPlans = new PlanCache(ctx, Infinity, segmentDispatches);
  }

  static create(ctx: GpuContext, model: Model, options: BatchOptions): Batch {
    const { contextLength: capacity, maxBatch } = options;
    if (!Number.isInteger(maxBatch) || maxBatch < 1) throw new SessionError(`max batch ${maxBatch} must be a positive integer`);
    const prefillSession = Session.create(ctx, model, { contextLength: capacity, prefillChunk: options.prefillChunk });
    let states: LayerState[] = [];
    try {
      states = createLayerStates(ctx, model, capacity, maxBatch);
      const act = createActivations(ctx, model, maxBatch, capacity, maxBatch);
      return new Batch(ctx, model, capacity, states, act, prefillSession, decodesTiled(ctx.caps, maxBatch, options.tiledDecode));
    } catch (error) {
      prefillSession.destroy();
      for (const s of states) ctx.free(s.conv, s.recurrent, s.keys, s.values);
      throw error;
    }
  }

  /** Sequences holding a slot, and those waiting for one. */
  get running(): number {
    return this.queue.held;
  }

  get queued(): number {
    return this.queue.queued;
  }

  /** Bytes of KV cache and DeltaNet state per sequence (all of a slot's, whatever its length). */
  get stateBytesPerSequence(): number {
    return stateBytes(this.model, this.capacity, this.ctx.activationBytes);
  }

  /** A free slot (the lowest, so that steps run few rows), waiting in turn when every slot is taken. */
  acquire(signal?: AbortSignal): Promise<BatchSlot> {
    return this.queue.acquire(signal);
  }

  /** Gives a slot back: to the first request waiting, else to the free ones. */
  release(slot: BatchSlot): void {
    slot.reset();
    this.queue.release(slot);
  }

  /** Runs `body` with the prefill Session when no prompt is being prefilled (the Engine scores there). */
  withPrefillSession<T>(body: (session: Session) => Promise<T>): Promise<T> {
    const run = this.prefillTurn.then(() => body(this.prefillSession));
    this.prefillTurn = run.then(
      () => {},
      () => {},
    );
    return run;
  }

  /**
   * Prefills `ids` for `slot` (continuing from its position) in the prefill Session, a chunk at a time with the
   * event loop let through between chunks (decode steps run there), copies the states into the slot and, with a
   * sampler, picks the next token into the slot's row.
   */
  async prefill(slot: BatchSlot, ids: ArrayLike<number>, sampler: GpuSampler | undefined, signal?: AbortSignal): Promise<PendingToken | undefined> {
    if (ids.length === 0) throw new SessionError('prefill needs at least one token');
    if (slot.position + ids.length > this.capacity) {
      throw new SessionError(`${slot.position + ids.length} tokens do not fit the context of ${this.capacity} (position ${slot.position} + ${ids.length})`);
    }
    this.decoding.delete(slot);
    return this.withPrefillSession(async (session) => {
      session.reset();
      if (slot.position > 0) {
        this.copyStates(slot.index, slot.position, 'to session');
        session.position = slot.position;
      }
      const chunk = session.activations.maxTokens;
      for (let first = 0; first < ids.length; first += chunk) {
        if (first > 0) await new Promise((next) => setTimeout(next, 0));
        throwIfAborted(signal);
        await session.prefill(
          Array.from({ length: Math.min(chunk, ids.length - first) }, (_, i) => ids[first + i]),
          { signal },
        );
      }
      this.copyStates(slot.index, session.position, 'to slot');
      slot.position = session.position;
      if (!sampler) return undefined;
      const dispatches = await sampler.dispatches(session.activations.logits, this.act.token, { out: slot.index });
      const result = this.ctx.submit(dispatches, 'sample', resultRange(sampler));
      this.decoding.add(slot);
      return { read: async () => sampler.parse(await result.bytes()), discard: () => result.discard() };
    });
  }

  /**
   * Moves a sequence that decoded in a Session of its own (the Engine's request alone) into a free slot, or gives
   * undefined when none is free: its states are copied there and `pending`, its last pick not yet run, becomes the
   * slot's next input, so that it decodes on in the batch's steps.
   */
  adopt(session: Session, pending: number): BatchSlot | undefined {
    if (session.capacity !== this.capacity) throw new SessionError(`a session of ${session.capacity} tokens cannot move into slots of ${this.capacity}`);
    const slot = this.queue.tryAcquire();
    if (!slot) return undefined;
    this.copyStates(slot.index, session.position, 'to slot', session);
    this.ctx.write(this.act.token, slot.index * 4, Uint32Array.of(pending));
    slot.position = session.position;
    this.decoding.add(slot);
    return slot;
  }

  /** Whether a slot is free now (nothing waits for one). */
  get hasFreeSlot(): boolean {
    return this.queue.held < this.slots.length;
  }

  /**
   * Copies a sequence's states between its slot and a Session's (the prefill Session's unless given): every DeltaNet
   * conv ring and recurrent state, and the KV cache of positions [0, length) per kv head.
   */
  private copyStates(index: number, length: number, direction: 'to slot' | 'to session', session = this.prefillSession): void {
    const c = this.model.config;
    const d = dims(c);
    const ab = this.ctx.activationBytes;
    const sessionStates = session.layerStates;
    const copies: Parameters<GpuContext['copy']>[0][number][] = [];
    const add = (slotBuffer: GPUBuffer, sessionBuffer: GPUBuffer, slotOffset: number, sessionOffset: number, size: number) => {
      if (size === 0) return;
      copies.push(
        direction === 'to slot'
          ? { from: sessionBuffer, fromOffset: sessionOffset, to: slotBuffer, toOffset: slotOffset, size }
          : { from: slotBuffer, fromOffset: slotOffset, to: sessionBuffer, toOffset: sessionOffset, size },
      );
    };
    this.states.forEach((s, i) => {
      const own = sessionStates[i];
      if (s.conv && own.conv) {
        const ring = c.convKernel * d.convDim * ab;
        add(s.conv, own.conv, index * ring, 0, ring);
        const recurrent = c.linearValueHeads * c.linearKeyDim * c.linearValueDim * 4;
        add(s.recurrent!, own.recurrent!, index * recurrent, 0, recurrent);
      }
      if (s.keys && own.keys) {
        const head = this.capacity * c.headDim * ab;
        for (let g = 0; g < c.numKvHeads; g++) {
          const slotOffset = (index * c.numKvHeads + g) * head;
          add(s.keys, own.keys, slotOffset, g * head, length * c.headDim * ab);
          add(s.values!, own.values!, slotOffset, g * head, length * c.headDim * ab);
        }
      }
    });
    this.ctx.copy(copies, `states ${direction}`);
  }

  /** Asks for a decode step of `slot`; resolves once the step that carries it is submitted. */
  step(slot: BatchSlot, sampler: GpuSampler, signal?: AbortSignal): Promise<PendingToken> {
    throwIfAborted(signal);
    if (slot.position + 1 > this.capacity) throw new SessionError(`${slot.position + 1} tokens do not fit the context of ${this.capacity}`);
    return new Promise((resolve, reject) => {
      this.requests.push({ slot, sampler, resolve, reject });
      this.scheduleStep();
    });
  }

  /**
   * A step runs as soon as every decoding sequence has asked (at once, in a microtask). Otherwise those that have wait
   * while a step of one that has not is still on the GPU: that one asks once it has read its token, and one step then
   * serves them all, so sequences that began at different times fall into step instead of taking turns with steps of
   * their own. Once no step of theirs is on the GPU they go on the next turn of the event loop: a sequence busy
   * elsewhere (its consumer, a prefill) does not hold the others up.
   */
  private scheduleStep(): void {
    if (this.requests.length === 0) return;
    const asked = new Set(this.requests.map((r) => r.slot));
    const missing = [...this.decoding].filter((s) => !asked.has(s));
    if (missing.length === 0) {
      if (this.stepTimer !== undefined) clearTimeout(this.stepTimer);
      this.stepTimer = undefined;
      if (this.stepQueued) return;
      this.stepQueued = true;
      queueMicrotask(() => {
        this.stepQueued = false;
        void this.runStep();
      });
    } else if (missing.every((s) => s.stepsOnGpu === 0) && this.stepTimer === undefined && !this.stepQueued) {
      this.stepTimer = setTimeout(() => {
        this.stepTimer = undefined;
        void this.runStep();
      }, 0);
    }
  }

  private async runStep(): Promise<void> {
    if (this.stepping || this.requests.length === 0) return;
    const requests = this.requests;
    this.requests = [];
    this.stepping = true;
    try {
      const rows = Math.max(...requests.map((r) => r.slot.index)) + 1;
      const positions = new Uint32Array(rows).fill(SKIPPED_ROW);
      for (const r of requests) positions[r.slot.index] = r.slot.position;
      const picks = (
        await Promise.all(requests.map((r) => r.sampler.dispatches(this.act.logits, this.act.token, { logits: r.slot.index, out: r.slot.index })))
      ).flat();
      const results = requests.map((r) => resultRange(r.sampler));
      // No other step runs until this one is submitted (stepping), so the positions can be written now.
      this.ctx.write(this.act.positions, 0, positions);
      let result: Readback;
      if (this.experts) {
        const segments = await this.decodeSegmentsPlan(rows);
        const active = requests.map((r) => r.slot.index);
        await this.experts.forward(segments, { ids: this.act.moe!.ids, rows, active, tail: picks, label: 'decode batch' });
        result = this.ctx.submit([], 'decode batch', results);
      } else {
        const plan = await this.decodePlan(rows);
        result = this.ctx.submit([...plan, ...picks], 'decode batch', results);
      }
      this.lastStepRows = requests.length;
      this.stepsRun++;
      this.rowsRun += requests.length;
      for (const r of requests) r.slot.stepsOnGpu++;
      this.ctx
        .sync()
        .catch(() => {})
        .finally(() => {
          for (const r of requests) r.slot.stepsOnGpu--;
          this.scheduleStep();
        });
      let offset = 0;
      let unread = requests.length;
      const done = () => {
        if (--unread === 0) result.discard();
      };
      for (const r of requests) {
        r.slot.position += 1;
        const [at, size] = [offset, r.sampler.resultBytes];
        offset += Math.ceil(size / 4) * 4;
        let settled = false;
        r.resolve({
          read: async () => {
            settled = true;
            return r.sampler.parse((await result.bytes()).slice(at, at + size));
          },
          discard: () => {
            if (!settled) {
              settled = true;
              done();
            }
          },
        });
      }
    } catch (error) {
      for (const r of requests) r.reject(error);
    } finally {
      this.stepping = false;
      this.scheduleStep();
    }
  }

  /** The forward of `rows` decode rows and their logits, built once per row count... */
  private decodePlan(rows: number): Promise<Dispatch[]> {
    return this.decodePlans.plan(`${rows}`, async () => segmentDispatches(await this.decodeSegments(rows)));
  }

  /** ...or cut after each MoE layer's routing, for streamed experts. */
  private decodeSegmentsPlan(rows: number): Promise<ForwardSegment[]> {
    return this.decodeSegmentPlans.plan(`${rows}`, () => this.decodeSegments(rows));
  }

  private async decodeSegments(rows: number): Promise<ForwardSegment[]> {
    const tiled = this.tiledDecode;
    const segments = await forwardSegments(this.ctx, this.model, this.states, this.act, { tokens: rows, input: 'token', tiledDecode: tiled });
    const head = await lmHead(this.ctx, this.model, this.act, this.act.logits, tiled ? { first: 0, count: rows, tiled } : { decoded: rows });
    segments[segments.length - 1].dispatches.push(...head);
    return segments;
  }

  /** Marks a slot as no longer decoding (it ended, or starts over). */
  forget(slot: BatchSlot): void {
    this.decoding.delete(slot);
  }

  destroy(): void {
    this.decodePlans.clear();
    this.decodeSegmentPlans.clear();
    for (const slot of this.slots) slot.sampler.destroy();
    for (const s of this.states) this.ctx.free(s.conv, s.recurrent, s.keys, s.values);
    this.ctx.free(...this.act.buffers);
    this.prefillSession.destroy();
  }
}

const resultRange = (sampler: GpuSampler): ReadRange => ({ buffer: sampler.result, offset: 0, size: sampler.resultBytes });

/** One sequence of a Batch: the token loop drives it like a Session (prefill, then decode steps shared with the others). */
export class BatchSlot implements TokenSequence {
  /** Tokens of this sequence so far (the position of its next token). */
  position = 0;
  readonly runsAhead = true;
  /** Decode steps with this slot's row submitted and not yet done on the GPU (Batch.scheduleStep). */
  stepsOnGpu = 0;

  constructor(
    private readonly batch: Batch,
    readonly index: number,
    /** This sequence's sampler (penalty counts and RNG of its own). */
    readonly sampler: GpuSampler,
  ) {}

  reset(): void {
    this.position = 0;
    this.batch.forget(this);
  }

  async prefill(ids: ArrayLike<number>, options: { signal?: AbortSignal } = {}): Promise<void> {
    await this.batch.prefill(this, ids, undefined, options.signal);
  }

  async prefillAndPick(ids: ArrayLike<number>, sampler: GpuSampler, signal?: AbortSignal): Promise<PendingToken> {
    return (await this.batch.prefill(this, ids, sampler, signal))!;
  }

  advance(sampler: GpuSampler, signal?: AbortSignal): Promise<PendingToken> {
    return this.batch.step(this, sampler, signal);
  }

  get readbackMs(): number {
    return this.batch.ctx.readbackMs;
  }
}
