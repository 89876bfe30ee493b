import type { GpuContext } from '../gpu/context.ts';
import { AbortError, RequestError, SessionError } from '../errors.ts';
import type { WeightDtype } from '../gpu/tensor.ts';
import { type LoadProgress, loadModel } from '../model/load.ts';
import type { Model } from '../model/model.ts';
import { Session, type SessionOptions } from '../runtime/session.ts';
import { Batch, MATVEC_DECODE_ROWS, decodesTiled } from '../runtime/batch.ts';
import type { TokenSequence } from '../runtime/sequence.ts';
import type { StagePool } from '../runtime/pipeline/stage_pool.ts';
import type { LayerRange } from '../model/tensors.ts';
import { stateBytes } from '../model/activations.ts';
import type { ExpertStats, ExpertTotals } from '../runtime/expert_cache.ts';
import { GpuSampler, type SamplingOptions, resolveSampling } from '../runtime/sampler.ts';
import type { Checkpoint } from '../formats/checkpoint.ts';
import { type ChatMessage, type ToolDefinition, renderChat } from '../text/chat_template.ts';
import { Tokenizer } from '../text/tokenizer.ts';
import { chatChunks, collectChat, completionChunks } from './chat.ts';
import { type GenerationPlan, type IdsResult, generateIds } from '../runtime/generation.ts';
import { DEFAULT_DRAFT_TOKENS, DEFAULT_DRAFT_VOCAB, MAX_DRAFT_TOKENS, MtpDrafter, type SpeculationStats, withSpeculation } from '../runtime/speculation.ts';
import { scoreIds } from '../runtime/score.ts';
import { AloneSequence } from '../runtime/alone_sequence.ts';
import type {
  ChatCompletion,
  ChatCompletionChunk,
  ChatCompletionRequest,
  Completion,
  CompletionChunk,
  CompletionRequest,
  Reasoning,
  SamplingRequest,
  TokenLogprob,
} from './types.ts';

export interface EngineOptions {
  /**
   * How matrices are held on the GPU (default f16 with shader-f16, else f32; a packed model keeps its own, and a GGUF
   * of fewer than 6 bits per weight loads as INT4: LoadOptions.dtypeGiven).
   */
  dtype?: WeightDtype;
  /** Tokens a request may span (prompt + completion). Default: 4096, or less when the model allows less. */
  contextLength?: number;
  /** Whether `dtype` was the caller's choice rather than a default (the CLI says which). */
  dtypeGiven?: boolean;
  /** Check a packed model's sha256 sums before loading it. */
  verify?: boolean;
  /**
   * Bytes of GPU memory that MoE expert weights may occupy. Experts beyond it stay in the (packed) weight
   * source and are streamed in as routing asks for them (src/runtime/expert_cache.ts; evicted by a
   * frequency-weighted policy). Default: every expert is resident. Dense models ignore it.
   */
  expertCacheBytes?: number;
  /**
   * Sequences that decode together in one step (continuous batching; default 1: requests run one after another).
   * Every request is a sequence of its own; those past maxBatch wait for a free one.
   */
  maxBatch?: number;
  /** A batch's decode projections through the tiled matmul (true) or matvec (false); default: by slots (BatchOptions.tiledDecode). */
  tiledDecode?: boolean;
  /** Prompt tokens per forward call (default: what the adapter's binding limit allows, at most 512); with a batch, decode steps run between chunks. */
  prefillChunk?: number;
  /**
   * Speculative decoding with the model's multi-token-prediction block (runtime/speculation.ts): it drafts
   * `draftTokens` tokens, one forward pass verifies them, and the output stays exactly what decoding step by step
   * gives. Default: on where it pays — a GPU adapter (on CPU adapters a verification costs about as much as the
   * steps it replaces), every expert resident, a checkpoint with an MTP block — for a request that runs alone: with
   * maxBatch 1 every request; with a batch, one that finds no other running, which speculates in a session of its
   * own beside the batch (one sequence more than maxBatch) and moves into a free slot of the batch once others decode
   * there (runtime/alone_sequence.ts) — where the batch decodes through matvec (see tiledDecode), so that either way
   * its rows get the same arithmetic. With experts streamed, `true` speculates too: the block's own experts stay
   * resident, beside expertCacheBytes, and a verification streams the experts of all its rows.
   */
  mtp?: boolean;
  /** Drafts per verification pass, 1 to 3 (default 2). */
  draftTokens?: number;
  /**
   * Drafts come from ids [0, draftVocab) (default 32,768, runtime/speculation.ts DEFAULT_DRAFT_VOCAB; 0: every id):
   * the drafter's LM head reads only those rows. How many drafts are accepted depends on it, the output never.
   */
  draftVocab?: number;
  /** Stage 0 of a pipeline: load only these layers (the embedding and the first ones; model/tensors.ts LayerRange)... */
  layers?: LayerRange;
  /** ...and run requests through the other stages with the pool this makes (runtime/pipeline; maxBatch sequences in flight). */
  pipeline?: (model: Model, sizes: { contextLength: number; slots: number }) => Promise<StagePool>;
  onProgress?: (p: LoadProgress) => void;
  signal?: AbortSignal;
}

