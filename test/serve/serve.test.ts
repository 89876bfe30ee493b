import { type ChildProcess, spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { fixtureDir } from '../helpers/fixtures.ts';

// `qwen-webgpu serve` as users run it (a child process on 127.0.0.1, --port 0), driven by the official openai client.
const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const MODEL = fixtureDir('tiny-qwen35');
const API_KEY = 'test-key';
/**
 * A hang guard, not a speed check: most cases take a second or two on lavapipe, but a fresh server's first request
 * compiles every pipeline, tens of seconds when CI runs other files beside it.
 */
const TEST_TIMEOUT_MS = 180_000;

interface Server {
  proc: ChildProcess;
  url: string;
  stderr: () => string;
  exited: Promise<number | null>;
}

/** Starts the server and resolves once it prints its address (rejects with its stderr if it exits first). */
function startServer(host: 'node' | 'deno', args: string[], env: Record<string, string> = {}): Promise<Server> {
  const [cmd, pre] = host === 'node' ? [process.execPath, ['bin/qwen-webgpu.js']] : [`${ROOT}node_modules/.bin/deno`, ['task', '--quiet', 'qwen-webgpu']];
  // Own process group: the Deno task's child is ended with it.
  const proc = spawn(cmd, [...pre, 'serve', '--model', MODEL, '--port', '0', ...args], { cwd: ROOT, env: { ...process.env, ...env }, detached: true });
  let stdout = '';
  let stderr = '';
  proc.stderr?.on('data', (d) => {
    stderr += d;
  });
  const exited = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve(code)));
  return new Promise((resolve, reject) => {
    proc.stdout?.on('data', (d) => {
      stdout += d;
      const match = /listening on (http:\/\/\S+)/.exec(stdout);
      if (match) resolve({ proc, url: match[1], stderr: () => stderr, exited });
    });
    exited.then((code) => reject(new Error(`serve exited ${code} before listening:\n${stderr}`)));
  });
}

function stopServer(server: Server | undefined): void {
  if (server?.proc.exitCode === null && server.proc.pid) process.kill(-server.proc.pid, 'SIGKILL');
}

