import type { Dispatch, GpuContext, ReadRange, Readback } from '../gpu/context.ts';
import { SessionError, throwIfAborted } from '../errors.ts';
import { StepParams, packParams } from '../gpu/kernel.ts';
import { PlanCache } from './plan_cache.ts';
import { type ForwardSegment, forward, forwardSegments, lmHead, residualNormed, segmentDispatches } from '../model/layers.ts';
import type { MoeWeights } from '../model/weights.ts';
import { matvec } from '../kernels/matvec.ts';
import { moeRoute } from '../kernels/moe_route.ts';
import { ExpertCache, type ExpertStats } from './expert_cache.ts';
import { type Model, hasHead } from '../model/model.ts';
import { dims } from '../model/config.ts';
import { type Activations, type LayerState, createActivations, createLayerStates, prefillChunk } from '../model/activations.ts';
import { GpuSampler, type SampledToken } from './sampler.ts';
import type { PendingToken, SpeculativeDecoder, TokenSequence } from './sequence.ts';

export interface SessionOptions {
  /** Tokens the session can hold (prompt + generated); bounded by max_position_embeddings and memory. */
  contextLength: number;
  /** Prefill chunk (tokens per forward call); defaults to what the adapter's binding limit allows, at most 512. */
  prefillChunk?: number;
  /** Rows of the longest verification of drafted tokens (`verify`): a pending token and its drafts; 0 (default): none. */
  verifyRows?: number;
}

/**
 * Prefill plans kept per kind (forward, LM head row, streamed segments): a prompt runs full chunks (one length) and
 * a last chunk of any length, so a few cover the full chunk and recent repeats; every other length builds a plan
 * again (a few ms) rather than keeping one per length seen, each holding a few hundred uniform buffers.
 */
const PREFILL_PLANS = 4;

const pendingToken = (sampler: GpuSampler, result: Readback): PendingToken => ({
  read: async () => sampler.parse(await result.bytes()),
  discard: () => result.discard(),
});

/**
 * One sequence on the GPU: the attention layers' KV cache, the DeltaNet layers' conv and recurrent states,
 * and the working buffers. Prefill takes any number of tokens (in chunks); decode steps take the token
 * the sampler left on the GPU, so a step reads back nothing but the sampled id.
 */
export class Session implements TokenSequence {
  /** Tokens processed so far (the position of the next token). */
  position = 0;
  /** Plans built once per session: decode, its LM head, the MoE read-ahead per layer (few, and used every step). */
  private readonly plans: PlanCache<Dispatch[]>;
  /** Plans per prefill chunk length, a few at a time. */
  private readonly prefillPlans: PlanCache<Dispatch[]>;
  private readonly logitsPlans: PlanCache<Dispatch[]>;
  private readonly segmentPlans: PlanCache<ForwardSegment[]>;
  private readonly prefillSegmentPlans: PlanCache<ForwardSegment[]>;
  /** Present when the model's experts are streamed (model.experts). */
  private readonly experts?: ExpertCache;
  /**
   * Where a kept verification's states pass on their way from its slots to the sequence's (a copy within one buffer is
   * not allowed); one for all layers, as the copies of one submission run in order. Allocated at the first.
   */
  private keepVia?: GPUBuffer;
  /** Speculative decoding on this session (runtime/speculation), when its model drafts. */
  speculator?: SpeculativeDecoder;
  /** Called after each prefill chunk with the ids and the chunk (a drafter follows the prompt: runtime/speculation). */
  chunkObserver?: (ids: ArrayLike<number>, first: number, rows: number) => Promise<void>;

  private constructor(
    readonly ctx: GpuContext,
    readonly model: Model,
    readonly capacity: number,
    readonly activations: Activations,
    private readonly states: LayerState[],
    /** Rows of the longest verification (SessionOptions.verifyRows). */
    readonly verifyRows: number,
  ) {
    this.experts = ExpertCache.of(ctx, model);
    const dispatches = (d: Dispatch[]) => d;
    this.plans = new PlanCache(ctx, Infinity, dispatches);
    this.prefillPlans = new PlanCache(ctx, PREFILL_PLANS, dispatches);
    this.logitsPlans = new PlanCache(ctx, PREFILL_PLANS, dispatches);
    this.segmentPlans = new PlanCache(ctx, Infinity, segmentDispatches);
    this.prefillSegmentPlans = new PlanCache(ctx, PREFILL_PLANS, segmentDispatches);
  }