/**
 * Whether the Engine's batch (maxBatch above 1) decodes through the tiled matmul: its rows' arithmetic is then not
 * a sequence's alone, so a request could not speculate beside it and still get the tokens it gets in the batch.
 */
const tiledBatch = (ctx: GpuContext, engine: EngineOptions): boolean =>
  (engine.maxBatch ?? 1) > 1 && decodesTiled(ctx.caps, engine.maxBatch ?? 1, engine.tiledDecode);

/** How a speculating sequence drafts: tokens per pass, from ids [0, vocab) (0: every id). */
interface Drafts {
  tokens: number;
  vocab: number;
}

/**
 * How the Engine's sequences draft when it speculates (EngineOptions.mtp, or by default where it pays), else
 * undefined; speculation asked for where it cannot run is an error.
 */
function draftsOf(ctx: GpuContext, model: Model, engine: EngineOptions): Drafts | undefined {
  const tokens = engine.draftTokens ?? DEFAULT_DRAFT_TOKENS;
  const vocab = engine.draftVocab ?? DEFAULT_DRAFT_VOCAB;
  if (!Number.isInteger(vocab) || vocab < 0) throw new RequestError(`must be a non-negative integer (0: every id), got ${vocab}`, 'draftVocab');
  const why = !model.weights.mtp
    ? 'the checkpoint has no MTP block (mtp.* tensors)'
    : !Number.isInteger(tokens) || tokens < 1 || tokens > MAX_DRAFT_TOKENS
      ? `draftTokens ${tokens} is not an integer from 1 to ${MAX_DRAFT_TOKENS}`
      : tiledBatch(ctx, engine)
        ? `a batch of ${engine.maxBatch} decodes through the tiled matmul, whose rows are not a sequence's arithmetic alone (maxBatch ${MATVEC_DECODE_ROWS} or less, or tiledDecode false, decodes through matvec)`
        : undefined;
  if (engine.mtp === true && why) throw new RequestError(`speculative decoding is not possible: ${why}`, why.startsWith('draftTokens') ? 'draftTokens' : 'mtp');
  return why || !(engine.mtp ?? !ctx.caps.cpu) ? undefined : { tokens, vocab };
}

/** A session of its own that speculates as `drafts` says. */
function speculatingSession(ctx: GpuContext, model: Model, options: SessionOptions, drafts: Drafts): Session {
  const session = Session.create(ctx, model, { ...options, verifyRows: drafts.tokens + 1 });
  return withSpeculation(session, drafts.tokens, new MtpDrafter(session, drafts.tokens, drafts.vocab));
}

/** The speculation figures of every sequence that speculates, summed (undefined when none does). */
function speculationTotals(sequences: readonly TokenSequence[]): SpeculationStats | undefined {
  const totals = sequences.flatMap((s) => (s.speculator ? [s.speculator.totals] : []));
  if (totals.length === 0) return undefined;
  return totals.reduce((sum, t) => ({ passes: sum.passes + t.passes, drafted: sum.drafted + t.drafted, accepted: sum.accepted + t.accepted }), {
    passes: 0,
    drafted: 0,
    accepted: 0,
  });
}

