import { ContractError, RequestError } from '../errors.ts';
import type { Dispatch, GpuContext } from '../gpu/context.ts';
import { memoise } from '../gpu/memo.ts';
import {
  SAMPLE_MAX_LOGPROBS,
  SAMPLE_RESULT_ROWS,
  SAMPLE_RESULT_WORDS,
  type SampleOptionValues,
  type SampleScratch,
  createSampleScratch,
  sample,
  sampleLevels,
  sampleUncount,
  writeDropped,
  writeSampleOptions,
} from '../kernels/sample.ts';

export interface SamplingOptions {
  /** Default 1; 0 → greedy (argmax of the penalised logits, ties → lowest id). */
  temperature?: number;
  /** 0 or undefined = off. */
  topK?: number;
  /** 1 or undefined = off. */
  topP?: number;
  /** 0 or undefined = off (keep p ≥ minP · p_max). */
  minP?: number;
  /** 1 = off. HF: for ids seen in prompt + generated: logit > 0 ? logit / r : logit · r. */
  repetitionPenalty?: number;
  /** 0 = off. OpenAI: logit -= presence for ids seen in the generated tokens. */
  presencePenalty?: number;
  /** 0 = off. OpenAI: logit -= frequency · count in the generated tokens. */
  frequencyPenalty?: number;
  /** Same seed + same options → same tokens on the same adapter. Default: a random seed per request. */
  seed?: number;
  /** 0/undefined = none; n ≥ 1: the chosen token's logprob and the top n alternatives (n ≤ 20). */
  logprobs?: number;
}

export interface SampledToken {
  id: number;
  logprob?: number;
  top?: { id: number; logprob: number }[];
}

function fail(message: string): never {
  throw new ContractError(message, 'sampler');
}

function finite(name: keyof SamplingOptions, v: number | undefined, fallback: number): number {
  if (v === undefined) return fallback;
  if (typeof v !== 'number' || !Number.isFinite(v)) invalid(name, `${String(v)} must be a finite number`);
  return v;
}

const invalid = (field: keyof SamplingOptions, message: string): never => {
  throw new RequestError(message, field);
};

/**
 * Checks sampling options and resolves their defaults, touching nothing on the GPU: callers validate a
 * request with it before they wait for the session. Errors are RequestErrors naming the option.
 */
export function resolveSampling(options: SamplingOptions, tokenizerSize: number): SampleOptionValues {
  const temperature = finite('temperature', options.temperature, 1);
  if (temperature < 0) invalid('temperature', `${temperature} must be ≥ 0 (0 = greedy)`);
  const topK = finite('topK', options.topK, 0);
  if (!Number.isInteger(topK) || topK < 0) invalid('topK', `${topK} must be a non-negative integer (0 = off)`);
  const topP = finite('topP', options.topP, 1);
  if (!(topP > 0 && topP <= 1)) invalid('topP', `${topP} must be in (0, 1] (1 = off)`);
  const minP = finite('minP', options.minP, 0);
  if (!(minP >= 0 && minP <= 1)) invalid('minP', `${minP} must be in [0, 1] (0 = off)`);
  const repetition = finite('repetitionPenalty', options.repetitionPenalty, 1);
  if (!(repetition > 0)) invalid('repetitionPenalty', `${repetition} must be > 0 (1 = off)`);
  const presence = finite('presencePenalty', options.presencePenalty, 0);
  const frequency = finite('frequencyPenalty', options.frequencyPenalty, 0);
  const seed = options.seed === undefined ? Math.floor(Math.random() * 2 ** 32) : finite('seed', options.seed, 0);
  if (!Number.isInteger(seed)) invalid('seed', `${seed} must be an integer`);
  const logprobs = finite('logprobs', options.logprobs, 0);
  const maxLogprobs = Math.min(SAMPLE_MAX_LOGPROBS, tokenizerSize);
  if (!Number.isInteger(logprobs) || logprobs < 0 || logprobs > maxLogprobs) invalid('logprobs', `${logprobs} must be an integer in [0, ${maxLogprobs}]`);
  return {
    greedy: temperature === 0 ? 1 : 0,
    temperature: temperature === 0 ? 1 : temperature,
    // A top-k of at least every candidate keeps everything: off.
    top_k: topK >= tokenizerSize ? 0 : topK,
    top_p: topP,
    min_p: minP,
    repetition,
    presence,
    frequency,
    seed: ((seed % 2 ** 32) + 2 ** 32) % 2 ** 32,
    logprobs,
  };
}