/** /metrics as name{labels} → value, for the samples without a bucket label. */
async function metrics(url: string): Promise<Map<string, number>> {
  const text = await (await fetch(`${url}/metrics`)).text();
  const samples = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (line.startsWith('#') || line.includes('le="') || !line) continue;
    const [series, value] = line.split(' ');
    samples.set(series.replace(/\{model_name="[^"]*"(,)?/, '{').replace('{}', ''), Number(value));
  }
  return samples;
}

/** Requests running once the server has let go of aborted ones (polls /metrics for up to 10 s). */
async function waitIdle(url: string): Promise<number> {
  let running = -1;
  for (let i = 0; i < 100 && running !== 0; i++) {
    running = (await metrics(url)).get('vllm:num_requests_running') ?? -1;
    if (running !== 0) await new Promise((r) => setTimeout(r, 100));
  }
  return running;
}

const ask = (content: string) => [{ role: 'user' as const, content }];
/** /health's status once the server has seen a stop signal, which it does between a request's steps: later on a loaded machine. */
async function untilStopping(url: string): Promise<number> {
  let health = await fetch(`${url}/health`);
  for (let i = 0; i < 200 && health.status === 200; i++) {
    await new Promise((r) => setTimeout(r, 50));
    health = await fetch(`${url}/health`);
  }
  return health.status;
}

/** A greedy completion of this prompt runs to max_tokens on the fixture (no eos): a request that lasts. */
const LONG = { prompt: 'hi', temperature: 0, max_tokens: 3000 };

describe('serve (node)', { timeout: TEST_TIMEOUT_MS }, () => {
  let server: Server;
  let client: OpenAI;
  beforeAll(async () => {
    server = await startServer('node', ['--adapter', 'llvmpipe', '--served-model-name', 'tiny', '--max-body-kb', '4', '--max-batch', '2'], {
      QWEN_API_KEY: API_KEY,
    });
    client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: API_KEY, maxRetries: 0 });
  });
  afterAll(() => stopServer(server));

  it('lists the one model under its served name', async () => {
    const models = await client.models.list();
    expect(models.data.map((m) => m.id)).toEqual(['tiny']);
  });

  it('says at start how requests run: sequences decoded together, and speculation', async () => {
    await vi.waitFor(() => expect(server.stderr()).toContain('serving tiny: up to 2 sequences decode together, speculative decoding off\n'));
  });

  it('answers a greedy chat completion', async () => {
    const r = await client.chat.completions.create({ model: 'tiny', messages: ask('Hello'), temperature: 0, max_tokens: 4, seed: 1 });
    expect(r.object).toBe('chat.completion');
    expect(r.model).toBe('tiny');
    expect(r.choices[0].message.role).toBe('assistant');
    expect(['stop', 'length']).toContain(r.choices[0].finish_reason);
    expect(r.usage?.completion_tokens).toBeGreaterThan(0);
    expect(r.usage?.completion_tokens).toBeLessThanOrEqual(4);
    const again = await client.chat.completions.create({ model: 'tiny', messages: ask('Hello'), temperature: 0, max_tokens: 4, seed: 1 });
    expect(again.choices[0].message).toEqual(r.choices[0].message);
  });

  it('streams a chat completion as server-sent events', async () => {
    const stream = await client.chat.completions.create({ model: 'tiny', messages: ask('Hello'), temperature: 0, max_tokens: 6, stream: true });
    const chunks = [];
    for await (const chunk of stream) chunks.push(chunk);
    expect(chunks.length).toBeGreaterThan(1);
    expect(chunks.every((c) => c.object === 'chat.completion.chunk' && c.model === 'tiny')).toBe(true);
    expect(chunks[chunks.length - 1].choices[0].finish_reason).not.toBeNull();
    expect(chunks[chunks.length - 1].usage?.completion_tokens).toBeLessThanOrEqual(6);
  });

  it('answers a text completion, plain and streamed, with logprobs and stop', async () => {
    const r = await client.completions.create({ model: 'tiny', prompt: 'Once upon', temperature: 0, max_tokens: 5, logprobs: 2, stop: ['\n\n'] });
    expect(r.object).toBe('text_completion');
    expect(typeof r.choices[0].text).toBe('string');
    expect(r.usage?.completion_tokens).toBeLessThanOrEqual(5);
    const stream = await client.completions.create({ model: 'tiny', prompt: 'Once upon', temperature: 0, max_tokens: 5, stream: true });
    let text = '';
    for await (const chunk of stream) text += chunk.choices[0].text;
    expect(text).toBe(r.choices[0].text);
  });

  it('serves concurrent requests past the batch (the third waits for a free sequence)', async () => {
    const replies = await Promise.all(
      ['One', 'Two', 'Three'].map((prompt) => client.completions.create({ model: 'tiny', prompt, temperature: 0, max_tokens: 8 })),
    );
    for (const r of replies) expect(r.usage?.completion_tokens).toBeGreaterThan(0);
    expect((await metrics(server.url)).get('qwen_max_batch')).toBe(2);
    await expect(waitIdle(server.url)).resolves.toBe(0);
  });

  it('takes tools and answers in the chat shape', async () => {
    const r = await client.chat.completions.create({
      model: 'tiny',
      messages: ask('What is the weather in Paris?'),
      tools: [
        {
          type: 'function',
          function: { name: 'get_weather', description: 'Weather of a city', parameters: { type: 'object', properties: { city: { type: 'string' } } } },
        },
      ],
      reasoning_effort: 'none',
      temperature: 0,
      max_tokens: 8,
    });
    const choice = r.choices[0];
    expect(['stop', 'length', 'tool_calls']).toContain(choice.finish_reason);
    // The fixture's weights are random: a tool call is not expected, but one that comes must parse.
    for (const call of choice.message.tool_calls ?? []) if (call.type === 'function') JSON.parse(call.function.arguments);
  });

  it('refuses a missing or wrong API key with 401, but keeps /health and /metrics open', async () => {
    const wrong = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'wrong', maxRetries: 0 });
    await expect(wrong.models.list()).rejects.toMatchObject({ status: 401, code: 'invalid_api_key' });
    const bare = await fetch(`${server.url}/v1/models`);
    expect(bare.status).toBe(401);
    expect((await bare.json()).error.type).toBe('invalid_request_error');
    expect((await fetch(`${server.url}/health`)).status).toBe(200);
    expect((await fetch(`${server.url}/metrics`)).status).toBe(200);
  });

  it('answers a malformed body with 400 naming the field, a large one with 413, an unknown route with 404', async () => {
    await expect(client.chat.completions.create({ model: 'tiny', messages: ask('Hi'), temperature: 'hot' as unknown as number })).rejects.toMatchObject({
      status: 400,
      param: 'temperature',
    });
    await expect(client.chat.completions.create({ model: 'tiny', messages: [{ role: 'wizard', content: 'x' }] as never })).rejects.toMatchObject({
      status: 400,
    });
    const post = (path: string, body: string) =>
      fetch(`${server.url}${path}`, { method: 'POST', headers: { Authorization: `Bearer ${API_KEY}`, 'Content-Type': 'application/json' }, body });
    const invalid = await post('/v1/chat/completions', '{"messages": [');
    expect(invalid.status).toBe(400);
    expect((await invalid.json()).error.param).toBe('body');
    const large = await post('/v1/completions', JSON.stringify({ prompt: 'x'.repeat(5000) }));
    expect(large.status).toBe(413);
    const unknown = await post('/v1/embeddings', '{}');
    expect(unknown.status).toBe(404);
    expect((await unknown.json()).error.message).toMatch(/embeddings/);
  });

  it('aborts a request whose client goes away, and serves the next', async () => {
    const controller = new AbortController();
    const stream = await client.completions.create({ model: 'tiny', ...LONG, stream: true }, { signal: controller.signal });
    let chunks = 0;
    // The client ends the stream quietly once aborted.
    for await (const _ of stream) if (++chunks === 3) controller.abort();
    expect(chunks).toBeLessThan(LONG.max_tokens);
    await expect(waitIdle(server.url)).resolves.toBe(0);
    // Not streamed: the closed connection alone says the client went away.
    const before = (await metrics(server.url)).get('vllm:generation_tokens_total') ?? 0;
    const plain = new AbortController();
    setTimeout(() => plain.abort(), 300);
    await expect(client.completions.create({ model: 'tiny', ...LONG }, { signal: plain.signal })).rejects.toThrow(/abort/i);
    await expect(waitIdle(server.url)).resolves.toBe(0);
    expect((await metrics(server.url)).get('vllm:generation_tokens_total')).toBeLessThan(before + LONG.max_tokens);
    const next = await client.completions.create({ model: 'tiny', prompt: 'Hello', temperature: 0, max_tokens: 3 });
    expect(next.usage?.completion_tokens).toBeGreaterThan(0);
  });

  it('reports health and Prometheus metrics', async () => {
    const health = await fetch(`${server.url}/health`);
    expect(await health.json()).toEqual({ status: 'ok' });
    const text = await (await fetch(`${server.url}/metrics`)).text();
    expect(text).toMatch(/^# HELP vllm:num_requests_running /m);
    expect(text).toMatch(/^# TYPE vllm:e2e_request_latency_seconds histogram$/m);
    const m = await metrics(server.url);
    expect(m.get('vllm:num_requests_running')).toBe(0);
    expect(m.get('vllm:num_requests_waiting')).toBe(0);
    expect(m.get('vllm:generation_tokens_total')).toBeGreaterThan(10);
    expect(m.get('vllm:prompt_tokens_total')).toBeGreaterThan(0);
    expect(m.get('vllm:time_to_first_token_seconds_count')).toBeGreaterThan(3);
    expect(m.get('vllm:e2e_request_latency_seconds_count')).toBeGreaterThan(3);
    expect(m.get('vllm:request_success_total{finished_reason="length"}')).toBeGreaterThan(0);
    expect(m.get('vllm:kv_cache_usage_perc')).toBe(0);
    expect(m.get('qwen_generation_tokens_per_second')).toBeGreaterThanOrEqual(0);
  });
});

