/**
 * The engine in a module Web Worker: it owns the GPU device and the model, and serves the page through
 * Comlink (`WorkerApi`). Models are stored in IndexedDB (idb_store.ts) or read over HTTP with Range requests; nothing here touches Node.
 */
import * as Comlink from 'comlink';
import { Engine } from '../../api/engine.ts';
import type { ChatCompletion, ChatCompletionChunk, Completion, CompletionChunk, Usage } from '../../api/types.ts';
import { openCheckpoint } from '../../formats/open.ts';
import { GpuContext } from '../../gpu/context.ts';
import { AdapterError, ContractError, RequestError, throwIfAborted } from '../../errors.ts';
import type { SamplingOptions } from '../../runtime/sampler.ts';
import { HttpSource } from '../../storage/http.ts';
import { convertModel, planPackedModel } from '../../model/convert.ts';
import { hubEndpoint, listRepo, parseModelRef, pickGguf, resolveUrl } from '../../storage/hub.ts';
import { IdbConversionSink, convertedModelId } from '../../storage/idb_convert.ts';
import { IdbSource } from '../../storage/idb_source.ts';
import { deleteModel, isComplete, listModels, modelId, storedModel } from '../../storage/idb_store.ts';
import {
  type ChatCompletionChunkWithStats,
  type ChatCompletionWithStats,
  type ChunkSink,
  type GenerateRequest,
  type GenerateStats,
  type GenerateResult,
  type LoadProgress,
  type LoadRequest,
  type LoadResult,
  type WireChatRequest,
  type WireCompletionRequest,
  type WorkerApi,
  installErrorTransfer,
} from './protocol.ts';

const BROWSER_BACKEND = 'WebGPU (browser)';

class WorkerEngine implements WorkerApi {
  private ctx: GpuContext | undefined;
  private engine: Engine | undefined;
  private readonly requests = new Map<number, AbortController>();

  readonly chat = {
    completions: {
      create: (request: WireChatRequest, requestId: number, onChunks?: ChunkSink<ChatCompletionChunk>): Promise<ChatCompletion | null> =>
        this.serve(requestId, async (signal) => {
          const engine = this.loaded();
          const timer = tokenTimer();
          if (!onChunks) {
            const completion = await engine.chat.completions.create({ ...request, stream: false, signal, onToken: timer.onToken });
            const withFigures: ChatCompletionWithStats = { ...completion, stats: timer.stats(engine, completion.usage) };
            return withFigures;
          }
          const stream = await engine.chat.completions.create({ ...request, stream: true, signal, onToken: timer.onToken });
          await pump(
            withStats(stream, (usage) => timer.stats(engine, usage)),
            onChunks,
          );
          return null;
        }),
    },
  };

  readonly completions = {
    create: (request: WireCompletionRequest, requestId: number, onChunks?: ChunkSink<CompletionChunk>): Promise<Completion | null> =>
      this.serve(requestId, async (signal) => {
        const engine = this.loaded();
        if (!onChunks) return engine.completions.create({ ...request, stream: false, signal });
        await pump(await engine.completions.create({ ...request, stream: true, signal }), onChunks);
        return null;
      }),
  };

