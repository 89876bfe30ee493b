import type { ChatCompletionRequest, CompletionRequest, Reasoning } from '../api/types.ts';
import { AbortError, CapabilityError, QwenError, RequestError, SessionError, StageError } from '../errors.ts';

/**
 * OpenAI request bodies (as JSON off the wire, or a batch line's `body`) into Engine requests, and errors into
 * OpenAI's error shape: the one translation that `serve` and `batch` share. Fields the engine has no use for
 * but clients send by habit (`model`, `user`, `stream_options`, `n: 1`) are accepted; a field it cannot honour
 * is refused by name rather than ignored.
 */

const COMMON = new Set([
  'model',
  'max_tokens',
  'max_completion_tokens',
  'temperature',
  'top_p',
  'top_k',
  'min_p',
  'presence_penalty',
  'frequency_penalty',
  'repetition_penalty',
  'seed',
  'stop',
  'logprobs',
  'top_logprobs',
  'stream',
  'stream_options',
  'n',
  'user',
]);
const CHAT = new Set([...COMMON, 'messages', 'tools', 'tool_choice', 'reasoning', 'reasoning_effort', 'chat_template_kwargs']);
const COMPLETION = new Set([...COMMON, 'prompt', 'echo', 'suffix']);

type Body = Record<string, unknown>;

function objectBody(body: unknown): Body {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) throw new RequestError('the request body must be a JSON object', 'body');
  return body as Body;
}

function refuseUnknown(body: Body, known: ReadonlySet<string>): void {
  for (const key of Object.keys(body)) if (!known.has(key)) throw new RequestError('is not a field this server takes', key);
}

function optional<T>(body: Body, field: string, type: 'number' | 'boolean' | 'string'): T | undefined {
  const value = body[field];
  if (value === undefined || value === null) return undefined;
  if (typeof value !== type) throw new RequestError(`must be a ${type}, got ${JSON.stringify(value)}`, field);
  return value as T;
}

/** The sampling fields shared by chat and text completions (ranges are the engine's to check). */
function sampling(body: Body) {
  const n = optional<number>(body, 'n', 'number');
  if (n !== undefined && n !== 1) throw new RequestError(`only 1 choice per request is generated, got ${n}`, 'n');
  const maxTokens = optional<number>(body, 'max_completion_tokens', 'number') ?? optional<number>(body, 'max_tokens', 'number');
  const stop = body.stop;
  if (stop !== undefined && stop !== null && typeof stop !== 'string' && !(Array.isArray(stop) && stop.every((s) => typeof s === 'string')))
    throw new RequestError('must be a string or a list of strings', 'stop');
  const topLogprobs = optional<number>(body, 'top_logprobs', 'number');
  // OpenAI's completions take `logprobs` as a count; chat takes a boolean and `top_logprobs`.
  const logprobs = body.logprobs;
  if (logprobs !== undefined && logprobs !== null && typeof logprobs !== 'boolean' && typeof logprobs !== 'number')
    throw new RequestError(`must be a boolean (or, for completions, a count), got ${JSON.stringify(logprobs)}`, 'logprobs');
  return {
    max_tokens: maxTokens,
    temperature: optional<number>(body, 'temperature', 'number'),
    top_p: optional<number>(body, 'top_p', 'number'),
    top_k: optional<number>(body, 'top_k', 'number'),
    min_p: optional<number>(body, 'min_p', 'number'),
    presence_penalty: optional<number>(body, 'presence_penalty', 'number'),
    frequency_penalty: optional<number>(body, 'frequency_penalty', 'number'),
    repetition_penalty: optional<number>(body, 'repetition_penalty', 'number'),
    seed: optional<number>(body, 'seed', 'number'),
    stop: (stop ?? undefined) as string | string[] | undefined,
    logprobs: typeof logprobs === 'number' ? logprobs > 0 : (logprobs ?? undefined),
    top_logprobs: typeof logprobs === 'number' ? logprobs : topLogprobs,
    stream: optional<boolean>(body, 'stream', 'boolean') ?? false,
  };
}

