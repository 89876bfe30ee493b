import { cpSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Engine } from '../../src/api/engine.ts';
import type { ChatCompletionRequest, CompletionRequest } from '../../src/api/types.ts';
import type { GpuContext } from '../../src/gpu/context.ts';
import { AbortError, RequestError, SessionError } from '../../src/errors.ts';
import { createNodeContext } from '../../src/hosts/node/gpu.ts';
import { openModel } from '../../src/storage/locate.ts';
import { compareLogprobs, fixtureDir, golden, goldenLogprobs } from '../helpers/fixtures.ts';

let ctx: GpuContext;
let engine: Engine;
beforeAll(async () => {
  ctx = await createNodeContext({ adapter: 'llvmpipe' });
  engine = await Engine.load(ctx, await openModel(fixtureDir('tiny-qwen35')), { dtype: 'f32', contextLength: 512 });
});
afterAll(() => {
  engine?.destroy();
  ctx?.destroy();
});

type Request = ChatCompletionRequest & { stream?: false };
const ask = (extra: Partial<ChatCompletionRequest> = {}): Request => ({
  messages: [
    { role: 'system', content: 'Answer briefly.' },
    { role: 'user', content: 'What is a license?' },
  ],
  max_tokens: 12,
  reasoning: 'off',
  ...extra,
  stream: false,
});

async function ids(request: Request): Promise<number[]> {
  const out: number[] = [];
  await engine.chat.completions.create({ ...request, onToken: (id) => out.push(id) });
  return out;
}

describe('chat.completions', () => {
  it('gives the same tokens for the same seed, and others for another seed', async () => {
    const sampled = ask({ temperature: 1, seed: 7 });
    const a = await ids(sampled);
    expect(await ids(sampled)).toEqual(a);
    expect(await ids({ ...sampled, seed: 8 })).not.toEqual(a);
  });

  it('streams the same text the non-streaming call returns', async () => {
    const full = await engine.chat.completions.create(ask({ temperature: 0 }));
    let text = '';
    let last;
    for await (const chunk of await engine.chat.completions.create({ ...ask({ temperature: 0 }), stream: true })) {
      expect(chunk.object).toBe('chat.completion.chunk');
      text += chunk.choices[0].delta.content ?? '';
      last = chunk;
    }
    expect(text).toBe(full.choices[0].message.content);
    expect(last?.usage).toEqual(full.usage);
    expect(full.usage.completion_tokens).toBe(12);
    expect(full.choices[0].finish_reason).toBe('length');
  });

  it('cuts the answer at a stop string, which is not included', async () => {
    const full = (await engine.chat.completions.create(ask({ temperature: 0, max_tokens: 24 }))).choices[0].message.content!;
    const stop = full.slice(Math.floor(full.length / 2), Math.floor(full.length / 2) + 3);
    const cut = await engine.chat.completions.create(ask({ temperature: 0, max_tokens: 24, stop }));
    expect(cut.choices[0].message.content).toBe(full.slice(0, full.indexOf(stop)));
    expect(cut.choices[0].finish_reason).toBe('stop');
  });

  it('returns logprobs of the chosen tokens and their alternatives', async () => {
    const r = await engine.chat.completions.create(ask({ temperature: 0, logprobs: true, top_logprobs: 3 }));
    const content = r.choices[0].logprobs!.content;
    expect(content.length).toBeGreaterThan(0);
    for (const t of content) {
      expect(t.top_logprobs).toHaveLength(3);
      expect(t.logprob).toBeLessThanOrEqual(0);
      expect(t.logprob).toBeCloseTo(t.top_logprobs[0].logprob, 5);
    }
  });

  it('stops within one step of an abort, and the next request starts clean', async () => {
    const controller = new AbortController();
    const seen: number[] = [];
    let abortedAt = -1;
    const stream = await engine.chat.completions.create({
      ...ask({ max_tokens: 100, temperature: 0 }),
      stream: true,
      signal: controller.signal,
      onToken: (id) => seen.push(id),
    });
    await expect(
      (async () => {
        for await (const _ of stream) {
          if (seen.length === 3) {
            controller.abort();
            abortedAt = seen.length;
          }
        }
      })(),
    ).rejects.toThrow(AbortError);
    expect(seen.length - abortedAt).toBeLessThanOrEqual(1);
    expect(await ids(ask({ temperature: 0 }))).toEqual(await ids(ask({ temperature: 0 })));
  });

  it('closes the thought after the reasoning budget: at most N reasoning tokens, then </think>, then content', async () => {
    const budget = 4;
    const thinkEnd = engine.tokenizer!.tokenId('</think>')!;
    const out: number[] = [];
    const r = await engine.chat.completions.create({ ...ask({ max_tokens: 16, temperature: 0 }), reasoning: { budget }, onToken: (id) => out.push(id) });
    const at = out.indexOf(thinkEnd);
    expect(at).toBeGreaterThanOrEqual(0);
    expect(at).toBeLessThanOrEqual(budget);
    expect(out.slice(at, at + 1 + engine.tokenizer!.encode('\n\n').length)).toEqual(engine.tokenizer!.encode('</think>\n\n'));
    expect(r.usage.completion_tokens_details.reasoning_tokens).toBeLessThanOrEqual(budget + 1);
    expect(typeof r.choices[0].message.content).toBe('string');
  });

  it('refuses bad requests clearly, before any GPU work, leaving nothing half-done', async () => {
    const before = await ids(ask({ temperature: 0 }));
    const bad: [Partial<ChatCompletionRequest>, RegExp, typeof RequestError | typeof SessionError][] = [
      [{ messages: [{ role: 'wizard' as 'user', content: 'hi' }] }, /messages\[0\]\.role/, RequestError],
      [{ max_tokens: 0 }, /max_tokens: must be a positive integer/, RequestError],
      [{ max_tokens: 600 }, /exceed the context of 512 tokens/, SessionError],
      [{ messages: [{ role: 'user', content: 'x '.repeat(600) }] }, /context/, SessionError],
      [{ tools: [{ type: 'function', function: { name: '' } }] }, /tools\[0\]/, RequestError],
      [{ temperature: -1 }, /temperature/, RequestError],
    ];
    for (const [patch, message, type] of bad) {
      const request = ask(patch);
      await expect(engine.chat.completions.create(request), JSON.stringify(patch)).rejects.toThrow(type);
      await expect(engine.chat.completions.create(request)).rejects.toThrow(message);
    }
    expect(await ids(ask({ temperature: 0 }))).toEqual(before);
  });
});