/** What a server reports of the engine: requests decoding and waiting, the last step's batch, and state memory. */
export interface EngineGauges {
  running: number;
  waiting: number;
  maxBatch: number;
  /** Sequences in the last decode step. */
  batchSize: number;
  /** Bytes of KV cache and DeltaNet state held by running sequences, and allocated in all. */
  stateBytesUsed: number;
  stateBytesTotal: number;
  /** Speculative decoding since the engine loaded (verification passes, drafts, drafts accepted), when it speculates. */
  speculation?: SpeculationStats;
  /** Expert streaming since the engine loaded, when its experts are streamed. */
  experts?: ExpertTotals;
}

export interface RenderedPrompt {
  text: string;
  ids: number[];
  /** The prompt leaves a `<think>` block open. */
  thinking: boolean;
}

/** A sequence to generate on, held until `release`: the Engine's one Session in turn, or a slot of its batch. */
interface Lease {
  sequence: TokenSequence;
  sampler: GpuSampler;
  release(): void;
}

/** A checked request, to be run on whichever sequence it gets. */
type Generation<T> = (sequence: TokenSequence, sampler: GpuSampler) => AsyncGenerator<T>;

/** How an Engine runs requests beside its one session: a batch (and a session for a request alone), or pipeline stages. */
interface Lanes {
  batch?: Batch;
  /** With a batch, where speculation pays: the sequence (speculating) that a request takes when no other runs. */
  alone?: AloneSequence;
  pipeline?: StagePool;
}

/**
 * A loaded model behind the OpenAI-shaped API: `chat.completions.create` and `completions.create`, streamed or
 * not. With maxBatch 1 one session serves requests one at a time, in the order they arrive; with more, up to
 * maxBatch requests decode together (runtime/batch.ts) and the others wait for a slot in that order. A batch
 * decodes step by step; where speculative decoding is on, a request that finds no other running takes a session of
 * its own beside the batch and speculates there until others decode in the batch, then moves into a free slot.
 */
export class Engine {
  private queue: Promise<unknown> = Promise.resolve();
  private running = 0;
  private waiting = 0;
  /** The sampler of the Engine's own session (maxBatch 1), or of the session for a request alone. */
  private readonly sampler?: GpuSampler;
  private readonly batch?: Batch;
  private readonly alone?: AloneSequence;
  private aloneTaken = false;
  private readonly pipeline?: StagePool;

  readonly chat = {
    completions: {
      create: ((request: ChatCompletionRequest) => (request.stream ? this.streamChat(request) : this.completeChat(request))) as {
        (request: ChatCompletionRequest & { stream: true }): Promise<AsyncIterable<ChatCompletionChunk>>;
        (request: ChatCompletionRequest & { stream?: false }): Promise<ChatCompletion>;
      },
    },
  };

  readonly completions = {
    create: ((request: CompletionRequest) => (request.stream ? this.streamCompletion(request) : this.completeText(request))) as {
      (request: CompletionRequest & { stream: true }): Promise<AsyncIterable<CompletionChunk>>;
      (request: CompletionRequest & { stream?: false }): Promise<Completion>;
    },
  };

  private constructor(
    readonly ctx: GpuContext,
    readonly model: Model,
    /** Undefined for a checkpoint without tokenizer.json: token ids in and out (generateIds, score) still work. */
    readonly tokenizer: Tokenizer | undefined,
    /** The session requests run on (with a batch: the one prompts are prefilled and scores computed in). */
    readonly session: Session,
    readonly name: string,
    lanes: Lanes = {},
  ) {
    ({ batch: this.batch, alone: this.alone, pipeline: this.pipeline } = lanes);
    // A batch's and a pipeline's slots have samplers of their own.
    const ownSampler = this.alone || !(this.batch || this.pipeline);
    this.sampler = ownSampler ? GpuSampler.create(ctx, { vocabSize: model.config.vocabSize, tokenizerSize: model.tokenizerSize }) : undefined;
  }