  async load(request: LoadRequest, requestId: number, onProgress?: (p: LoadProgress) => void): Promise<LoadResult> {
    return this.serve(requestId, async (signal) => {
      if (typeof request?.model !== 'string' || request.model.length === 0) throw new RequestError('must be the URL of a model', 'model');
      if (request.dtype !== undefined && !['f32', 'f16', 'q4', 'int4'].includes(request.dtype)) {
        throw new RequestError(`must be 'f32', 'f16' or 'int4', got ${JSON.stringify(request.dtype)}`, 'dtype');
      }
      if (request.activations !== undefined && request.activations !== 'f32' && request.activations !== 'f16') {
        throw new RequestError(`must be 'f32' or 'f16', got ${JSON.stringify(request.activations)}`, 'activations');
      }
      if (request.hubEndpoint !== undefined && typeof request.hubEndpoint !== 'string') throw new RequestError('must be a URL', 'hubEndpoint');
      const t0 = performance.now();
      await this.unload();
      const ctx = await this.context(request.activations ?? 'f32');
      const url = new URL(await modelUrl(request.model, request.hubEndpoint, signal), self.location.href);
      // A .gguf file is one file inside its folder; anything else is a model folder.
      const gguf = /\.gguf$/i.test(url.pathname) ? decodeURIComponent(url.pathname.split('/').pop()!) : undefined;
      if (gguf !== undefined) url.pathname = url.pathname.slice(0, url.pathname.lastIndexOf('/') + 1);
      const progress = onProgress && latest(onProgress);
      // store (the default where IndexedDB exists): download into IndexedDB or resume, or open what is stored
      // there with no network at all; then the loader reads the IdbSource like any other source.
      const { source, file } =
        (request.store ?? typeof indexedDB !== 'undefined')
          ? await storedSource(ctx, url.href, gguf, request.dtype === 'int4' || request.dtype === 'q4', signal, progress)
          : { source: new HttpSource(url.href), file: gguf };
      const checkpoint = await openCheckpoint(source, file);
      this.engine = await Engine.load(ctx, checkpoint, {
        dtype: request.dtype === 'int4' ? 'q4' : request.dtype,
        contextLength: request.contextLength,
        expertCacheBytes: request.expertCacheBytes,
        mtp: request.mtp,
        draftTokens: request.draftTokens,
        draftVocab: request.draftVocab,
        onProgress: progress && ((p) => progress({ ...p, phase: 'load' })),
        signal,
      });
      return {
        name: this.engine.name,
        dtype: this.engine.model.dtype,
        contextLength: this.engine.session.capacity,
        adapter: ctx.adapter,
        loadMs: performance.now() - t0,
      };
    });
  }

  async generate(request: GenerateRequest, requestId: number): Promise<GenerateResult> {
    return this.serve(requestId, async (signal) => {
      const engine = this.loaded();
      const sampling: SamplingOptions = request.greedy
        ? { temperature: 0, seed: request.seed }
        : { temperature: request.temperature, topP: request.top_p, topK: request.top_k, minP: request.min_p, seed: request.seed };
      const r = await engine.generateIds({ promptIds: request.promptIds, maxTokens: request.maxTokens, sampling, ignoreEos: request.ignoreEos, signal });
      return {
        ids: r.ids,
        stopReason: r.stopped,
        stats: {
          promptTokens: r.promptTokens,
          generatedTokens: r.ids.length,
          prefillMs: r.prefillMs,
          decodeMs: r.decodeMs,
          prefillTokensPerSecond: rate(r.promptTokens, r.prefillMs),
          decodeTokensPerSecond: rate(r.ids.length - 1, r.decodeMs),
          ...expertStats(engine),
          ...speculationStats(engine),
        },
      };
    });
  }

  readonly models = {
    list: () => listModels(),
    delete: (id: string) => {
      if (typeof id !== 'string' || id.length === 0) throw new RequestError('must be the id of a stored model (models.list() gives them)', 'id');
      return deleteModel(id);
    },
  };

  abort(requestId: number): void {
    this.requests.get(requestId)?.abort();
  }

  async unload(): Promise<void> {
    const engine = this.engine;
    this.engine = undefined;
    if (engine) {
      await engine.ctx.sync().catch(() => undefined);
      engine.destroy();
    }
  }

  async dispose(): Promise<void> {
    await this.unload();
    this.ctx?.destroy();
    this.ctx = undefined;
  }

  private async context(activations: 'f32' | 'f16'): Promise<GpuContext> {
    if (this.ctx && this.ctx.activations === activations) return this.ctx;
    this.ctx?.destroy();
    this.ctx = undefined;
    const gpu = (self.navigator as Navigator & { gpu?: GPU }).gpu;
    if (!gpu)
      throw new AdapterError('this browser has no WebGPU in workers (navigator.gpu is missing; in Chromium on Linux start it with --enable-unsafe-webgpu)');
    this.ctx = await GpuContext.create(gpu, { backend: BROWSER_BACKEND, activations });
    return this.ctx;
  }