describe('a model whose chat template fails', () => {
  it('gives a clear error for chats, and still serves raw completions', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'qwen-template-'));
    cpSync(fixtureDir('tiny-qwen35'), dir, { recursive: true });
    const configPath = join(dir, 'tokenizer_config.json');
    const config = JSON.parse(readFileSync(configPath, 'utf8'));
    config.chat_template = "{{ raise_exception('this template only takes tools') }}";
    writeFileSync(configPath, JSON.stringify(config));
    const broken = await Engine.load(ctx, await openModel(dir), { dtype: 'f32', contextLength: 128 });
    try {
      await expect(broken.chat.completions.create(ask())).rejects.toThrow(/this template only takes tools/);
      const r = await broken.completions.create({ prompt: 'The license', max_tokens: 4, temperature: 0 });
      expect(r.usage.completion_tokens).toBe(4);
    } finally {
      broken.destroy();
    }
  });
});

describe('completions', () => {
  it('continues raw text, streamed or not, the same way', async () => {
    const full = await engine.completions.create({ prompt: 'The license', max_tokens: 8, temperature: 0 });
    let text = '';
    for await (const chunk of await engine.completions.create({ prompt: 'The license', max_tokens: 8, temperature: 0, stream: true }))
      text += chunk.choices[0].text;
    expect(text).toBe(full.choices[0].text);
    expect(full.usage).toMatchObject({ prompt_tokens: engine.tokenizer!.encode('The license').length, completion_tokens: 8 });
  });

  it('cuts the text at a stop string, streamed or not', async () => {
    const full = (await engine.completions.create({ prompt: 'The license', max_tokens: 24, temperature: 0 })).choices[0].text;
    const stop = full.slice(Math.floor(full.length / 2), Math.floor(full.length / 2) + 3);
    const cut = await engine.completions.create({ prompt: 'The license', max_tokens: 24, temperature: 0, stop });
    expect(cut.choices[0].text).toBe(full.slice(0, full.indexOf(stop)));
    expect(cut.choices[0].finish_reason).toBe('stop');
    let text = '';
    let last;
    for await (const chunk of await engine.completions.create({ prompt: 'The license', max_tokens: 24, temperature: 0, stop, stream: true })) {
      text += chunk.choices[0].text;
      last = chunk;
    }
    expect(text).toBe(cut.choices[0].text);
    expect(last?.usage).toEqual(cut.usage);
  });

  it('refuses max_tokens, the context and sampling settings in the words chat uses, as generateIds does', async () => {
    const text = (extra: Partial<CompletionRequest>) => engine.completions.create({ prompt: 'The license', temperature: 0, ...extra, stream: false });
    const ids = (extra: Partial<Parameters<Engine['generateIds']>[0]>) => engine.generateIds({ promptIds: [1], maxTokens: 2, ...extra });
    const bad: [() => Promise<unknown>, typeof RequestError | typeof SessionError, RegExp, Record<string, unknown>][] = [
      [() => text({ max_tokens: 0 }), RequestError, /^max_tokens: must be a positive integer, got 0$/, { field: 'max_tokens' }],
      [() => ids({ maxTokens: 0 }), RequestError, /^maxTokens: must be a positive integer, got 0$/, { field: 'maxTokens' }],
      [() => text({ max_tokens: 600 }), SessionError, /^the prompt \(\d+ tokens\) \+ max_tokens \(600\) exceed the context of 512 tokens$/, {}],
      [() => ids({ maxTokens: 600 }), SessionError, /^the prompt \(1 tokens\) \+ maxTokens \(600\) exceed the context of 512 tokens$/, {}],
      [() => ids({ promptIds: Array(512).fill(1) }), SessionError, /^the prompt has 512 tokens; the context holds 512$/, {}],
      [() => text({ top_p: 2 }), RequestError, /^top_p: 2 must be in \(0, 1\] \(1 = off\)$/, { field: 'top_p', detail: '2 must be in (0, 1] (1 = off)' }],
      [() => ids({ sampling: { topP: 2 } }), RequestError, /^top_p: 2 must be in \(0, 1\] \(1 = off\)$/, { field: 'top_p' }],
      [() => text({ stop: [''] }), RequestError, /^stop: /, { field: 'stop' }],
    ];
    for (const [request, type, message, fields] of bad) {
      const error = await request().catch((e: unknown) => e);
      expect(error, String(message)).toBeInstanceOf(type);
      expect((error as Error).message).toMatch(message);
      expect(error).toMatchObject(fields);
    }
  });
});