/** `reasoning` as the engine takes it ('on' | 'off' | { budget }), or OpenAI's reasoning_effort / Qwen's enable_thinking. */
function reasoning(body: Body): Reasoning | undefined {
  const r = body.reasoning;
  if (r !== undefined && r !== null) {
    if (r === 'on' || r === 'off') return r;
    if (typeof r === 'object' && !Array.isArray(r) && typeof (r as { budget?: unknown }).budget === 'number')
      return { budget: (r as { budget: number }).budget };
    throw new RequestError(`must be "on", "off" or {"budget": N}, got ${JSON.stringify(r)}`, 'reasoning');
  }
  const effort = body.reasoning_effort;
  if (effort !== undefined && effort !== null) {
    if (effort === 'none' || effort === 'minimal') return 'off';
    if (effort === 'low' || effort === 'medium' || effort === 'high') return 'on';
    throw new RequestError(`must be one of none, minimal, low, medium, high; got ${JSON.stringify(effort)}`, 'reasoning_effort');
  }
  const kwargs = body.chat_template_kwargs;
  if (kwargs !== undefined && kwargs !== null) {
    if (typeof kwargs !== 'object' || Array.isArray(kwargs)) throw new RequestError('must be an object', 'chat_template_kwargs');
    const thinking = (kwargs as Body).enable_thinking;
    if (thinking !== undefined && typeof thinking !== 'boolean') throw new RequestError('must be a boolean', 'chat_template_kwargs.enable_thinking');
    if (thinking !== undefined) return thinking ? 'on' : 'off';
  }
  return undefined;
}

/** A /v1/chat/completions body as an Engine request (messages and tools are checked by the engine, field by field). */
export function chatRequestFromBody(raw: unknown): ChatCompletionRequest {
  const body = objectBody(raw);
  refuseUnknown(body, CHAT);
  if (!Array.isArray(body.messages)) throw new RequestError('must be a non-empty array of messages', 'messages');
  const choice = body.tool_choice;
  if (choice !== undefined && choice !== null && choice !== 'auto')
    throw new RequestError(`only "auto" is supported (the model decides when to call a tool), got ${JSON.stringify(choice)}`, 'tool_choice');
  if (body.tools !== undefined && body.tools !== null && !Array.isArray(body.tools)) throw new RequestError('must be an array of tool definitions', 'tools');
  return {
    ...sampling(body),
    messages: body.messages as ChatCompletionRequest['messages'],
    tools: (body.tools ?? undefined) as ChatCompletionRequest['tools'],
    reasoning: reasoning(body),
  };
}

/** A /v1/completions body as an Engine request (one prompt string). */
export function completionRequestFromBody(raw: unknown): CompletionRequest {
  const body = objectBody(raw);
  refuseUnknown(body, COMPLETION);
  if (body.echo === true) throw new RequestError('echo is not supported', 'echo');
  if (body.suffix !== undefined && body.suffix !== null) throw new RequestError('suffix is not supported', 'suffix');
  if (typeof body.prompt !== 'string') throw new RequestError('must be a string (one prompt per request)', 'prompt');
  return { ...sampling(body), prompt: body.prompt };
}

/** OpenAI's error object: `{ error: { message, type, param, code } }`, with the HTTP status that goes with it. */
export interface OpenAiError {
  status: number;
  body: { error: { message: string; type: string; param: string | null; code: string | null } };
}

/** Any error thrown while serving a request, as OpenAI reports it. */
export function openAiError(error: unknown): OpenAiError {
  const make = (status: number, type: string, message: string, param: string | null = null, code: string | null = null): OpenAiError => ({
    status,
    body: { error: { message, type, param, code } },
  });
  if (error instanceof RequestError) return make(400, 'invalid_request_error', error.message, error.field, 'invalid_value');
  if (error instanceof SessionError) return make(400, 'invalid_request_error', error.message, null, 'context_length_exceeded');
  if (error instanceof AbortError) return make(499, 'request_cancelled', error.message, null, 'cancelled');
  // A pipeline stage down: the server is unavailable until the group is whole again, not the request at fault.
  if (error instanceof StageError) return make(503, 'server_error', `${error.name}: ${error.message}`, null, 'stage_unavailable');
  if (error instanceof CapabilityError) return make(500, 'server_error', error.message, null, 'capability');
  if (error instanceof QwenError) return make(500, 'server_error', `${error.name}: ${error.message}`);
  return make(500, 'server_error', error instanceof Error ? `${error.name}: ${error.message}` : String(error));
}
