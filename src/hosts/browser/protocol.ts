import * as Comlink from 'comlink';
import type { ActivationType } from '../../gpu/caps.ts';
import type { AdapterSummary } from '../../gpu/context.ts';
import { ERROR_CLASSES, QwenError } from '../../errors.ts';
import type { WeightDtype } from '../../gpu/tensor.ts';
import type { LoadProgress as ModelLoadProgress } from '../../model/load.ts';
import type { StoredModel } from '../../storage/idb_store.ts';
import type { StopReason } from '../../runtime/generation.ts';
import type { ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, Completion, CompletionChunk, CompletionRequest } from '../../api/types.ts';

/**
 * What crosses between the page and the engine's worker: plain data only (structured-cloneable), plus
 * Comlink proxies for callbacks. AbortSignals never cross; the client turns one into `abort(requestId)`.
 */

export type { StoredModel };

/**
 * Where a load is: 'download' (into IndexedDB: bytes of the whole model stored so far, with the rate and the
 * seconds left), 'verify' (a packed model's shards against their sha256), 'convert' (INT4 into IndexedDB as
 * it downloads: the source's bytes read so far, `tensor`) and 'load' (onto the GPU: `tensor`).
 */
export interface LoadProgress extends ModelLoadProgress {
  phase: 'download' | 'verify' | 'convert' | 'load';
  /** The file being downloaded or checked ('download' and 'verify'). */
  file?: string;
  bytesPerSecond?: number;
  secondsLeft?: number;
}

export interface LoadRequest {
  /**
   * URL of a Hugging Face folder, a packed model folder or a .gguf file (relative URLs resolve against the page
   * and start with ./ or /), or a Hugging Face hub id: ORG/NAME[@REV], ORG/NAME/FILE.gguf[@REV] or ORG/NAME[@REV]:QUANT.
   */
  model: string;
  /** Where hub ids resolve (default https://huggingface.co): `${hubEndpoint}/ORG/NAME/resolve/REV/FILE`. */
  hubEndpoint?: string;
  /**
   * How matrices are held on the GPU (default f16 with shader-f16, else f32; a packed model keeps its own, and a GGUF
   * of fewer than 6 bits per weight loads as INT4).
   * 'int4' (also 'q4'): quantised while loading.
   */
  dtype?: WeightDtype | 'int4';
  /** GPU memory for MoE experts; the rest stream from the source (EngineOptions.expertCacheBytes). */
  expertCacheBytes?: number;
  /** Storage type of activations and caches (default f32; f16 needs shader-f16). */
  activations?: ActivationType;
  /** Tokens a request may span (prompt + completion). Default: 4096, or less when the model allows less. */
  contextLength?: number;
  /**
   * Speculative decoding with the model's multi-token-prediction block (EngineOptions.mtp): default on with a GPU
   * adapter where the checkpoint has the block; false turns it off.
   */
  mtp?: boolean;
  /** Drafts per verification pass, 1 to 3 (default 2). */
  draftTokens?: number;
  /** Drafts come from token ids below this (EngineOptions.draftVocab; default 32,768; 0: every id). */
  draftVocab?: number;
  /**
   * Keep the model in IndexedDB (default true where IndexedDB exists): the first load downloads it (or
   * resumes an interrupted download), later loads read it from there with no network. false: read over HTTP.
   * With dtype 'int4', a Hugging Face or GGUF checkpoint is quantised as it downloads and only the packed INT4
   * model is stored (under the id URL#int4), so its experts can stream from IndexedDB (expertCacheBytes).
   */
  store?: boolean;
}

export interface LoadResult {
  /** The model's name (the last part of its URL). */
  name: string;
  dtype: WeightDtype;
  contextLength: number;
  adapter: AdapterSummary;
  loadMs: number;
}

export interface GenerateRequest {
  promptIds: number[];
  maxTokens: number;
  /** Argmax decoding (temperature 0). Otherwise the sampling fields apply (temperature 1 by default). */
  greedy?: boolean;
  temperature?: number;
  top_p?: number;
  top_k?: number;
  min_p?: number;
  seed?: number;
  /** Go on past the model's eos ids. */
  ignoreEos?: boolean;
}

