/** Typed errors: each names what failed (the file, tensor, field, limit or capability), so a user can act on it. */

export class QwenError extends Error {
  override name = 'QwenError';
}

/** No usable WebGPU adapter, or one that computes wrongly (Dawn's null backend, a broken driver). */
export class AdapterError extends QwenError {
  override name = 'AdapterError';
}

/** A request the adapter cannot satisfy: a missing feature or a limit that is too small. */
export class CapabilityError extends QwenError {
  override name = 'CapabilityError';
  constructor(message: string, readonly capability: string) {
    super(message);
  }
}

/** A checkpoint that is malformed or does not match its config. `file` and `tensor` say where. */
export class ModelFormatError extends QwenError {
  override name = 'ModelFormatError';
  constructor(message: string, readonly file?: string, readonly tensor?: string) {
    super([file, tensor].filter(Boolean).join(': ') + (file || tensor ? ': ' : '') + message);
  }
}

/** A config.json field that is missing, of the wrong type, or not a Qwen3.5 value. */
export class ConfigError extends QwenError {
  override name = 'ConfigError';
  constructor(message: string, readonly field: string, readonly file = 'config.json') {
    super(`${file}: ${field}: ${message}`);
  }
}

/**
 * A caller's request that cannot be served as given: a chat message, a tool definition, or a conversation the
 * chat template rejects. `field` is the path at fault (`messages[2].tool_calls[0].function.arguments`), so an
 * API layer can answer 400 with it.
 */
export class RequestError extends QwenError {
  override name = 'RequestError';
  constructor(message: string, readonly field: string) {
    super(`${field}: ${message}`);
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
 * The origin's storage cannot hold a download (navigator.storage.estimate() says so before it starts, or a
 * write failed with QuotaExceededError). `bytesNeeded` and `bytesAvailable` say by how much.
 */
export class QuotaError extends QwenError {
  override name = 'QuotaError';
  constructor(message: string, readonly bytesNeeded: number, readonly bytesAvailable: number) {
    super(message);
  }
}

/**
 * A model file that could not be fetched: the connection failed or dropped (after the bounded retries), or
 * the server went silent for longer than the timeout. `file` and `url` say which.
 */
export class NetworkError extends QwenError {
  override name = 'NetworkError';
  constructor(message: string, readonly file: string, readonly url: string) {
    super(`${file}: ${message}`);
  }
}