  private loaded(): Engine {
    if (!this.engine) throw new ContractError('no model is loaded: call load({ model: url }) first', 'engine');
    return this.engine;
  }

  /** Runs a request with an AbortController that `abort(requestId)` reaches. */
  private async serve<T>(requestId: number, body: (signal: AbortSignal) => Promise<T>): Promise<T> {
    if (this.requests.has(requestId)) throw new ContractError(`request id ${requestId} is already in use`, 'worker');
    const controller = new AbortController();
    this.requests.set(requestId, controller);
    try {
      return await body(controller.signal);
    } finally {
      this.requests.delete(requestId);
    }
  }
}

/**
 * Sends a stream's chunks to the page in batches: a batch goes as soon as the previous one has been taken,
 * so the page gets tokens without delay when it keeps up, and fewer, larger messages when it does not.
 */
async function pump<T>(stream: AsyncIterable<T>, sink: ChunkSink<T>): Promise<void> {
  let pending: T[] = [];
  let inFlight: Promise<void> | undefined;
  let failure: unknown;
  const flush = (): void => {
    if (inFlight || pending.length === 0 || failure !== undefined) return;
    const batch = pending;
    pending = [];
    inFlight = Promise.resolve(sink(batch)).then(
      () => {
        inFlight = undefined;
        flush();
      },
      (error: unknown) => {
        inFlight = undefined;
        failure = error;
      },
    );
  };
  const iterator = stream[Symbol.asyncIterator]();
  let stopped: { error: unknown } | undefined;
  try {
    for (;;) {
      if (failure !== undefined) throw failure;
      const next = await iterator.next();
      if (next.done) break;
      pending.push(next.value);
      flush();
    }
  } catch (error) {
    stopped = { error };
    await iterator.return?.().catch(() => undefined);
  }
  // What was produced reaches the page before the end (or the error, AbortError included).
  while ((inFlight || pending.length) && failure === undefined) {
    flush();
    await inFlight;
  }
  if (stopped) throw stopped.error;
  if (failure !== undefined) throw failure;
}

/**
 * The model from IndexedDB (`folder`: its URL; `gguf`: its file there, if it is one). INT4 of a checkpoint
 * that is not packed is converted as it downloads into a packed model of its own (idb_convert.ts), so its
 * experts can stream; the source is read from IndexedDB instead when it is stored there whole. Anything else
 * is stored as it is (idb_store.ts). `file`: the .gguf to open in the source, if any.
 */
async function storedSource(
  ctx: GpuContext,
  folder: string,
  gguf: string | undefined,
  int4: boolean,
  signal: AbortSignal,
  progress: ((p: LoadProgress) => void) | undefined,
): Promise<{ source: IdbSource; file?: string }> {
  const url = gguf !== undefined ? new URL(gguf, folder).href : folder;
  if (int4) {
    const id = convertedModelId(url, 'int4');
    if (await isComplete(id)) return { source: await IdbSource.open(id) };
    const original = (await isComplete(modelId(url))) ? await IdbSource.open(modelId(url)) : new HttpSource(folder);
    const checkpoint = await openCheckpoint(original, gguf);
    if (!checkpoint.packed) {
      const layout = await planPackedModel(ctx, checkpoint, { dtype: 'q4' });
      const sink = await IdbConversionSink.open(id, modelId(url), layout);
      const manifest = await convertModel(ctx, checkpoint, {
        dtype: 'q4',
        sink,
        signal,
        onProgress: progress && ((p) => progress({ ...p, phase: 'convert' })),
      });
      await sink.complete(manifest);
      return { source: await IdbSource.open(id) };
    }
  }
  const source = await storedModel(url, {
    signal,
    onProgress:
      progress &&
      ((p) =>
        progress({
          phase: p.phase,
          loadedBytes: p.doneBytes,
          totalBytes: p.totalBytes,
          tensor: '',
          file: p.file,
          bytesPerSecond: p.bytesPerSecond,
          secondsLeft: p.secondsLeft,
        })),
  });
  return { source, file: gguf };
}