export interface GenerateStats {
  promptTokens: number;
  generatedTokens: number;
  /** Prompt in, first token out (its readback included). */
  prefillMs: number;
  /** The rest of the tokens. */
  decodeMs: number;
  prefillTokensPerSecond: number;
  decodeTokensPerSecond: number;
  /**
   * MoE models: the share of expert uses that found the expert on the GPU, the bytes streamed in for the
   * others, and the wait for them per token (1, 0 and 0 when every expert is resident). Absent for dense models.
   */
  expertCacheHitRate?: number;
  expertBytesStreamed?: number;
  expertStallMsPerToken?: number;
  /** Streamed MoE models: how often each expert was chosen, per layer ([layer][expert]), for a heatmap. */
  expertUsage?: number[][];
  /** Speculative decoding: the share of drafts accepted and the tokens one forward pass yielded (absent when off). */
  draftAcceptanceRate?: number;
  tokensPerPass?: number;
}

export interface GenerateResult {
  ids: number[];
  stopReason: StopReason;
  stats: GenerateStats;
}

/**
 * The browser host's chat responses carry the request's measured figures: `stats` on the last streamed
 * chunk (the one with `usage`) and on a whole completion: speeds, and for MoE models the expert cache.
 */
export type ChatCompletionChunkWithStats = ChatCompletionChunk & { stats?: GenerateStats };
export type ChatCompletionWithStats = ChatCompletion & { stats?: GenerateStats };

/** Requests as they cross: no AbortSignal, no callbacks. */
export type WireChatRequest = Omit<ChatCompletionRequest, 'signal' | 'onToken'>;
export type WireCompletionRequest = Omit<CompletionRequest, 'signal' | 'onToken'>;

/** Receives streamed chunks in batches; the worker sends the next batch when this one has been taken. */
export type ChunkSink<T> = (chunks: T[]) => void;

/** The API the worker exposes with Comlink.expose. `requestId` names a request for `abort`. */
export interface WorkerApi {
  load(request: LoadRequest, requestId: number, onProgress?: (p: LoadProgress) => void): Promise<LoadResult>;
  generate(request: GenerateRequest, requestId: number): Promise<GenerateResult>;
  chat: {
    completions: {
      /** With `onChunks` (stream: true) it resolves to null once every chunk is delivered. */
      create(request: WireChatRequest, requestId: number, onChunks?: ChunkSink<ChatCompletionChunk>): Promise<ChatCompletion | null>;
    };
  };
  completions: {
    create(request: WireCompletionRequest, requestId: number, onChunks?: ChunkSink<CompletionChunk>): Promise<Completion | null>;
  };
  /** Stops the request (generation stops within one step; it then fails with AbortError). Unknown ids are ignored. */
  abort(requestId: number): void;
  /** Models stored in IndexedDB (load with store: true puts them there). */
  models: {
    list(): Promise<StoredModel[]>;
    /** Removes every record of the model; false when none was stored under `id`. */
    delete(id: string): Promise<boolean>;
  };
  /** Releases the model (the GPU device stays for the next load). */
  unload(): Promise<void>;
  /** Releases the model and the GPU device. */
  dispose(): Promise<void>;
}

interface WireError {
  isError: true;
  name: string;
  message: string;
  stack?: string;
  fields: Record<string, string | number>;
}

/**
 * Errors keep their class and fields (`RequestError.field`, `CapabilityError.capability`, ...: every own string or
 * number property) across the worker boundary, so `error instanceof AbortError` holds on the page. An error of
 * another class arrives as a QwenError under its own name. Installed on both sides.
 */
export function installErrorTransfer(): void {
  const builtin = Comlink.transferHandlers.get('throw')!;
  Comlink.transferHandlers.set('throw', {
    canHandle: builtin.canHandle,
    serialize(thrown: unknown) {
      const value = (thrown as { value: unknown }).value;
      if (!(value instanceof Error)) return builtin.serialize(thrown);
      const fields: Record<string, string | number> = {};
      for (const [key, v] of Object.entries(value)) {
        if (key !== 'name' && (typeof v === 'string' || typeof v === 'number')) fields[key] = v;
      }
      const wire: WireError = { isError: true, name: value.name, message: value.message, stack: value.stack, fields };
      return [wire, []];
    },
    deserialize(serialized: unknown) {
      const wire = serialized as WireError;
      if (!wire.isError || !('fields' in wire)) return builtin.deserialize(serialized);
      const error: QwenError = Object.create((ERROR_CLASSES[wire.name] ?? QwenError).prototype);
      Object.assign(error, { message: wire.message, name: wire.name, stack: wire.stack, ...wire.fields });
      throw error;
    },
  });
}