  static async load(ctx: GpuContext, checkpoint: Checkpoint, options: EngineOptions = {}): Promise<Engine> {
    const tokenizer = (await checkpoint.files.has('tokenizer.json')) ? await Tokenizer.load(checkpoint.files) : undefined;
    const model = await loadModel(ctx, checkpoint, {
      dtype: options.dtype ?? (ctx.caps.f16 ? 'f16' : 'f32'),
      dtypeGiven: options.dtype !== undefined && options.dtypeGiven !== false,
      vocab: tokenizer && { tokenizerSize: tokenizer.size, eosTokenIds: tokenizer.eosTokenIds },
      verify: options.verify,
      expertCacheBytes: options.expertCacheBytes,
      layers: options.layers,
      // The MTP block only where it drafts: asked for, or on by default (see draftsOf) unless the experts are streamed,
      // where its own experts would take memory beside the expert cache for a gain not yet measured.
      mtp: options.mtp ?? (!ctx.caps.cpu && !options.pipeline && !options.layers && !tiledBatch(ctx, options) && 'unless streamed'),
      onProgress: options.onProgress,
      signal: options.signal,
    });
    try {
      // A context the caller names is kept or refused (Session.create says why), never cut to fit.
      const contextLength = options.contextLength ?? Math.min(4096, model.config.maxPositions);
      const name = checkpoint.location.split('/').filter(Boolean).pop() ?? 'qwen3.5';
      const maxBatch = options.maxBatch ?? 1;
      if (!Number.isInteger(maxBatch) || maxBatch < 1) throw new RequestError(`must be a positive integer, got ${maxBatch}`, 'maxBatch');
      const sessionOptions = { contextLength, prefillChunk: options.prefillChunk };
      // A pipeline speculates through its stages (StagePoolOptions.draftTokens).
      if (options.pipeline) {
        const pool = await options.pipeline(model, { contextLength, slots: maxBatch });
        return new Engine(ctx, model, tokenizer, pool.slots[0].session, name, { pipeline: pool });
      }
      const drafts = draftsOf(ctx, model, options);
      if (maxBatch === 1) {
        const session = drafts ? speculatingSession(ctx, model, sessionOptions, drafts) : Session.create(ctx, model, sessionOptions);
        return new Engine(ctx, model, tokenizer, session, name);
      }
      const batch = Batch.create(ctx, model, { ...sessionOptions, maxBatch, tiledDecode: options.tiledDecode });
      try {
        const alone = drafts ? new AloneSequence(speculatingSession(ctx, model, sessionOptions, drafts), batch) : undefined;
        return new Engine(ctx, model, tokenizer, batch.prefillSession, name, { batch, alone });
      } catch (error) {
        batch.destroy();
        throw error;
      }
    } catch (error) {
      model.destroy();
      throw error;
    }
  }

  /** The chat prompt as text and ids, with the generation prompt added (what `tokenize --messages` prints). */
  renderPrompt(messages: ChatMessage[], options: { tools?: ToolDefinition[]; reasoning?: Reasoning } = {}): RenderedPrompt {
    const template = this.text.chatTemplate;
    if (!template) throw new RequestError('the model has no chat_template in tokenizer_config.json; use completions.create with a raw prompt', 'messages');
    if (!Array.isArray(messages) || messages.length === 0) throw new RequestError('must be a non-empty array', 'messages');
    const text = renderChat(template, { messages, tools: options.tools, addGenerationPrompt: true, enableThinking: (options.reasoning ?? 'on') !== 'off' });
    const open = text.lastIndexOf('<think>');
    const thinking = open > text.lastIndexOf('</think>') && open > text.lastIndexOf('<|im_start|>');
    return { text, ids: this.text.encode(text), thinking };
  }

  /** The tokenizer that text requests need. */
  private get text(): Tokenizer {
    if (!this.tokenizer) throw new RequestError(`${this.name} has no tokenizer.json: only token ids can be generated (generateIds) or scored`, 'model');
    return this.tokenizer;
  }