describe('serve (node): continuous batching', { timeout: 120_000 }, () => {
  let server: Server;
  let client: OpenAI;
  beforeAll(async () => {
    server = await startServer('node', ['--adapter', 'llvmpipe', '--max-batch', '8']);
    client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'unused', maxRetries: 0 });
  });
  afterAll(() => stopServer(server));

  it('8 concurrent greedy requests give exactly the tokens each gives alone', async () => {
    const prompts = ['One', 'Two fish', 'Red fish, blue fish', 'A', 'The license says', 'Hello there', 'x y z', 'Once upon a time'];
    const tokens = async (prompt: string, i: number) => {
      const r = await client.completions.create({ model: 'm', prompt, temperature: 0, max_tokens: 6 + i, logprobs: 1 });
      return { text: r.choices[0].text, tokens: (r.choices[0].logprobs as unknown as { content: { token: string }[] }).content.map((t) => t.token) };
    };
    const alone = [];
    for (const [i, p] of prompts.entries()) alone.push(await tokens(p, i));
    expect(await Promise.all(prompts.map(tokens))).toEqual(alone);
    const m = await metrics(server.url);
    expect(m.get('qwen_max_batch')).toBe(8);
    const finished = [...m].filter(([k]) => k.startsWith('vllm:request_success_total')).reduce((n, [, v]) => n + v, 0);
    expect(finished).toBe(16);
  });
});