  static create(ctx: GpuContext, model: Model, options: SessionOptions): Session {
    const capacity = options.contextLength;
    if (!Number.isInteger(capacity) || capacity < 1) throw new SessionError(`context length ${capacity} must be a positive integer`);
    if (capacity > model.config.maxPositions) {
      throw new SessionError(`context length ${capacity} is more than the model's max_position_embeddings ${model.config.maxPositions}`);
    }
    const chunk = Math.min(options.prefillChunk ?? prefillChunk(ctx, model), capacity);
    const verifyRows = options.verifyRows ?? 0;
    if (!Number.isInteger(verifyRows) || verifyRows < 0 || verifyRows > GpuSampler.resultRows)
      throw new SessionError(`verifyRows ${verifyRows} must be an integer in [0, ${GpuSampler.resultRows}] (the sampler's result rows)`);
    const states = createLayerStates(ctx, model, capacity, 1, verifyRows);
    try {
      // A verification's tokens and the targets picked for them share act.token: 2 · verifyRows rows.
      const act = createActivations(ctx, model, Math.max(chunk, 2 * verifyRows), capacity, Math.max(1, verifyRows), verifyRows);
      const session = new Session(ctx, model, capacity, act, states, verifyRows);
      session.reset();
      return session;
    } catch (error) {
      states.forEach((s) => ctx.free(s.conv, s.recurrent, s.keys, s.values));
      throw error;
    }
  }

  /** Back to an empty sequence: DeltaNet states zeroed (the KV cache is only read below the position). */
  reset(): void {
    const encoder = this.ctx.device.createCommandEncoder({ label: 'reset' });
    for (const s of this.states) {
      if (s.conv) encoder.clearBuffer(s.conv);
      if (s.recurrent) encoder.clearBuffer(s.recurrent);
    }
    this.ctx.device.queue.submit([encoder.finish()]);
    this.position = 0;
    this.experts?.resetStats();
  }

  /** The layers' states (a batch copies a prefilled sequence's into its slot). */
  get layerStates(): readonly LayerState[] {
    return this.states;
  }

  /** Expert streaming figures since the last reset (one generation), or undefined when every expert is resident. */
  expertStats(): ExpertStats | undefined {
    return this.experts?.stats();
  }

  /** The model's expert cache, when its experts are streamed. */
  get expertCache(): ExpertCache | undefined {
    return this.experts;
  }

  private forwardPlan(tokens: number, input: 'ids' | 'token'): Promise<Dispatch[]> {
    const build = () => forward(this.ctx, this.model, this.states, this.activations, { tokens, input });
    return input === 'token' ? this.plans.plan(`forward ${tokens} token`, build) : this.prefillPlans.plan(`${tokens}`, build);
  }

  private segmentsPlan(tokens: number, input: 'ids' | 'token'): Promise<ForwardSegment[]> {
    const build = () => forwardSegments(this.ctx, this.model, this.states, this.activations, { tokens, input });
    return input === 'token' ? this.segmentPlans.plan(`${tokens}`, build) : this.prefillSegmentPlans.plan(`${tokens}`, build);
  }

  /**
   * A verification of `rows` rows: the forward of this one sequence's decode rows and, on a model with the head, the LM
   * head on every row; cut after each MoE layer's routing (for expert streaming), or whole (`verifyPlan`).
   */
  private async verifySegments(rows: number): Promise<ForwardSegment[]> {
    const segments = await forwardSegments(this.ctx, this.model, this.states, this.activations, { tokens: rows, input: 'token', oneSequence: true });
    if (hasHead(this.model))
      segments[segments.length - 1].dispatches.push(...(await lmHead(this.ctx, this.model, this.activations, this.activations.logits, { decoded: rows })));
    return segments;
  }

  private verifySegmentsPlan(rows: number): Promise<ForwardSegment[]> {
    return this.segmentPlans.plan(`verify ${rows}`, () => this.verifySegments(rows));
  }