  /** Runs `body` when the requests before it are done. */
  private exclusive<T>(body: () => Promise<T>): Promise<T> {
    this.waiting++;
    const counted = async () => {
      this.waiting--;
      this.running++;
      try {
        return await body();
      } finally {
        this.running--;
      }
    };
    const run = this.queue.then(counted, counted);
    this.queue = run.catch(() => undefined);
    return run;
  }

  /** Requests running and waiting, batch size and state memory, for a server's metrics. */
  gauges(): EngineGauges {
    const perSequence = stateBytes(this.model, this.session.capacity, this.ctx.activationBytes);
    const b = this.batch ?? this.pipeline;
    // A request alone that moved into the batch holds a slot there.
    const apart = Number(this.aloneTaken && !this.alone?.moved);
    const running = b ? b.running + apart : this.running;
    // A batch's prefill session never speculates: with a batch, only the session for a request alone does.
    const speculating = this.pipeline ? this.pipeline.slots : [this.alone ?? this.session];
    return {
      running,
      waiting: b ? b.queued : this.waiting,
      maxBatch: b ? b.slots.length : 1,
      batchSize: this.batch ? this.batch.lastStepRows : running,
      stateBytesUsed: running * perSequence,
      stateBytesTotal: ((b ? b.slots.length : 1) + Number(Boolean(this.alone))) * perSequence,
      speculation: speculationTotals(speculating),
      experts: this.session.expertCache?.totals(),
    };
  }

  /** Why the engine cannot serve now (a pipeline stage is down; a server answers 503), or undefined. */
  unavailable(): string | undefined {
    return this.pipeline?.unavailable?.message;
  }

  /**
   * A sequence for one request: a slot of the batch (or, when no other request runs, the session for a request
   * alone), or the session when the requests before have left it.
   */
  private lease(signal?: AbortSignal): Promise<Lease> {
    const pipeline = this.pipeline;
    if (pipeline) return pipeline.acquire(signal).then((slot) => ({ sequence: slot, sampler: slot.sampler, release: () => pipeline.release(slot) }));
    const batch = this.batch;
    const alone = this.alone;
    if (batch && alone && !this.aloneTaken && batch.running === 0) {
      if (signal?.aborted) return Promise.reject(new AbortError('aborted'));
      this.aloneTaken = true;
      const release = () => {
        alone.leave();
        this.aloneTaken = false;
      };
      // The Engine's sampler goes with the sequence into the batch (a step takes each row's sampler).
      return Promise.resolve({ sequence: alone, sampler: this.sampler!, release });
    }
    if (batch) return batch.acquire(signal).then((slot) => ({ sequence: slot, sampler: slot.sampler, release: () => batch.release(slot) }));
    return new Promise<Lease>((started, failed) => {
      void this.exclusive(
        () =>
          new Promise<void>((release) => {
            if (signal?.aborted) {
              release();
              failed(new AbortError('aborted'));
            } else started({ sequence: this.session, sampler: this.sampler!, release });
          }),
      );
    });
  }

  /** Runs `body` on a leased sequence and gives it back however the body ends. */
  private async leased<T>(signal: AbortSignal | undefined, body: (sequence: TokenSequence, sampler: GpuSampler) => Promise<T>): Promise<T> {
    const lease = await this.lease(signal);
    try {
      return await body(lease.sequence, lease.sampler);
    } finally {
      lease.release();
    }
  }

