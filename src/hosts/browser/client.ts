/**
 * The page's side of the browser host: an engine object with the same API as `Engine`, whose work all runs
 * in a module Web Worker (worker.ts). The page's thread never touches the GPU; it sends plain data and
 * receives ids, chunks and completions.
 */
import * as Comlink from 'comlink';
import { AbortError, AdapterError, ContractError, RequestError } from '../../errors.ts';
import type { ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, Completion, CompletionChunk, CompletionRequest } from '../../api/types.ts';
import { parseModelRef } from '../../storage/hub.ts';
import {
  type ChunkSink,
  type GenerateRequest,
  type GenerateResult,
  type LoadProgress,
  type LoadRequest,
  type LoadResult,
  type StoredModel,
  type WorkerApi,
  installErrorTransfer,
} from './protocol.ts';

export interface CreateEngineOptions {
  /** Where the worker script is (default: worker.js beside this module, as the build emits it). */
  workerUrl?: string | URL;
}

export interface BrowserLoadRequest extends LoadRequest {
  onProgress?: (p: LoadProgress) => void;
  signal?: AbortSignal;
}

export interface BrowserGenerateRequest extends GenerateRequest {
  signal?: AbortSignal;
}

export interface BrowserEngine {
  /** Loads a model from a URL (an earlier model is released first). */
  load(request: BrowserLoadRequest): Promise<LoadResult>;
  /** Token ids in, token ids out, with measured prefill and decode speed. */
  generate(request: BrowserGenerateRequest): Promise<GenerateResult>;
  readonly chat: {
    completions: {
      create(request: ChatCompletionRequest & { stream: true }): Promise<AsyncIterable<ChatCompletionChunk>>;
      create(request: ChatCompletionRequest & { stream?: false }): Promise<ChatCompletion>;
    };
  };
  readonly completions: {
    create(request: CompletionRequest & { stream: true }): Promise<AsyncIterable<CompletionChunk>>;
    create(request: CompletionRequest & { stream?: false }): Promise<Completion>;
  };
  /** Models kept in IndexedDB (`load` with store: true, the default, puts them there). */
  readonly models: {
    /** Every stored model: id, url, bytes, complete (false: an interrupted download, resumed by the next load), date. */
    list(): Promise<StoredModel[]>;
    /** Removes every record of model `id`; false when none was stored under it. */
    delete(id: string): Promise<boolean>;
  };
  /** Releases the model; the worker and its GPU device stay for the next `load`. */
  unload(): Promise<void>;
  /** Releases everything and stops the worker. */
  terminate(): Promise<void>;
}

