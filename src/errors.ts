/**
 * Typed errors: each names what failed (the file, tensor, field, op, limit or capability), so a user can act on
 * it. Every error qwen-webgpu throws is one of these; a foreign error (the filesystem's, the tokenizer
 * library's, the jinja interpreter's) is wrapped in the class that says what failed, with the original as `cause`.
 * Classes whose message starts with a name (`field: ...`) keep the rest of it as `detail`.
 */

export class QwenError extends Error {
  override name = 'QwenError';
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
  }
}

/**
 * No usable WebGPU adapter, or one that computes wrongly (Dawn's null backend, a broken driver); in a browser also
 * no place to run one (no Web Workers, no WebGPU in workers, a worker that failed to start).
 */
export class AdapterError extends QwenError {
  override name = 'AdapterError';
}

/** A request the adapter cannot satisfy: a missing feature or a limit that is too small. */
export class CapabilityError extends QwenError {
  override name = 'CapabilityError';
  constructor(
    message: string,
    readonly capability: string,
    options?: ErrorOptions,
  ) {
    super(message, options);
  }
}

/** A checkpoint that is malformed or does not match its config. `file` and `tensor` say where. */
export class ModelFormatError extends QwenError {
  override name = 'ModelFormatError';
  constructor(
    readonly detail: string,
    readonly file?: string,
    readonly tensor?: string,
    options?: ErrorOptions,
  ) {
    super([file, tensor].filter(Boolean).join(': ') + (file || tensor ? ': ' : '') + detail, options);
  }
}

/** A config.json field that is missing, of the wrong type, or not a Qwen3.5 value. */
export class ConfigError extends QwenError {
  override name = 'ConfigError';
  constructor(
    readonly detail: string,
    readonly field: string,
    readonly file = 'config.json',
    options?: ErrorOptions,
  ) {
    super(`${file}: ${field}: ${detail}`, options);
  }
}

/**
 * A caller's request that cannot be served as given: a chat message, a tool definition, a sampling setting,
 * or a conversation the chat template rejects. `field` is the path at fault
 * (`messages[2].tool_calls[0].function.arguments`), so an API layer can answer 400 with it.
 */
export class RequestError extends QwenError {
  override name = 'RequestError';
  constructor(
    readonly detail: string,
    readonly field: string,
    options?: ErrorOptions,
  ) {
    super(`${field}: ${detail}`, options);
  }
}

/** A session asked for more than it holds (context length, memory). */
export class SessionError extends QwenError {
  override name = 'SessionError';
}

/** The caller aborted the operation through its AbortSignal. */
export class AbortError extends QwenError {
  override name = 'AbortError';
}

export function throwIfAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw new AbortError('aborted');
}

/**
 * The model's chat template failed: it could not be parsed, it passed a bound of rendering (time, characters,
 * `range()` size), or it broke while rendering. (A template that refuses a conversation with
 * `raise_exception` is a RequestError on `messages`.)
 */
export class TemplateError extends QwenError {
  override name = 'TemplateError';
}

/** The browser's model store (IndexedDB) cannot give or take what was asked: a model not stored whole, a refused write. */
export class StorageError extends QwenError {
  override name = 'StorageError';
}

/**
 * The origin's storage cannot hold a download (navigator.storage.estimate() says so before it starts, or a
 * write failed with QuotaExceededError). `bytesNeeded` and `bytesAvailable` say by how much.
 */
export class QuotaError extends StorageError {
  override name = 'QuotaError';
  constructor(
    message: string,
    readonly bytesNeeded: number,
    readonly bytesAvailable: number,
    options?: ErrorOptions,
  ) {
    super(message, options);
  }
}

/**
 * A model file that could not be fetched: the connection failed or dropped (after the bounded retries), or
 * the server went silent for longer than the timeout. `file` and `url` say which.
 */
export class NetworkError extends QwenError {
  override name = 'NetworkError';
  constructor(
    readonly detail: string,
    readonly file: string,
    readonly url: string,
    options?: ErrorOptions,
  ) {
    super(`${file}: ${detail}`, options);
  }
}

/**
 * A function called against its contract: a kernel given shapes, counts or buffers that break its
 * preconditions, the sampler used before `begin`, a codec handed the wrong number of values, an object used
 * after it was finished. `op` names the function. It is a bug in the caller, not in the request or the model.
 */
export class ContractError extends QwenError {
  override name = 'ContractError';
  constructor(
    readonly detail: string,
    readonly op: string,
    options?: ErrorOptions,
  ) {
    super(`${op}: ${detail}`, options);
  }
}

/** A state qwen-webgpu itself should never reach (a tensor the plan needs was never loaded): a bug to report. */
export class InternalError extends QwenError {
  override name = 'InternalError';
}

/**
 * A pipeline stage (runtime/pipeline) that failed, hung, broke the frame protocol, or was refused at the handshake
 * (another model, revision, dtype, layer range or protocol version). `stage` names it; requests in flight fail with
 * it and the server answers 503 until the group is whole again.
 */
export class StageError extends QwenError {
  override name = 'StageError';
  constructor(
    readonly detail: string,
    readonly stage: string,
    options?: ErrorOptions,
  ) {
    super(`${stage}: ${detail}`, options);
  }
}

/** A command line that cannot be run as written: an unknown command or flag, a missing or malformed value. */
export class UsageError extends QwenError {
  override name = 'UsageError';
}

/** Every class above by its `name`: what crosses a worker boundary is rebuilt as its own class. */
export const ERROR_CLASSES: Readonly<Record<string, new (...args: never[]) => QwenError>> = {
  QwenError,
  AdapterError,
  CapabilityError,
  ModelFormatError,
  ConfigError,
  RequestError,
  SessionError,
  AbortError,
  TemplateError,
  StorageError,
  QuotaError,
  NetworkError,
  ContractError,
  InternalError,
  StageError,
  UsageError,
};