describe('serve (node): speculative decoding', { timeout: 120_000 }, () => {
  const servers: Server[] = [];
  afterAll(() => servers.forEach(stopServer));

  it('--max-batch 1 --draft-tokens 3 answers exactly what --no-mtp does: plain, streamed, with penalties and logprobs', async () => {
    for (const flags of [['--draft-tokens', '3'], ['--no-mtp']])
      servers.push(await startServer('node', ['--adapter', 'llvmpipe', '--max-batch', '1', ...flags]));
    const answers = async (server: Server) => {
      const client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'unused', maxRetries: 0 });
      const plain = await client.completions.create({ model: 'm', prompt: 'Red fish, blue fish', temperature: 0, max_tokens: 12 });
      const seeded = await client.chat.completions.create({ model: 'm', messages: ask('Hello'), temperature: 0.8, seed: 5, max_tokens: 10 });
      const penalised = await client.completions.create({ model: 'm', prompt: 'One', temperature: 0, presence_penalty: 0.5, max_tokens: 8 });
      let streamed = '';
      for await (const chunk of await client.completions.create({ model: 'm', prompt: 'Once upon a time', temperature: 0, max_tokens: 10, stream: true }))
        streamed += chunk.choices[0]?.text ?? '';
      const withLogprobs = await client.completions.create({ model: 'm', prompt: 'Hi', temperature: 0, frequency_penalty: 0.7, logprobs: 3, max_tokens: 8 });
      expect((withLogprobs.choices[0].logprobs as unknown as { content: { top_logprobs: unknown[] }[] }).content[0].top_logprobs).toHaveLength(3);
      return [plain.choices[0].text, seeded.choices[0].message.content, penalised.choices[0].text, streamed, withLogprobs.choices[0].logprobs];
    };
    expect(await answers(servers[0])).toEqual(await answers(servers[1]));
    // A request with penalties and logprobs speculates too.
    const drafts = async () => (await metrics(servers[0].url)).get('vllm:spec_decode_num_drafts_total') ?? 0;
    const before = await drafts();
    const client = new OpenAI({ baseURL: `${servers[0].url}/v1`, apiKey: 'unused', maxRetries: 0 });
    await client.completions.create({ model: 'm', prompt: 'Two', temperature: 0, presence_penalty: 1, logprobs: 2, max_tokens: 8 });
    expect(await drafts()).toBeGreaterThan(before);
    const speculating = await metrics(servers[0].url);
    expect(speculating.get('vllm:spec_decode_num_drafts_total')).toBeGreaterThan(10);
    expect(speculating.get('vllm:spec_decode_num_draft_tokens_total')).toBe(3 * speculating.get('vllm:spec_decode_num_drafts_total')!);
    expect([...(await metrics(servers[1].url)).keys()].filter((k) => k.includes('spec_decode'))).toEqual([]);
    expect(servers[0].stderr()).toMatch(/serving \S+: one sequence at a time, speculative decoding with the MTP block\n/);
    expect(servers[1].stderr()).toMatch(/serving \S+: one sequence at a time, speculative decoding off\n/);
  });

  it('--max-batch 4 --draft-tokens 2: a request alone speculates, requests together decode in the batch, each answers what it answers alone', async () => {
    const server = await startServer('node', ['--adapter', 'llvmpipe', '--max-batch', '4', '--draft-tokens', '2']);
    servers.push(server);
    const client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'unused', maxRetries: 0 });
    const prompts = ['One', 'Red fish, blue fish', 'Hello there', 'Once upon a time', 'x y z'];
    const complete = (prompt: string, i: number) =>
      client.completions
        .create({ model: 'm', prompt, max_tokens: 8, ...(i % 2 ? { temperature: 0.8, seed: i } : { temperature: 0 }) })
        .then((r) => r.choices[0].text);
    const drafts = async () => (await metrics(server.url)).get('vllm:spec_decode_num_drafts_total') ?? 0;
    const alone: string[] = [];
    for (const [i, p] of prompts.entries()) alone.push(await complete(p, i));
    const aloneDrafts = await drafts();
    expect(aloneDrafts).toBeGreaterThan(0);
    // Together the first may speculate a while, and moves into the batch once a slot is free there.
    expect(await Promise.all(prompts.map(complete))).toEqual(alone);
    expect(server.stderr()).toMatch(
      /serving \S+: up to 4 sequences decode together; a request that finds no other running decodes speculatively with the MTP block\n/,
    );
  });
});