/** Starts the engine's worker. Nothing is loaded until `load({ model: url })`. */
export async function createEngine(options: CreateEngineOptions = {}): Promise<BrowserEngine> {
  if (typeof Worker === 'undefined') throw new AdapterError('createEngine needs Web Workers (call it on a web page)');
  installErrorTransfer();
  const worker = options.workerUrl
    ? new Worker(options.workerUrl, { type: 'module', name: 'qwen-webgpu' })
    : new Worker(new URL('./worker.ts', import.meta.url), { type: 'module', name: 'qwen-webgpu' });
  const failed = new Promise<never>((_, reject) => {
    worker.addEventListener('error', (event) => {
      reject(new AdapterError(`the qwen-webgpu worker failed: ${event.message || 'it did not start (is worker.js served beside index.js?)'}`));
    });
  });
  failed.catch(() => undefined);
  const remote = Comlink.wrap<WorkerApi>(worker);
  // Comlink resolves a call's whole property path in the worker; its types only promise that for proxy-marked objects.
  const remoteChat = (remote.chat as unknown as { completions: unknown }).completions as Comlink.Remote<WorkerApi['chat']['completions']>;
  const remoteCompletions = remote.completions as unknown as Comlink.Remote<WorkerApi['completions']>;
  const remoteModels = remote.models as unknown as Comlink.Remote<WorkerApi['models']>;
  let nextId = 1;
  let terminated = false;

  /** Runs one remote call under an id that the signal's abort event reaches. */
  const call = async <T>(signal: AbortSignal | undefined, body: (id: number) => Promise<T>, id = nextId++): Promise<T> => {
    if (terminated) throw new ContractError('this engine was terminated', 'engine');
    if (signal?.aborted) throw new AbortError('aborted');
    const onAbort = () => void remote.abort(id).catch(() => undefined);
    signal?.addEventListener('abort', onAbort, { once: true });
    try {
      return await Promise.race([body(id), failed]);
    } finally {
      signal?.removeEventListener('abort', onAbort);
    }
  };

  const create =
    <Req extends { stream?: boolean; signal?: AbortSignal; onToken?: unknown }, Chunk>(
      send: (request: Omit<Req, 'signal' | 'onToken'>, id: number, onChunks?: ChunkSink<Chunk>) => Promise<unknown>,
    ) =>
    async (request: Req): Promise<unknown> => {
      const { signal, onToken, ...wire } = request;
      if (onToken !== undefined) throw new RequestError('is not available in the browser client; use stream: true', 'onToken');
      if (!request.stream) return call(signal, (id) => send(wire, id));
      if (signal?.aborted) throw new AbortError('aborted');
      const id = nextId++;
      return streamFrom<Chunk>(id, (sink) => call(signal, () => send(wire, id, Comlink.proxy(sink)), id));
    };

  /**
   * An async iterable over a remote stream. The worker calls `sink` with batches; the iterator hands out
   * chunks one by one and ends (or throws the worker's error, AbortError included) when the remote call does.
   * Leaving the loop early (`break`) aborts the request in the worker.
   */
  const streamFrom = <Chunk>(id: number, start: (sink: ChunkSink<Chunk>) => Promise<unknown>): AsyncIterable<Chunk> => {
    const queue: Chunk[] = [];
    let done = false;
    let error: unknown;
    let wake: (() => void) | undefined;
    const notify = () => {
      wake?.();
      wake = undefined;
    };
    start((batch) => {
      queue.push(...batch);
      notify();
    }).then(
      () => {
        done = true;
        notify();
      },
      (e: unknown) => {
        done = true;
        error = e;
        notify();
      },
    );
    return {
      [Symbol.asyncIterator]: () => ({
        next: async (): Promise<IteratorResult<Chunk>> => {
          for (;;) {
            if (queue.length) return { value: queue.shift()!, done: false };
            if (done) {
              if (error !== undefined) throw error;
              return { value: undefined, done: true };
            }
            await new Promise<void>((resolve) => (wake = resolve));
          }
        },
        return: async (): Promise<IteratorResult<Chunk>> => {
          if (!done) await remote.abort(id).catch(() => undefined);
          queue.length = 0;
          return { value: undefined, done: true };
        },
      }),
    };
  };

  return {
    load: ({ onProgress, signal, ...request }) => {
      // A hub id (ORG/NAME[@REV]) goes as it is: the worker resolves it at hubEndpoint.
      const model = parseModelRef(request.model) ? request.model : new URL(request.model, globalThis.location?.href).href;
      return call(signal, (id) => remote.load({ ...request, model }, id, onProgress && Comlink.proxy(onProgress)));
    },
    generate: ({ signal, ...request }) => call(signal, (id) => remote.generate(request, id)),
    chat: {
      completions: {
        create: create<ChatCompletionRequest, ChatCompletionChunk>((r, id, sink) => remoteChat.create(r, id, sink)),
      } as BrowserEngine['chat']['completions'],
    },
    completions: {
      create: create<CompletionRequest, CompletionChunk>((r, id, sink) => remoteCompletions.create(r, id, sink)),
    } as BrowserEngine['completions'],
    models: {
      list: () => call(undefined, () => remoteModels.list()),
      delete: (id) => call(undefined, () => remoteModels.delete(id)),
    },
    unload: () => call(undefined, () => remote.unload()),
    terminate: async () => {
      if (terminated) return;
      try {
        await Promise.race([remote.dispose(), failed, new Promise((resolve) => setTimeout(resolve, 5000))]);
      } catch {
        // The worker is going away regardless.
      } finally {
        terminated = true;
        remote[Comlink.releaseProxy]();
        worker.terminate();
      }
    },
  };
}