  private plan(request: SamplingRequest, promptIds: number[], thinking: boolean, reasoning?: Reasoning): GenerationPlan {
    const maxTokens = checkMaxTokens(request.max_tokens, 'max_tokens', promptIds.length, this.session.capacity);
    const topLogprobs = request.top_logprobs ?? 0;
    if (!Number.isInteger(topLogprobs) || topLogprobs < 0 || topLogprobs > 20)
      throw new RequestError(`must be an integer from 0 to 20, got ${topLogprobs}`, 'top_logprobs');
    const sampling: SamplingOptions = {
      temperature: request.temperature,
      topK: request.top_k,
      topP: request.top_p,
      minP: request.min_p,
      presencePenalty: request.presence_penalty,
      frequencyPenalty: request.frequency_penalty,
      repetitionPenalty: request.repetition_penalty,
      seed: request.seed,
      logprobs: request.logprobs ? Math.max(1, topLogprobs) : 0,
    };
    checkSampling(sampling, this.model.tokenizerSize);
    const budget = typeof reasoning === 'object' ? reasoning.budget : undefined;
    if (budget !== undefined && (!Number.isInteger(budget) || budget < 0))
      throw new RequestError(`must be a non-negative integer, got ${budget}`, 'reasoning.budget');
    const thinkEndId = this.text.tokenId('</think>');
    return {
      promptIds,
      maxTokens,
      sampling,
      thinking,
      reasoningBudget: budget,
      thinkEndId,
      thinkEndIds: thinkEndId === undefined ? undefined : this.text.encode('</think>\n\n'),
      stopIds: new Set(this.text.eosTokenIds),
      signal: request.signal,
      onToken: request.onToken,
    };
  }

  private stops(request: SamplingRequest): string[] {
    const stop = request.stop === undefined ? [] : Array.isArray(request.stop) ? request.stop : [request.stop];
    if (stop.some((s) => typeof s !== 'string' || s.length === 0)) throw new RequestError('must be a non-empty string or a list of them', 'stop');
    return stop;
  }

  private chatStream(request: ChatCompletionRequest): Generation<ChatCompletionChunk> {
    // Everything that can be wrong with the request is found here, before any GPU work.
    const prompt = this.renderPrompt(request.messages, { tools: request.tools, reasoning: request.reasoning });
    const plan = this.plan(request, prompt.ids, prompt.thinking, request.reasoning);
    const stops = this.stops(request);
    const [tokenizer, id] = [this.text, newId('chatcmpl')];
    return (session, sampler) =>
      chatChunks({
        session,
        sampler,
        tokenizer,
        plan,
        stops,
        tools: request.tools ?? [],
        withLogprobs: Boolean(request.logprobs),
        id,
        model: this.name,
      });
  }

  private async completeChat(request: ChatCompletionRequest): Promise<ChatCompletion> {
    const stream = this.chatStream(request);
    return this.leased(request.signal, (session, sampler) => collectChat(stream(session, sampler), Boolean(request.logprobs)));
  }

  private async streamChat(request: ChatCompletionRequest): Promise<AsyncIterable<ChatCompletionChunk>> {
    return this.locked(this.chatStream(request), request.signal);
  }

  /**
   * Holds a sequence from the first `next()` (not from creation: a stream that is never iterated holds nothing)
   * until the stream ends, fails, the consumer stops early (`return()`, e.g. `break` out of `for await`) or the
   * request's signal aborts. An abort while the stream waits for its turn rejects that `next()` at once and gives
   * the turn up; an abort between two `next()` calls frees the sequence at once (the next `next()` rejects with
   * AbortError).
   */
  private locked<T>(generation: Generation<T>, signal?: AbortSignal): AsyncIterable<T> {
    let lease: Lease | undefined;
    let stream: AsyncGenerator<T> | undefined;
    let closed = false;
    let busy = false;
    let turn: Promise<AsyncGenerator<T> | undefined> | undefined;
    const close = () => {
      if (closed) return;
      closed = true;
      signal?.removeEventListener('abort', onAbort);
      // The generator runs its cleanup (steps submitted and never read) before the sequence is given back; a
      // lease that has not come yet is given back when it comes (acquire below sees `closed`).
      void (stream?.return(undefined as never) ?? Promise.resolve()).catch(() => {}).then(() => lease?.release());
    };
    // Aborted between two next() calls: free the sequence now (a next() in flight sees the signal itself).
    const onAbort = () => {
      if (!busy) close();
    };
    signal?.addEventListener('abort', onAbort, { once: true });
    let cancelWait: (() => void) | undefined;
    const aborted = new Promise<never>((_, fail) => {
      cancelWait = () => fail(new AbortError('aborted'));
      signal?.addEventListener('abort', cancelWait, { once: true });
    });
    aborted.catch(() => {});
    // Undefined when the stream was closed before its lease came (the lease is given back at once).
    const acquire = () => {
      if (!turn) {
        turn = this.lease(signal).then((held) => {
          if (closed) {
            held.release();
            return undefined;
          }
          lease = held;
          stream = generation(held.sequence, held.sampler);
          return stream;
        });
        turn.catch(() => {});
      }
      return turn;
    };
    return {
      [Symbol.asyncIterator]: () => ({
        next: async () => {
          if (closed) {
            if (signal?.aborted) throw new AbortError('aborted');
            return { done: true, value: undefined as never };
          }
          if (signal?.aborted) {
            close();
            throw new AbortError('aborted');
          }
          busy = true;
          try {
            const acquired = await Promise.race([acquire(), aborted]);
            if (!acquired) throw new AbortError('aborted');
            const r = await acquired.next();
            if (r.done) close();
            return r;
          } catch (error) {
            close();
            throw error;
          } finally {
            busy = false;
            if (signal?.aborted) close();
            if (closed && cancelWait) signal?.removeEventListener('abort', cancelWait);
          }
        },
        return: async () => {
          close();
          return { done: true, value: undefined as never };
        },
      }),
    };
  }