  /**
   * Decode prefetch: layer `layer`'s router applied to the current MoE input (the previous layer's: the residual
   * stream under that layer's post-attention norm), into row 1 of the router logits, and top-k over rows 0 and 1;
   * row 0's routing is recomputed bit for bit, row 1's ids are that layer's likely experts. They come back with
   * the chosen ids in the same readback.
   */
  private predictPlan(layer: number): Promise<Dispatch[]> {
    return this.plans.plan(`predict ${layer}`, async () => {
      const { numExperts: E, topk } = this.model.config.moe!;
      const m = this.activations.moe!;
      const w = this.model.weights.layers[layer].mlp as MoeWeights;
      const x = residualNormed(this.model, this.activations, this.model.weights.layers[layer - 1].postNorm);
      return [
        ...(await matvec(this.ctx, { w: w.router, x: x.buffer, norm: x.norm, input: 'f32', y: m.logits, yOffset: E + 1, output: 'f32', epilogue: 'store' })),
        await moeRoute(this.ctx, { logits: m.logits, tokens: 2, experts: E, topk, ids: m.ids, gates: m.gates }),
      ];
    });
  }

  /** A forward pass through the expert cache (ExpertCache.forward), with the next layer's experts read ahead on one decode row. */
  private runStreamed(cache: ExpertCache, segments: ForwardSegment[], rows: number, tail: Dispatch[], label: string, signal?: AbortSignal): Promise<void> {
    const ahead = rows === 1 && this.activations.maxTokens >= 2;
    return cache.forward(segments, {
      ids: this.activations.moe!.ids,
      rows,
      tail,
      label,
      signal,
      ...(ahead && { predict: (layer) => this.predictPlan(layer) }),
    });
  }

  /** Logits of row `row` of the last forward call into the logits buffer. */
  private lastLogitsPlan(row: number): Promise<Dispatch[]> {
    return this.logitsPlans.plan(`${row}`, () => lmHead(this.ctx, this.model, this.activations, this.activations.logits, { first: row, count: 1 }));
  }

  /** Logits of a decode step's token (the final norm folded in: a decode forward leaves no normed rows). */
  private decodedLogitsPlan(): Promise<Dispatch[]> {
    return this.plans.plan('logits decoded', () => lmHead(this.ctx, this.model, this.activations, this.activations.logits, { decoded: 1 }));
  }

  private ensureRoom(tokens: number): void {
    if (this.position + tokens > this.capacity) {
      throw new SessionError(`${this.position + tokens} tokens do not fit the session's context of ${this.capacity} (position ${this.position} + ${tokens})`);
    }
  }

  /** The position of the next token: the step uniform (prefill) and the one decode row's position. */
  private writeStep(): void {
    this.ctx.write(this.activations.step, 0, packParams(StepParams, { pos: this.position }));
    this.ctx.write(this.activations.positions, 0, Uint32Array.of(this.position));
  }

  /**
   * Runs `ids` through the model in chunks. After each chunk, `onChunk(first, rows)` may read the chunk's
   * final-normed hidden rows (activations.x) before the next chunk overwrites them. Leaves the logits of
   * the last token in activations.logits.
   */
  async prefill(ids: ArrayLike<number>, options: { signal?: AbortSignal; onChunk?: (first: number, rows: number) => Promise<void> } = {}): Promise<void> {
    if (ids.length === 0) throw new SessionError('prefill needs at least one token');
    this.ensureRoom(ids.length);
    const S = this.activations.maxTokens;
    for (let first = 0; first < ids.length; first += S) {
      throwIfAborted(options.signal);
      const rows = Math.min(S, ids.length - first);
      this.ctx.write(this.activations.ids, 0, this.tokenIds(ids, first, rows));
      this.writeStep();
      const last = first + rows === ids.length;
      const tail = last ? await this.lastLogitsPlan(rows - 1) : [];
      if (this.experts) await this.runStreamed(this.experts, await this.segmentsPlan(rows, 'ids'), rows, tail, 'prefill', options.signal);
      else this.ctx.run([...(await this.forwardPlan(rows, 'ids')), ...tail], 'prefill');
      this.position += rows;
      if (options.onChunk) await options.onChunk(first, rows);
      if (this.chunkObserver) await this.chunkObserver(ids, first, rows);
    }
  }

  /** One decode step on the token the last pick left on the GPU; leaves its logits in activations.logits. */
  async decode(signal?: AbortSignal): Promise<void> {
    this.ensureRoom(1);
    this.writeStep();
    if (this.experts) await this.runStreamed(this.experts, await this.segmentsPlan(1, 'token'), 1, await this.decodedLogitsPlan(), 'decode', signal);
    else this.ctx.run(await this.decodePlan(), 'decode');
    this.position += 1;
  }