/**
 * The URL of `model`: a Hugging Face hub id (ORG/NAME[@REV], ORG/NAME/FILE.gguf[@REV], ORG/NAME[@REV]:QUANT)
 * becomes its resolve URL at `endpoint` (default https://huggingface.co); anything else is a URL (a relative one starts with ./ or /).
 */
async function modelUrl(model: string, endpoint: string | undefined, signal: AbortSignal): Promise<string> {
  const ref = parseModelRef(model);
  if (!ref) return model;
  // The hub's own default (https://huggingface.co) unless the request names another.
  const hub = hubEndpoint((name) => (name === 'HF_ENDPOINT' ? endpoint : undefined));
  if (ref.file === undefined && ref.quant === undefined) return resolveUrl(hub, ref.repo, ref.revision, '');
  throwIfAborted(signal);
  const file = ref.file ?? pickGguf(ref, (await listRepo(ref, { endpoint: hub })).files);
  return resolveUrl(hub, ref.repo, ref.revision, file);
}

/** Forwards progress without queueing: while one call is in flight, only the newest value waits. */
function latest<T>(callback: (value: T) => void): (value: T) => void {
  let busy = false;
  let waiting: { value: T } | undefined;
  const send = (value: T): void => {
    busy = true;
    Promise.resolve(callback(value))
      .catch(() => undefined)
      .finally(() => {
        busy = false;
        if (waiting) {
          const next = waiting.value;
          waiting = undefined;
          send(next);
        }
      });
  };
  return (value) => {
    if (busy) waiting = { value };
    else send(value);
  };
}

function rate(tokens: number, ms: number): number {
  return ms > 0 ? (tokens * 1000) / ms : 0;
}

installErrorTransfer();
Comlink.expose(new WorkerEngine());

/** The generation's expert-cache figures (the session resets them per generation); none for a dense model. */
function expertStats(engine: Engine): Partial<GenerateStats> {
  if (!engine.model.config.moe) return {};
  const s = engine.expertStats();
  // Without a cache every expert is resident: every use hits and nothing streams.
  if (!s) return { expertCacheHitRate: 1, expertBytesStreamed: 0, expertStallMsPerToken: 0 };
  return { expertCacheHitRate: s.hitRate, expertBytesStreamed: s.bytesStreamed, expertStallMsPerToken: s.stallMsPerToken, expertUsage: s.usage };
}

function speculationStats(engine: Engine): Partial<GenerateStats> {
  const s = engine.speculationStats();
  return s ? { draftAcceptanceRate: s.accepted / s.drafted, tokensPerPass: (s.passes + s.accepted) / s.passes } : {};
}

/**
 * Times a chat request by its tokens (`onToken`): prompt in, first token out is the prefill; the rest is decode.
 * `stats` gives the figures `generate` reports, with the expert-cache ones, for the request's usage.
 */
function tokenTimer() {
  const t0 = performance.now();
  let first = 0;
  let last = 0;
  return {
    onToken: (): void => {
      last = performance.now();
      if (first === 0) first = last;
    },
    stats(engine: Engine, usage: Usage): GenerateStats {
      const prefillMs = first ? first - t0 : 0;
      const decodeMs = first ? last - first : 0;
      return {
        promptTokens: usage.prompt_tokens,
        generatedTokens: usage.completion_tokens,
        prefillMs,
        decodeMs,
        prefillTokensPerSecond: rate(usage.prompt_tokens, prefillMs),
        decodeTokensPerSecond: rate(usage.completion_tokens - 1, decodeMs),
        ...expertStats(engine),
        ...speculationStats(engine),
      };
    },
  };
}

/** The stream with `stats` added to its last chunk (the one with `usage`). */
async function* withStats(stream: AsyncIterable<ChatCompletionChunk>, stats: (usage: Usage) => GenerateStats): AsyncGenerator<ChatCompletionChunkWithStats> {
  for await (const chunk of stream) yield chunk.usage ? { ...chunk, stats: stats(chunk.usage) } : chunk;
}