/**
 * Chooses each next token on the GPU: penalties → temperature → top-k → top-p → min-p → a draw from the
 * renormalised survivors with a counter-based RNG (hash of seed and step). Greedy is temperature 0 on the
 * same passes. The chosen id goes to `out` (the next decode step's input) and to `result`, the one buffer a
 * step reads back. Logprobs are log_softmax of the penalised, temperature-scaled logits (T = 0: unscaled)
 * before any filter. See src/kernels/sample.ts for the passes.
 */
export class GpuSampler {
  private readonly plans = new Map<GPUBuffer, Map<GPUBuffer, Map<string, Promise<Dispatch[]>>>>();
  /** CPU copy of scratch.seen: prompt bits and forced counts of the current request. */
  private readonly seen: Uint32Array;
  private logprobs = 0;
  /** Whether the current request's penalties read the counts of picked tokens. */
  private penalised = false;
  private uncount?: Promise<Dispatch>;
  /** Search levels of the current request (undefined before begin). */
  private levels: number[] | undefined;
  /**
   * The current request as `begin` and `markGenerated` saw it, its seed drawn: what a pipeline's last stage replays on
   * a sampler of its own (runtime/pipeline). `serial` changes with every begin.
   */
  request?: { serial: number; options: SamplingOptions; promptIds: number[]; forced: number[] };
  private static serials = 0;

  private constructor(
    readonly ctx: GpuContext,
    readonly vocabSize: number,
    readonly tokenizerSize: number,
    /** The kernels' buffers (tests read scratch.z and scratch.counts). */
    readonly scratch: SampleScratch,
  ) {
    this.seen = new Uint32Array(tokenizerSize);
  }

  /** vocabSize = logits rows; ids ≥ tokenizerSize (padding rows) are never sampled. */
  static create(ctx: GpuContext, opts: { vocabSize: number; tokenizerSize: number }): GpuSampler {
    const { vocabSize, tokenizerSize } = opts;
    if (!Number.isInteger(vocabSize) || vocabSize < 1) fail(`vocabSize = ${vocabSize} must be a positive integer`);
    if (!Number.isInteger(tokenizerSize) || tokenizerSize < 1 || tokenizerSize > vocabSize) {
      fail(`tokenizerSize = ${tokenizerSize} must be an integer in [1, vocabSize = ${vocabSize}]`);
    }
    return new GpuSampler(ctx, vocabSize, tokenizerSize, createSampleScratch(ctx, vocabSize, tokenizerSize));
  }

  /** The one buffer a step maps back. */
  get result(): GPUBuffer {
    return this.scratch.result;
  }

  /** Bytes of `result` a step reads: 4 without logprobs, 8 + 8n with n alternatives. */
  get resultBytes(): number {
    return this.logprobs > 0 ? 8 + 8 * this.logprobs : 4;
  }

  /** Bytes from one row of `result` to the next (picks with `rows.result`). */
  static readonly resultStride = SAMPLE_RESULT_WORDS * 4;
  static readonly resultRows = SAMPLE_RESULT_ROWS;

  /** Whether the current request reports logprobs (more than the id comes back). */
  get reportsLogprobs(): boolean {
    return this.logprobs > 0;
  }

  /**
   * Starts a request: validates the options, writes them to the GPU once, resets the RNG step and the penalty
   * counts, and marks the prompt ids as seen (repetition penalty covers prompt + generated; presence and
   * frequency only generated tokens).
   */
  begin(options: SamplingOptions, promptIds: ArrayLike<number>): void {
    const n = this.tokenizerSize;
    const values = resolveSampling(options, n);
    const logprobs = values.logprobs;
    const prompt = Array.from(promptIds);
    prompt.forEach((id, i) => this.checkId(id, `promptIds[${i}]`));

    writeSampleOptions(this.ctx, this.scratch, values);
    this.seen.fill(0);
    // Padding ids (≥ tokenizerSize) are never candidates, so they need no mark.
    for (const id of prompt) if (id < n) this.seen[id] = 0x80000000;
    this.ctx.write(this.scratch.seen, 0, this.seen);
    const encoder = this.ctx.device.createCommandEncoder({ label: 'sampler begin' });
    encoder.clearBuffer(this.scratch.counts);
    encoder.clearBuffer(this.scratch.state);
    this.ctx.device.queue.submit([encoder.finish()]);
    this.logprobs = logprobs;
    this.penalised = values.repetition !== 1 || values.presence !== 0 || values.frequency !== 0;
    this.levels = sampleLevels(values);
    this.request = { serial: ++GpuSampler.serials, options: { ...options, seed: values.seed }, promptIds: prompt, forced: [] };
  }