  /**
   * Token ids in, token ids out (no tokenizer): the browser worker's `generate`. Stops at an eos id of the
   * model unless `ignoreEos`; waits for the requests before it, like every request.
   */
  async generateIds(request: {
    promptIds: number[];
    maxTokens: number;
    sampling?: SamplingOptions;
    ignoreEos?: boolean;
    signal?: AbortSignal;
  }): Promise<IdsResult> {
    const promptIds = checkTokenIds(request.promptIds, 'promptIds', this.model.tokenizerSize);
    const maxTokens = checkMaxTokens(request.maxTokens, 'maxTokens', promptIds.length, this.session.capacity);
    const sampling = request.sampling ?? { temperature: 0 };
    checkSampling(sampling, this.model.tokenizerSize);
    const stopIds = request.ignoreEos ? [] : this.model.eosTokenIds;
    return this.leased(request.signal, (session, sampler) =>
      generateIds(session, sampler, { promptIds, maxTokens, sampling, stopIds, signal: request.signal }),
    );
  }

  /** Checks the request now; the returned generator does the work. */
  private textStream(request: CompletionRequest): Generation<CompletionChunk> {
    if (typeof request.prompt !== 'string' || request.prompt.length === 0) throw new RequestError('must be a non-empty string', 'prompt');
    const plan = this.plan(request, this.text.encode(request.prompt), false);
    const stops = this.stops(request);
    const [tokenizer, id] = [this.text, newId('cmpl')];
    return (session, sampler) => completionChunks({ session, sampler, tokenizer, plan, stops, withLogprobs: Boolean(request.logprobs), id, model: this.name });
  }

  private async completeText(request: CompletionRequest): Promise<Completion> {
    const stream = this.textStream(request);
    return this.leased(request.signal, async (session, sampler) => {
      let text = '';
      const logprobs: TokenLogprob[] = [];
      let last: CompletionChunk | undefined;
      for await (const ch of stream(session, sampler)) {
        text += ch.choices[0].text;
        logprobs.push(...(ch.choices[0].logprobs?.content ?? []));
        last = ch;
      }
      return {
        id: last!.id,
        object: 'text_completion',
        created: last!.created,
        model: last!.model,
        choices: [{ index: 0, text, finish_reason: last!.choices[0].finish_reason ?? 'length', logprobs: request.logprobs ? { content: logprobs } : null }],
        usage: last!.usage!,
      };
    });
  }

  private async streamCompletion(request: CompletionRequest): Promise<AsyncIterable<CompletionChunk>> {
    return this.locked(this.textStream(request), request.signal);
  }