describe('serve (node) with no queue', { timeout: TEST_TIMEOUT_MS }, () => {
  let server: Server;
  beforeAll(async () => {
    server = await startServer('node', ['--adapter', 'llvmpipe', '--max-batch', '1', '--max-queue', '0', '--cors', 'http://example.test']);
  });
  afterAll(() => stopServer(server));

  it('answers 429 with Retry-After past max-batch + max-queue', async () => {
    const client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'unused', maxRetries: 0 });
    const controller = new AbortController();
    const stream = await client.completions.create({ model: 'm', ...LONG, stream: true }, { signal: controller.signal });
    const iterator = stream[Symbol.asyncIterator]();
    await iterator.next(); // the first request runs
    const refused = await fetch(`${server.url}/v1/completions`, { method: 'POST', body: JSON.stringify({ prompt: 'x', max_tokens: 1 }) });
    expect(refused.status).toBe(429);
    expect(Number(refused.headers.get('retry-after'))).toBeGreaterThan(0);
    expect((await refused.json()).error.type).toBe('rate_limit_exceeded');
    controller.abort();
    await iterator.next().catch(() => undefined);
  });

  it('sends CORS headers to the origins given', async () => {
    const r = await fetch(`${server.url}/v1/models`, { headers: { Origin: 'http://example.test' } });
    expect(r.headers.get('access-control-allow-origin')).toBe('http://example.test');
  });

  it('on SIGTERM finishes the running request, then exits 0 and stops listening', async () => {
    let response: Response | undefined;
    for (let i = 0; i < 50 && response?.status !== 200; i++) {
      // The aborted request of the test before may still be letting go of its place.
      response = await fetch(`${server.url}/v1/completions`, { method: 'POST', body: JSON.stringify({ ...LONG, max_tokens: 600, stream: true }) });
      if (response.status !== 200) await new Promise((r) => setTimeout(r, 100));
    }
    const reader = response!.body!.getReader();
    await reader.read();
    server.proc.kill('SIGTERM');
    // Stopping: no new work, while the running request goes on.
    expect(await untilStopping(server.url)).toBe(503);
    const late = await fetch(`${server.url}/v1/completions`, { method: 'POST', body: JSON.stringify({ prompt: 'x', max_tokens: 1 }) });
    expect(late.status).toBe(503);
    let body = '';
    const decoder = new TextDecoder();
    for (let chunk = await reader.read(); !chunk.done; chunk = await reader.read()) body += decoder.decode(chunk.value);
    expect(body).toMatch(/"finish_reason":"length"/);
    expect(body.trimEnd().endsWith('data: [DONE]')).toBe(true);
    expect(await server.exited, server.stderr()).toBe(0);
    await expect(fetch(`${server.url}/health`)).rejects.toThrow();
  });
});