  /**
   * Picks the next token from the current logits on the GPU, where the next decode step reads it; maps back
   * only the sampler's result (the id, plus logprobs when asked).
   */
  async sample(sampler: GpuSampler): Promise<SampledToken> {
    return (await this.pick(sampler)).read();
  }

  /** `prefill`, then `pick`. */
  async prefillAndPick(ids: ArrayLike<number>, sampler: GpuSampler, signal?: AbortSignal): Promise<PendingToken> {
    await this.prefill(ids, { signal });
    return this.pick(sampler);
  }

  /** `sample`, submitted but not yet read. */
  async pick(sampler: GpuSampler): Promise<PendingToken> {
    return pendingToken(
      sampler,
      this.ctx.submit(await sampler.dispatches(this.activations.logits, this.activations.token), 'sample', this.sampledResult(sampler)),
    );
  }

  /**
   * A decode step and the pick of the token after it, in one submission: returns once the work is submitted,
   * with the picked token still to be read. Nothing in between is read back (except per MoE layer when experts
   * are streamed), so a caller may submit the next step before reading this one's token: the GPU never waits for
   * the host between steps.
   */
  async advance(sampler: GpuSampler, signal?: AbortSignal): Promise<PendingToken> {
    if (this.experts) {
      await this.decode(signal);
      return this.pick(sampler);
    }
    this.ensureRoom(1);
    const dispatches = [...(await this.decodePlan()), ...(await sampler.dispatches(this.activations.logits, this.activations.token))];
    this.writeStep();
    const result = this.ctx.submit(dispatches, 'decode', this.sampledResult(sampler));
    this.position += 1;
    return pendingToken(sampler, result);
  }

  /** Whether steps can be submitted ahead of their tokens being read (no per-layer readback of expert ids). */
  get runsAhead(): boolean {
    return !this.experts;
  }

  get readbackMs(): number {
    return this.ctx.readbackMs;
  }

  /** Dispatches of one decode step without its sampling (bench figures). */
  async decodeDispatches(): Promise<number> {
    return this.experts
      ? (await this.segmentsPlan(1, 'token')).reduce((n, s) => n + s.dispatches.length + (s.experts?.dispatches.length ?? 0), 0)
      : (await this.decodePlan()).length;
  }

  /** Dispatches of a verification of `rows` rows without its picks (bench figures). */
  async verifyDispatches(rows: number): Promise<number> {
    return (await this.verifyPlan(rows)).length;
  }

  private decodePlan(): Promise<Dispatch[]> {
    return this.plans.plan('decode', async () => [...(await this.forwardPlan(1, 'token')), ...(await this.decodedLogitsPlan())]);
  }

  private sampledResult(sampler: GpuSampler) {
    return { buffer: sampler.result, offset: 0, size: sampler.resultBytes };
  }

  /**
   * A pipeline stage's part of one forward call (runtime/pipeline): `rows` tokens of this sequence from `position`
   * (prefill, or one decode step), taking token ids (the first stage) or the previous stage's hidden rows (the others,
   * f32 [rows, hidden]), and submitting what goes on: this stage's output rows (a stage before the last), or on the
   * last stage, when a sampler is given, the LM head on the last row and the pick (the sampler's result).
   */
  async stageStep(
    input: { ids: Uint32Array } | { hidden: Uint8Array },
    step: { position: number; rows: number; decode: boolean },
    sampler?: GpuSampler,
  ): Promise<Readback | undefined> {
    const { rows, decode } = step;
    const H = this.model.config.hiddenSize;
    if (this.experts) throw new SessionError('a pipeline stage keeps its experts resident');
    if (rows < 1 || rows > this.activations.maxTokens || (decode && rows !== 1))
      throw new SessionError(`a stage step of ${rows} rows (at most ${this.activations.maxTokens}; decode 1)`);
    this.position = step.position;
    this.ensureRoom(rows);
    if ('ids' in input) {
      if (input.ids.length !== rows) throw new SessionError(`${input.ids.length} ids for a step of ${rows} rows`);
      this.ctx.write(decode ? this.activations.token : this.activations.ids, 0, this.tokenIds(input.ids, 0, rows));
    } else {
      if (input.hidden.byteLength !== rows * H * 4) throw new SessionError(`${input.hidden.byteLength} bytes of hidden rows for ${rows} rows of ${H} f32`);
      this.ctx.write(this.activations.h, 0, input.hidden);
    }
    this.writeStep();
    const dispatches = await this.forwardPlan(rows, decode ? 'token' : 'ids');
    this.position += rows;
    if (!hasHead(this.model)) return this.ctx.submit(dispatches, 'stage', { buffer: this.activations.h, offset: 0, size: rows * H * 4 });
    if (!sampler) {
      this.ctx.run(dispatches, 'stage');
      return undefined;
    }
    const head = decode ? await this.decodedLogitsPlan() : await this.lastLogitsPlan(rows - 1);
    const pick = await sampler.dispatches(this.activations.logits, this.activations.token);
    return this.ctx.submit([...dispatches, ...head, ...pick], 'stage', this.sampledResult(sampler));
  }