  /**
   * The model's logits after each prefix of `ids` (row t follows ids[0..t]), handed to `onRows` a chunk of rows at a
   * time ([rows, vocab_size] f32; `first` is the row of the chunk's first).
   */
  async score(ids: number[], onRows: (rows: Float32Array, first: number) => void | Promise<void>, signal?: AbortSignal): Promise<void> {
    checkTokenIds(ids, 'ids', this.model.tokenizerSize);
    if (ids.length > this.session.capacity) throw new RequestError(`${ids.length} ids are more than the context of ${this.session.capacity}`, 'ids');
    if (this.pipeline) throw new RequestError('scoring is not available across pipeline stages (the LM head is on the last one)', 'ids');
    if (this.batch) return this.batch.withPrefillSession((session) => scoreIds(session, ids, onRows, signal));
    return this.exclusive(() => scoreIds(this.session, ids, onRows, signal));
  }

  /**
   * Expert streaming figures of the last generation (hit rate, bytes streamed, stall per token), or undefined
   * when every MoE expert is resident (or the model is dense); with a batch, where requests overlap, since the last
   * prompt began, and gauges().experts has the totals.
   */
  expertStats(): ExpertStats | undefined {
    return this.session.expertStats();
  }

  /**
   * Speculative decoding in the last generation (verification passes, drafts, drafts accepted), when it speculated;
   * with a batch or a pipeline, where requests overlap, gauges() has the sums instead.
   */
  speculationStats(): SpeculationStats | undefined {
    const stats = this.batch || this.pipeline ? undefined : this.session.speculator?.stats;
    return stats && stats.passes > 0 ? { ...stats } : undefined;
  }

  destroy(): void {
    this.sampler?.destroy();
    this.alone?.destroy();
    if (this.pipeline) this.pipeline.destroy();
    else if (this.batch) this.batch.destroy();
    else this.session.destroy();
    this.model.destroy();
  }
}

const API_FIELDS: Record<string, string> = {
  topK: 'top_k',
  topP: 'top_p',
  minP: 'min_p',
  repetitionPenalty: 'repetition_penalty',
  presencePenalty: 'presence_penalty',
  frequencyPenalty: 'frequency_penalty',
  logprobs: 'top_logprobs',
};

/** A request's token ids: a non-empty array of ids below the tokenizer's size (ids past it are padding rows, not tokens). */
function checkTokenIds(ids: unknown, field: string, size: number): number[] {
  const list: unknown[] = Array.isArray(ids) ? ids : [];
  const bad = list.findIndex((id) => !Number.isInteger(id) || (id as number) < 0 || (id as number) >= size);
  if (list.length === 0 || bad >= 0) {
    throw new RequestError(
      `must be a non-empty array of token ids below the tokenizer's ${size}${bad >= 0 ? ` (${field}[${bad}] is ${JSON.stringify(list[bad])})` : ''}`,
      field,
    );
  }
  return list as number[];
}

/** The sampler's own checks, before the request waits for the session, naming the request's fields. */
function checkSampling(sampling: SamplingOptions, tokenizerSize: number): void {
  try {
    resolveSampling(sampling, tokenizerSize);
  } catch (error) {
    if (!(error instanceof RequestError)) throw error;
    throw new RequestError(error.detail, API_FIELDS[error.field] ?? error.field, { cause: error });
  }
}

/**
 * `max_tokens` (named `field`) checked against the context: a positive integer, or undefined for all the room
 * the prompt leaves. Returns the tokens to generate.
 */
function checkMaxTokens(requested: number | undefined, field: string, promptTokens: number, capacity: number): number {
  if (requested !== undefined && (!Number.isInteger(requested) || requested < 1))
    throw new RequestError(`must be a positive integer, got ${String(requested)}`, field);
  const room = capacity - promptTokens;
  if (room < 1) throw new SessionError(`the prompt has ${promptTokens} tokens; the context holds ${capacity}`);
  const maxTokens = requested ?? room;
  if (maxTokens > room) throw new SessionError(`the prompt (${promptTokens} tokens) + ${field} (${maxTokens}) exceed the context of ${capacity} tokens`);
  return maxTokens;
}

function newId(prefix: string): string {
  return `${prefix}-${Math.random().toString(36).slice(2, 12)}`;
}
