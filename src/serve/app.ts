import { Hono } from 'hono';
import type { Context } from 'hono';
import { bodyLimit } from 'hono/body-limit';
import { cors } from 'hono/cors';
import { type SSEStreamingApi, streamSSE } from 'hono/streaming';
import type { Engine } from '../api/engine.ts';
import type { FinishReason, Usage } from '../api/types.ts';
import { RequestError } from '../errors.ts';
import { Admission, type Ticket } from './admission.ts';
import { Metrics } from './metrics.ts';
import { chatRequestFromBody, completionRequestFromBody, openAiError } from './openai_body.ts';

/** An OpenAI-compatible HTTP API over one Engine: chat and text completions (streamed as server-sent events), models, health, metrics. */

export interface ServeOptions {
  /** The model's id in /v1/models and in responses' `model`. */
  modelName: string;
  /** Requests to /v1/ must carry `Authorization: Bearer <apiKey>` (none: open). */
  apiKey?: string;
  /** Origins allowed to call from a browser (none: no CORS headers). */
  corsOrigins?: string[];
  /** Request bodies larger than this are refused with 413. */
  maxBodyBytes: number;
  /** Sequences the engine decodes together, and requests that may wait for one: past both, 429. */
  maxBatch: number;
  maxQueue: number;
  /** How long `stop()` lets running requests finish before aborting them. */
  graceMs: number;
}

export interface ServeApp {
  app: Hono;
  /** Stops taking requests (503), lets running ones finish within the grace period, aborts the rest, resolves when none runs. */
  stop(): Promise<void>;
  /** Aborts every running request now (a stop that should not wait). */
  abort(): void;
}

type ServedEngine = Pick<Engine, 'chat' | 'completions' | 'gauges' | 'unavailable'>;
/** What the server reads or sets of a response or chunk: the model's name, the finish reason and (on the last) the usage. */
type Finished = { model: string; choices: { finish_reason: FinishReason | null }[]; usage?: Usage };
type Hooks = { signal: AbortSignal; onToken: () => void };
type Generate = (body: unknown, hooks: Hooks) => Promise<Finished | AsyncIterable<Finished>>;

const RETRY_AFTER_S = 1;

function errorResponse(status: number, message: string, type: string, code: string | null, headers: Record<string, string> = {}): Response {
  return Response.json({ error: { message, type, param: null, code } }, { status, headers });
}

function engineErrorResponse(error: unknown): Response {
  const { status, body } = openAiError(error);
  return Response.json(body, { status });
}

async function jsonBody(c: Context): Promise<unknown> {
  const text = await c.req.text();
  try {
    return JSON.parse(text);
  } catch (error) {
    throw new RequestError(`is not valid JSON (${(error as Error).message})`, 'body', { cause: error });
  }
}

export function createApp(engine: ServedEngine, options: ServeOptions): ServeApp {
  const app = new Hono();
  const admission = new Admission(options.maxBatch + options.maxQueue);
  const metrics = new Metrics(options.modelName);

  app.onError((error) => engineErrorResponse(error));
  app.notFound((c) => errorResponse(404, `no route ${c.req.method} ${c.req.path}`, 'invalid_request_error', 'not_found'));
  if (options.corsOrigins?.length) app.use('*', cors({ origin: options.corsOrigins }));
  app.use('/v1/*', async (c, next) => {
    if (options.apiKey !== undefined && c.req.header('authorization') !== `Bearer ${options.apiKey}`)
      return errorResponse(401, 'a valid API key is required (Authorization: Bearer <key>)', 'invalid_request_error', 'invalid_api_key');
    await next();
  });
  app.use(
    '/v1/*',
    bodyLimit({
      maxSize: options.maxBodyBytes,
      onError: () => errorResponse(413, `the request body is larger than ${options.maxBodyBytes} bytes`, 'invalid_request_error', 'body_too_large'),
    }),
  );

  /** One generation request from admission to release; streamed as server-sent events when the request asks. */
  async function serveGeneration(c: Context, generate: Generate): Promise<Response> {
    const ticket = admission.enter(c.req.raw.signal);
    if (ticket === 'stopping') return errorResponse(503, 'the server is shutting down', 'server_error', 'shutting_down');
    if (ticket === 'full')
      return errorResponse(429, `the server is busy (${admission.limit} requests in flight); retry later`, 'rate_limit_exceeded', 'rate_limit_exceeded', {
        'Retry-After': String(RETRY_AFTER_S),
      });
    const started = performance.now();
    let tokens = 0;
    const hooks: Hooks = {
      signal: ticket.signal,
      onToken: () => {
        metrics.token();
        if (++tokens === 1) metrics.firstToken((performance.now() - started) / 1000);
      },
    };
    const finished = (last: Finished | undefined) =>
      metrics.success(last?.usage?.prompt_tokens ?? 0, last?.choices[0]?.finish_reason ?? 'length', (performance.now() - started) / 1000);
    let streaming = false;
    try {
      const result = await generate(await jsonBody(c), hooks);
      if (!(Symbol.asyncIterator in result)) {
        finished(result);
        return c.json({ ...result, model: options.modelName });
      }
      streaming = true;
      return streamSSE(c, (sse) => streamChunks(sse, result, ticket, finished));
    } catch (error) {
      return engineErrorResponse(error);
    } finally {
      if (!streaming) ticket.release();
    }
  }

  async function streamChunks(
    sse: SSEStreamingApi,
    chunks: AsyncIterable<Finished>,
    ticket: Ticket,
    finished: (last: Finished | undefined) => void,
  ): Promise<void> {
    sse.onAbort(() => ticket.abort());
    try {
      let last: Finished | undefined;
      for await (const chunk of chunks) {
        if (sse.aborted) return;
        last = chunk;
        await sse.writeSSE({ data: JSON.stringify({ ...chunk, model: options.modelName }) });
      }
      await sse.writeSSE({ data: '[DONE]' });
      finished(last);
    } catch (error) {
      // The status line is sent: an error past the first chunk is reported as an event, as OpenAI does.
      if (!sse.aborted) await sse.writeSSE({ data: JSON.stringify(openAiError(error).body) });
    } finally {
      ticket.release();
    }
  }

  app.post('/v1/chat/completions', (c) =>
    serveGeneration(c, (body, hooks) => {
      const request = { ...chatRequestFromBody(body), ...hooks };
      return request.stream ? engine.chat.completions.create({ ...request, stream: true }) : engine.chat.completions.create({ ...request, stream: false });
    }),
  );
  app.post('/v1/completions', (c) =>
    serveGeneration(c, (body, hooks) => {
      const request = { ...completionRequestFromBody(body), ...hooks };
      return request.stream ? engine.completions.create({ ...request, stream: true }) : engine.completions.create({ ...request, stream: false });
    }),
  );
  app.get('/v1/models', (c) => c.json({ object: 'list', data: [{ id: options.modelName, object: 'model', created: 0, owned_by: 'qwen-webgpu' }] }));
  app.get('/health', (c) => {
    if (!admission.accepting) return c.json({ status: 'shutting down' }, 503);
    const down = engine.unavailable();
    return down ? c.json({ status: 'unavailable', reason: down }, 503) : c.json({ status: 'ok' });
  });
  app.get('/metrics', (c) => c.text(metrics.render(engine.gauges()), 200, { 'Content-Type': 'text/plain; version=0.0.4; charset=utf-8' }));

  return { app, stop: () => admission.stop(options.graceMs), abort: () => admission.abortAll() };
}