// A stream holds the session from its first next(), never from its creation: a client that creates a stream
// and walks away (or aborts it, or stops early) must not lock the engine for every later request.
describe('the session queue and abandoned streams', () => {
  /** The request's result, or a failure when it is still waiting for the session after `ms`. */
  async function within<T>(ms: number, request: Promise<T>): Promise<T> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const blocked = new Promise<never>((_, fail) => (timer = setTimeout(() => fail(new Error(`still waiting for the session after ${ms} ms`)), ms)));
    try {
      return await Promise.race([request, blocked]);
    } finally {
      clearTimeout(timer);
    }
  }
  const next = () => within(60_000, engine.chat.completions.create(ask({ temperature: 0, max_tokens: 2 })));

  it('serves the next request while a stream that was created is never iterated', async () => {
    const idle = await engine.chat.completions.create({ ...ask({ temperature: 0 }), stream: true });
    expect((await next()).usage.completion_tokens).toBe(2);
    // The idle stream still works when it is finally read, in its turn.
    let chunks = 0;
    for await (const _ of idle) chunks++;
    expect(chunks).toBeGreaterThan(1);
  }, 120_000);

  it('frees the session when a stream is aborted before, between or while waiting for its turn', async () => {
    // Aborted before its first next().
    const early = new AbortController();
    const a = await engine.chat.completions.create({ ...ask({ max_tokens: 50 }), stream: true, signal: early.signal });
    early.abort();
    await expect(a[Symbol.asyncIterator]().next()).rejects.toThrow(AbortError);
    expect((await next()).usage.completion_tokens).toBe(2);

    // Aborted after one chunk, with no further next(): the session is free at once.
    const between = new AbortController();
    const b = await engine.chat.completions.create({ ...ask({ max_tokens: 50 }), stream: true, signal: between.signal });
    const it = b[Symbol.asyncIterator]();
    await it.next();
    between.abort();
    expect((await next()).usage.completion_tokens).toBe(2);
    await expect(it.next()).rejects.toThrow(AbortError);

    // Waiting behind a stream that holds the session: its abort rejects at once and gives the turn up.
    const holder = (await engine.chat.completions.create({ ...ask({ max_tokens: 50 }), stream: true }))[Symbol.asyncIterator]();
    await holder.next();
    const waiting = new AbortController();
    const w = (await engine.chat.completions.create({ ...ask({ max_tokens: 50 }), stream: true, signal: waiting.signal }))[Symbol.asyncIterator]();
    const pending = w.next();
    waiting.abort();
    await expect(within(10_000, pending)).rejects.toThrow(AbortError);
    await holder.return!();
    expect((await next()).usage.completion_tokens).toBe(2);
  }, 180_000);

  it('frees the session when the consumer stops early with return()', async () => {
    const stream = (await engine.completions.create({ prompt: 'The license', max_tokens: 50, temperature: 0, stream: true }))[Symbol.asyncIterator]();
    await stream.next();
    await stream.return!();
    expect((await next()).usage.completion_tokens).toBe(2);
  }, 120_000);
});