  /**
   * Verifies drafted tokens in one forward pass: act.token rows [0, rows) hold the pending token (the last pick, not
   * yet run) and the drafts after it; they run at positions [position, position + rows) as decode rows of this one
   * sequence (the arithmetic of that many decode steps), and the sampler picks a target for each row into act.token
   * rows [rows, 2 · rows). `before` (the drafter's dispatches, which write the drafts) is submitted first, in the same
   * submission. The result maps back the rows and the targets (and with logprobs each pick's result: see
   * readVerification); `keepVerified` then keeps the rows that belong.
   */
  async verify(sampler: GpuSampler, rows: number, before: Dispatch[] = [], signal?: AbortSignal): Promise<Readback> {
    this.startVerify(rows);
    const picks = await this.targetPicks(sampler, rows);
    if (!this.experts) return this.ctx.submit([...before, ...(await this.verifyPlan(rows)), ...picks], 'verify', this.verifiedResult(sampler, rows));
    // Streamed experts: the pass goes layer by layer as a decode step does, reading back each MoE layer's choices.
    if (before.length > 0) this.ctx.run(before, 'draft');
    await this.runStreamed(this.experts, await this.verifySegmentsPlan(rows), rows, picks, 'verify', signal);
    return this.ctx.submit([], 'verify', this.verifiedResult(sampler, rows));
  }

  /**
   * A pipeline stage's part of a verification (runtime/pipeline): `rows` tokens of this sequence from `position`,
   * taking their ids (the first stage) or the previous stage's hidden rows, and submitting this stage's output rows,
   * or on the last stage, the targets picked for each row (act.token rows [rows, 2 · rows) of the readback).
   */
  async stageVerify(input: { ids: Uint32Array } | { hidden: Uint8Array }, position: number, rows: number, sampler?: GpuSampler): Promise<Readback> {
    if (this.experts) throw new SessionError('a pipeline stage keeps its experts resident');
    this.position = position;
    this.startVerify(rows);
    const act = this.activations;
    const H = this.model.config.hiddenSize;
    if ('ids' in input) {
      if (input.ids.length !== rows) throw new SessionError(`${input.ids.length} ids for a verification of ${rows} rows`);
      this.ctx.write(act.token, 0, this.tokenIds(input.ids, 0, rows));
    } else {
      if (input.hidden.byteLength !== rows * H * 4) throw new SessionError(`${input.hidden.byteLength} bytes of hidden rows for ${rows} rows of ${H} f32`);
      this.ctx.write(act.h, 0, input.hidden);
    }
    const plan = await this.verifyPlan(rows);
    if (!hasHead(this.model)) return this.ctx.submit(plan, 'stage verify', { buffer: act.h, offset: 0, size: rows * H * 4 });
    if (!sampler) throw new SessionError('the last stage verifies with a sampler');
    const picks = await this.targetPicks(sampler, rows);
    return this.ctx.submit([...plan, ...picks], 'stage verify', this.verifiedResult(sampler, rows));
  }

  /** Checks a verification of `rows` fits and writes the rows' positions. */
  private startVerify(rows: number): void {
    if (!Number.isInteger(rows) || rows < 1 || rows > this.verifyRows)
      throw new SessionError(`a verification of ${rows} rows (this session: at most ${this.verifyRows})`);
    this.ensureRoom(rows);
    this.ctx.write(
      this.activations.positions,
      0,
      Uint32Array.from({ length: rows }, (_, r) => this.position + r),
    );
  }

