import type { Dispatch, GpuContext } from '../gpu/context.ts';
import { SessionError, throwIfAborted } from '../gpu/errors.ts';
import { StepParams, packParams } from '../gpu/kernel.ts';
import { forward, lmHead } from '../model/layers.ts';
import type { Model } from '../model/load.ts';
import { type Activations, type LayerState, createActivations, createLayerStates, prefillChunk } from '../model/activations.ts';
import type { GpuSampler, SampledToken } from './sampler.ts';

export interface SessionOptions {
  /** Tokens the session can hold (prompt + generated); bounded by max_position_embeddings and memory. */
  contextLength: number;
  /** Prefill chunk (tokens per forward call); defaults to what the adapter's binding limit allows, at most 512. */
  prefillChunk?: number;
}

/**
 * One sequence on the GPU: the attention layers' KV cache, the DeltaNet layers' conv and recurrent states,
 * and the working buffers. Prefill takes any number of tokens (in chunks); decode steps take the token
 * the sampler left on the GPU, so a step reads back nothing but the sampled id.
 */
export class Session {
  /** Tokens processed so far (the position of the next token). */
  position = 0;
  private readonly plans = new Map<string, Promise<Dispatch[]>>();

  private constructor(
    readonly ctx: GpuContext,
    readonly model: Model,
    readonly capacity: number,
    readonly activations: Activations,
    private readonly states: LayerState[],
  ) {}

  static create(ctx: GpuContext, model: Model, options: SessionOptions): Session {
    const capacity = options.contextLength;
    if (!Number.isInteger(capacity) || capacity < 1) throw new SessionError(`context length ${capacity} must be a positive integer`);
    if (capacity > model.config.maxPositions) {
      throw new SessionError(`context length ${capacity} is more than the model's max_position_embeddings ${model.config.maxPositions}`);
    }
    const chunk = Math.min(options.prefillChunk ?? prefillChunk(ctx, model), capacity);
    const states = createLayerStates(ctx, model, capacity);
    try {
      const session = new Session(ctx, model, capacity, createActivations(ctx, model, chunk, capacity), states);
      session.reset();
      return session;
    } catch (error) {
      states.forEach((s) => [s.conv, s.recurrent, s.keys, s.values].forEach((b) => b?.destroy()));
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
  }

  private cached(key: string, build: () => Promise<Dispatch[]>): Promise<Dispatch[]> {
    let plan = this.plans.get(key);
    if (!plan) {
      plan = build();
      this.plans.set(key, plan);
      plan.catch(() => this.plans.delete(key));
    }
    return plan;
  }

  private forwardPlan(tokens: number, input: 'ids' | 'token'): Promise<Dispatch[]> {
    return this.cached(`forward ${tokens} ${input}`, () => forward(this.ctx, this.model, this.states, this.activations, { tokens, input }));
  }

  /** Logits of row `row` of the last forward call into the logits buffer. */
  private lastLogitsPlan(row: number): Promise<Dispatch[]> {
    return this.cached(`logits ${row}`, () => lmHead(this.ctx, this.model, this.activations, row, 1, this.activations.logits));
  }

  private ensureRoom(tokens: number): void {
    if (this.position + tokens > this.capacity) {
      throw new SessionError(`${this.position + tokens} tokens do not fit the session's context of ${this.capacity} (position ${this.position} + ${tokens})`);
    }
  }

  private writeStep(): void {
    this.ctx.write(this.activations.step, 0, packParams(StepParams, { pos: this.position }));
  }

  /**
   * Runs `ids` through the model in chunks. After each chunk, `onChunk(first, rows)` may read the chunk's
   * final-normed hidden rows (activations.x) before the next chunk overwrites them. Leaves the logits of
   * the last token in activations.logits.
   */
  async prefill(
    ids: ArrayLike<number>,
    options: { signal?: AbortSignal; onChunk?: (first: number, rows: number) => Promise<void> } = {},
  ): Promise<void> {
    if (ids.length === 0) throw new SessionError('prefill needs at least one token');
    this.ensureRoom(ids.length);
    const vocab = this.model.config.vocabSize;
    const S = this.activations.maxTokens;
    for (let first = 0; first < ids.length; first += S) {
      throwIfAborted(options.signal);
      const rows = Math.min(S, ids.length - first);
      const chunk = Uint32Array.from({ length: rows }, (_, i) => {
        const id = ids[first + i];
        if (!Number.isInteger(id) || id < 0 || id >= vocab) throw new SessionError(`token id ${id} at index ${first + i} is outside the vocabulary (0..${vocab - 1})`);
        return id;
      });
      this.ctx.write(this.activations.ids, 0, chunk);
      this.writeStep();
      const last = first + rows === ids.length;
      this.ctx.run([...(await this.forwardPlan(rows, 'ids')), ...(last ? await this.lastLogitsPlan(rows - 1) : [])], 'prefill');
      this.position += rows;
      if (options.onChunk) await options.onChunk(first, rows);
    }
  }

  /** One decode step on the token the last pick left on the GPU; leaves its logits in activations.logits. */
  async decode(): Promise<void> {
    this.ensureRoom(1);
    this.writeStep();
    this.ctx.run([...(await this.forwardPlan(1, 'token')), ...(await this.lastLogitsPlan(0))], 'decode');
    this.position += 1;
  }

  /**
   * Picks the next token from the current logits on the GPU, where the next decode step reads it; maps back
   * only the sampler's result (the id, plus logprobs when asked).
   */
  async sample(sampler: GpuSampler): Promise<SampledToken> {
    this.ctx.run(await sampler.dispatches(this.activations.logits, this.activations.token), 'sample');
    return sampler.parse(await this.ctx.read(sampler.result, 0, sampler.resultBytes));
  }

  /** Puts a token chosen on the CPU where the next decode step reads it. */
  feed(id: number): void {
    if (!Number.isInteger(id) || id < 0 || id >= this.model.config.vocabSize) throw new SessionError(`token id ${id} is outside the vocabulary`);
    this.ctx.write(this.activations.token, 0, Uint32Array.of(id));
  }

  destroy(): void {
    for (const s of this.states) [s.conv, s.recurrent, s.keys, s.values].forEach((b) => b?.destroy());
    this.activations.buffers.forEach((b) => b.destroy());
  }
}