  /**
   * Dispatches that choose the next token from logits row `rows.logits` ([rows, vocabSize] f32; default 0) into
   * out[rows.out] (u32; default 0) and into row `rows.result` of `result` (default 0), count it for the penalties
   * and advance the RNG step. Call after begin: passes of filters the request leaves off are not included. Cached:
   * the same (logits, out, rows) and the same enabled filters (top-k, top-p, greedy) give the same Dispatch objects.
   */
  async dispatches(logits: GPUBuffer, out: GPUBuffer, rows: { logits?: number; out?: number; result?: number } = {}): Promise<Dispatch[]> {
    const levels = this.levels;
    if (!levels) fail('dispatches before begin');
    const logitsRow = rows.logits ?? 0;
    const outRow = rows.out ?? 0;
    const resultRow = rows.result ?? 0;
    if (logits.size < (logitsRow + 1) * this.vocabSize * 4)
      fail(`logits (${logits.label}) holds ${logits.size} bytes, fewer than row ${logitsRow} of vocabSize ${this.vocabSize} f32`);
    let byOut = this.plans.get(logits);
    if (!byOut) this.plans.set(logits, (byOut = new Map()));
    let byLevels = byOut.get(out);
    if (!byLevels) byOut.set(out, (byLevels = new Map()));
    return memoise(byLevels, `${logitsRow} ${outRow} ${resultRow}: ${levels.join(',')}`, () =>
      sample(this.ctx, { logits, out, scratch: this.scratch, levels, logitsRow, outRow, resultRow }),
    );
  }

  /**
   * Takes back picks of `ids` (a verification's rows that were not kept) from the counts the penalties read, so
   * that the next pick is penalised as step-by-step decoding penalises it. Nothing to do without penalties.
   */
  async unpick(ids: readonly number[]): Promise<void> {
    if (!this.levels) fail('unpick before begin');
    if (ids.length === 0 || !this.penalised) return;
    writeDropped(this.ctx, this.scratch, ids);
    this.uncount ??= sampleUncount(this.ctx, { scratch: this.scratch });
    this.ctx.run([await this.uncount], 'sampler unpick');
  }

  /**
   * Sets the RNG step to `draws`, the tokens this request has picked so far: after a verification, whose picks for
   * rows it did not keep must not count, so that the next draw is the one a step-by-step generation makes.
   */
  setDraws(draws: number): void {
    this.ctx.write(this.scratch.state, 0, Uint32Array.of(draws));
  }

  /** Tokens forced by the engine (e.g. `</think>` after a reasoning budget) still count as generated. */
  markGenerated(ids: ArrayLike<number>): void {
    if (!this.levels) fail('markGenerated before begin');
    const touched = new Set<number>();
    Array.from(ids).forEach((id, i) => {
      this.checkId(id, `ids[${i}]`);
      if (id >= this.tokenizerSize) return;
      if ((this.seen[id] & 0x7fffffff) === 0x7fffffff) fail(`id ${id} was forced too often`);
      this.seen[id] += 1;
      touched.add(id);
    });
    this.request?.forced.push(...Array.from(ids));
    // The GPU owns the sampled counts; the forced ones live in `seen`, written word by word.
    for (const id of touched) this.ctx.write(this.scratch.seen, id * 4, this.seen.subarray(id, id + 1));
  }

  /** The pick whose result row starts at byte `offset` of `bytes` (a readback of `result`). */
  parse(bytes: ArrayBuffer, offset = 0): SampledToken {
    if (bytes.byteLength < offset + this.resultBytes) fail(`result has ${bytes.byteLength - offset} bytes, ${this.resultBytes} expected`);
    const u = new Uint32Array(bytes, offset, this.resultBytes / 4);
    const f = new Float32Array(bytes, offset, this.resultBytes / 4);
    if (this.logprobs === 0) return { id: u[0] };
    return {
      id: u[0],
      logprob: f[1],
      top: Array.from({ length: this.logprobs }, (_, k) => ({ id: u[2 + 2 * k], logprob: f[3 + 2 * k] })),
    };
  }

  destroy(): void {
    for (const byOut of this.plans.values()) {
      for (const byLevels of byOut.values())
        for (const plan of byLevels.values())
          plan.then(
            (d) => this.ctx.release(d),
            () => {},
          );
    }
    this.plans.clear();
    this.uncount?.then(
      (d) => this.ctx.release([d]),
      () => {},
    );
    this.ctx.free(...this.scratch.buffers);
  }

  private checkId(id: number, what: string): void {
    if (!Number.isInteger(id) || id < 0 || id >= this.vocabSize) fail(`${what} = ${id} is outside the vocabulary (0..${this.vocabSize - 1})`);
  }
}