describe('token ids', () => {
  const g = golden('tiny-qwen35');

  it('scores ids as the golden log-probabilities, and refuses ids that are not tokens', async () => {
    const rows = new Float32Array(g.prompt_ids.length * g.vocab_size);
    await engine.score(g.prompt_ids, (r, first) => rows.set(r, first * g.vocab_size));
    expect(compareLogprobs(rows, goldenLogprobs('tiny-qwen35'), g.vocab_size).maxAbs).toBeLessThanOrEqual(5e-3);
    await expect(engine.score([5, g.vocab_size - 1], () => {})).rejects.toThrow(
      /^ids: must be a non-empty array of token ids below the tokenizer's \d+ \(ids\[1\] is \d+\)/,
    );
    await expect(engine.score([], () => {})).rejects.toThrow(RequestError);
    await expect(
      engine.score(
        Array.from({ length: 513 }, () => 5),
        () => {},
      ),
    ).rejects.toThrow(/^ids: 513 ids are more than the context of 512/);
  });

  it('serves ids without tokenizer.json (every row a token); chats and text are refused naming the model', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'qwen-no-tokenizer-'));
    cpSync(fixtureDir('tiny-qwen35'), dir, { recursive: true, filter: (path) => !/tokenizer|chat_template/.test(basename(path)) });
    const idsOnly = await Engine.load(ctx, await openModel(dir), { dtype: 'f32', contextLength: 256 });
    try {
      expect(idsOnly.tokenizer).toBeUndefined();
      // Without the tokenizer every row of the head is a token: the first greedy id is the argmax over all of them.
      const last = goldenLogprobs('tiny-qwen35').subarray((g.prompt_ids.length - 1) * g.vocab_size, g.prompt_ids.length * g.vocab_size);
      const r = await idsOnly.generateIds({ promptIds: g.prompt_ids, maxTokens: 4 });
      expect(r.ids[0]).toBe(last.indexOf(Math.max(...last)));
      expect(r.ids.length).toBeGreaterThan(0);
      await expect(idsOnly.chat.completions.create(ask())).rejects.toThrow(/^model: .* has no tokenizer\.json/);
      await expect(idsOnly.completions.create({ prompt: 'The license' })).rejects.toThrow(RequestError);
    } finally {
      idsOnly.destroy();
    }
  });

  it('refuses a context past max_position_embeddings rather than cutting it', async () => {
    await expect(Engine.load(ctx, await openModel(fixtureDir('tiny-qwen35')), { dtype: 'f32', contextLength: 10_000_000 })).rejects.toThrow(
      /context length 10000000 is more than the model's max_position_embeddings/,
    );
  });
});