describe('serve (node): stop signals', { timeout: TEST_TIMEOUT_MS }, () => {
  let server: Server;
  beforeAll(async () => {
    server = await startServer('node', ['--adapter', 'llvmpipe', '--max-batch', '1']);
  });
  afterAll(() => stopServer(server));

  it('a signal relayed to the whole process group stops once, gracefully; a second signal later aborts what runs', async () => {
    const response = await fetch(`${server.url}/v1/completions`, { method: 'POST', body: JSON.stringify({ ...LONG, stream: true }) });
    const reader = response.body!.getReader();
    await reader.read();
    // As a terminal's Ctrl-C or a wrapper that forwards it: the same signal twice at once.
    server.proc.kill('SIGTERM');
    server.proc.kill('SIGTERM');
    // The later signal must come well after the first was seen (on a loaded machine, seen late), not just sent.
    expect(await untilStopping(server.url)).toBe(503);
    await new Promise((r) => setTimeout(r, 1500));
    expect(server.proc.exitCode, 'still finishing the running request').toBeNull();
    server.proc.kill('SIGTERM');
    let body = '';
    const decoder = new TextDecoder();
    for (let chunk = await reader.read(); !chunk.done; chunk = await reader.read()) body += decoder.decode(chunk.value);
    expect(body).not.toMatch(/"finish_reason":"length"/);
    expect(await server.exited, server.stderr()).toBe(0);
    expect(server.stderr()).toContain('stopping now: aborting the running requests');
  });
});

describe('serve (deno)', { timeout: TEST_TIMEOUT_MS }, () => {
  let server: Server;
  beforeAll(async () => {
    server = await startServer('deno', ['--api-key', API_KEY]);
  });
  afterAll(() => stopServer(server));

  it('answers the openai client with a chat completion', async () => {
    const client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: API_KEY, maxRetries: 0 });
    const r = await client.chat.completions.create({ model: 'any', messages: ask('Hello'), temperature: 0, max_tokens: 4 });
    expect(r.choices[0].message.role).toBe('assistant');
    expect(r.usage?.completion_tokens).toBeGreaterThan(0);
    await expect(new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'wrong', maxRetries: 0 }).models.list()).rejects.toMatchObject({ status: 401 });
  });

  it('exits 0 on SIGTERM', async () => {
    // `deno task` runs the CLI as its child: signal the whole group, as a terminal's Ctrl-C does.
    process.kill(-server.proc.pid!, 'SIGTERM');
    expect(await server.exited, server.stderr()).toBe(0);
    await expect(fetch(`${server.url}/health`)).rejects.toThrow();
  });
});