  /** The sampler's pick on each verified row's logits, into act.token rows [rows, 2 · rows) and result row r. */
  private async targetPicks(sampler: GpuSampler, rows: number): Promise<Dispatch[]> {
    const act = this.activations;
    const picks: Dispatch[] = [];
    for (let r = 0; r < rows; r++) picks.push(...(await sampler.dispatches(act.logits, act.token, { logits: r, out: rows + r, result: r })));
    return picks;
  }

  /** What a verification reads back (see readVerification): the rows and their targets, and with logprobs each pick's result. */
  private verifiedResult(sampler: GpuSampler, rows: number): ReadRange[] {
    const ranges: ReadRange[] = [{ buffer: this.activations.token, offset: 0, size: 2 * rows * 4 }];
    if (sampler.reportsLogprobs) ranges.push({ buffer: sampler.result, offset: 0, size: rows * GpuSampler.resultStride });
    return ranges;
  }

  /**
   * Keeps the first `kept` rows of the last verification of `rows` rows: the sequence goes on as if only they had run.
   * Per DeltaNet layer, the state after row kept − 1 becomes the sequence's, and the raw inputs of kept rows 1.. move
   * from their pending slots into the conv ring (row 0's are there already; dropped rows never wrote it). The KV cache
   * needs only the position.
   */
  keepVerified(rows: number, kept: number): void {
    if (!(kept >= 1 && kept <= rows)) throw new SessionError(`keeping ${kept} of ${rows} verified rows`);
    const c = this.model.config;
    const slot = c.linearValueHeads * c.linearKeyDim * c.linearValueDim * 4;
    const ringSlot = dims(c).convDim * this.ctx.activationBytes;
    const pending = (kept - 1) * ringSlot;
    this.keepVia ??= this.ctx.storage('kept verification', Math.max(slot, (this.verifyRows - 1) * ringSlot));
    const via = this.keepVia;
    const copies: Parameters<GpuContext['copy']>[0][number][] = [];
    for (const s of this.states) {
      if (!s.recurrent || !s.conv) continue;
      copies.push({ from: s.recurrent, fromOffset: kept * slot, to: via, size: slot }, { from: via, to: s.recurrent, size: slot });
      if (pending === 0) continue;
      copies.push({ from: s.conv, fromOffset: c.convKernel * ringSlot, to: via, size: pending });
      for (let r = 1; r < kept; r++) {
        const offset = ((this.position + r) % c.convKernel) * ringSlot;
        copies.push({ from: via, fromOffset: (r - 1) * ringSlot, to: s.conv, toOffset: offset, size: ringSlot });
      }
    }
    if (copies.length > 0) this.ctx.copy(copies, 'keep verified');
    this.position += kept;
  }

  private verifyPlan(rows: number): Promise<Dispatch[]> {
    return this.plans.plan(`verify ${rows}`, async () => segmentDispatches(await this.verifySegments(rows)));
  }

  /** ids[first, first + count) as u32, each checked to be a row of the embedding. */
  private tokenIds(ids: ArrayLike<number>, first: number, count: number): Uint32Array {
    const vocab = this.model.config.vocabSize;
    return Uint32Array.from({ length: count }, (_, i) => {
      const id = ids[first + i];
      if (!Number.isInteger(id) || id < 0 || id >= vocab)
        throw new SessionError(`token id ${id} at index ${first + i} is outside the vocabulary (0..${vocab - 1})`);
      return id;
    });
  }

  /** Puts a token chosen on the CPU where the next decode step reads it. */
  feed(id: number): void {
    if (!Number.isInteger(id) || id < 0 || id >= this.model.config.vocabSize) throw new SessionError(`token id ${id} is outside the vocabulary`);
    this.ctx.write(this.activations.token, 0, Uint32Array.of(id));
  }

  destroy(): void {
    this.speculator?.destroy();
    this.ctx.free(this.keepVia);
    for (const plans of [this.plans, this.prefillPlans, this.logitsPlans, this.segmentPlans, this.prefillSegmentPlans]) plans.clear();
    for (const s of this.states) this.ctx.free(s.conv, s.recurrent, s.keys, s.values);
    this.ctx.free(...this.activations.buffers);
  }
}
