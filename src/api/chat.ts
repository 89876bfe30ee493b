import { StreamDecoder } from '../text/stream_decoder.ts';
import { parseToolCalls } from '../text/tool_calls.ts';
import type { Tokenizer } from '../text/tokenizer.ts';
import type { ToolDefinition } from '../text/chat_template.ts';
import { type GenerationPlan, type TokenEvent, generateTokens } from '../runtime/generation.ts';
import { TextStream } from './text_stream.ts';
import type { TokenSequence } from '../runtime/sequence.ts';
import type { GpuSampler } from '../runtime/sampler.ts';
import type { ChatCompletion, ChatCompletionChunk, CompletionChunk, FinishReason, TokenLogprob, ToolCall, Usage } from './types.ts';
import { InternalError } from '../errors.ts';

export interface StreamContext {
  session: TokenSequence;
  sampler: GpuSampler;
  tokenizer: Tokenizer;
  plan: GenerationPlan;
  stops: string[];
  tools: ToolDefinition[];
  withLogprobs: boolean;
  id: string;
  model: string;
}

const TOOL_CALL_OPEN = '<tool_call>';

/**
 * The token loop under every stream (chat and text completions): iterate it with `for await`; afterwards
 * `reason` and `count` say how the generation ended and after how many tokens (the eos id that ended it
 * counts, though it is not yielded). `stopped()` is asked after each token has been handled (a stop string
 * seen): the generation then ends as 'stop'. However the iteration ends (done, stopped, the consumer's
 * `return()`, a failure), the token generator is closed, so steps it submitted ahead give their buffers back.
 */
export class TokenLoop implements AsyncIterable<TokenEvent> {
  reason: FinishReason = 'length';
  count = 0;

  constructor(
    private readonly c: Pick<StreamContext, 'session' | 'sampler' | 'plan'>,
    private readonly stopped: () => boolean,
  ) {}

  async *[Symbol.asyncIterator](): AsyncGenerator<TokenEvent> {
    const tokens = generateTokens(this.c.session, this.c.sampler, this.c.plan);
    try {
      for (;;) {
        const next = await tokens.next();
        if (next.done) {
          this.reason = next.value;
          if (next.value === 'stop') this.count++; // the eos token itself
          return;
        }
        this.count++;
        yield next.value;
        if (this.stopped()) {
          this.reason = 'stop';
          return;
        }
      }
    } finally {
      await tokens.return('stop');
    }
  }
}

const usage = (plan: GenerationPlan, completionTokens: number, reasoningTokens: number): Usage => ({
  prompt_tokens: plan.promptIds.length,
  completion_tokens: completionTokens,
  total_tokens: plan.promptIds.length + completionTokens,
  completion_tokens_details: { reasoning_tokens: reasoningTokens },
});

/**
 * The chat completion as a stream of chunks: reasoning and answer text decoded incrementally (never a
 * broken character), stop strings cut, tool calls parsed at the end into OpenAI `tool_calls`. The
 * non-streaming response is this stream collected (collectChat), so both agree token for token.
 */
export async function* chatChunks(c: StreamContext): AsyncGenerator<ChatCompletionChunk> {
  const created = Math.floor(Date.now() / 1000);
  const chunk = (
    delta: ChatCompletionChunk['choices'][0]['delta'],
    finish: FinishReason | null = null,
    logprobs: TokenLogprob[] = [],
  ): ChatCompletionChunk => ({
    id: c.id,
    object: 'chat.completion.chunk',
    created,
    model: c.model,
    choices: [{ index: 0, delta, finish_reason: finish, logprobs: c.withLogprobs && logprobs.length ? { content: logprobs } : null }],
  });
  const reasoningText = new StreamDecoder(c.tokenizer);
  const answerText = new StreamDecoder(c.tokenizer);
  const withTools = c.tools.length > 0;
  const answer = new TextStream(c.stops, withTools ? [TOOL_CALL_OPEN] : [], c.plan.thinking);
  let reasoningTokens = 0;
  yield chunk({ role: 'assistant', content: '' });

  const loop = new TokenLoop(c, () => answer.stopped);
  for await (const t of loop) {
    if (t.reasoning) {
      reasoningTokens++;
      if (t.id !== c.plan.thinkEndId) {
        const text = reasoningText.push(t.id);
        if (text) yield chunk({ reasoning_content: text });
      }
      continue;
    }
    const text = answer.push(answerText.push(t.id));
    const logprobs = c.withLogprobs && !t.forced ? [tokenLogprob(c.tokenizer, t)] : [];
    if (text || logprobs.length) yield chunk(text ? { content: text } : {}, null, logprobs);
  }
  let reason = loop.reason;
  const lastReasoning = reasoningText.flush();
  if (lastReasoning) yield chunk({ reasoning_content: lastReasoning });
  const tail = answer.push(answerText.flush());
  const { text, rest } = answer.finish();
  let toolCalls: ToolCall[] = [];
  let remaining = tail + rest;
  if (withTools && text.includes(TOOL_CALL_OPEN)) {
    const parsed = parseToolCalls(text, { tools: c.tools });
    toolCalls = parsed.toolCalls;
    const shown = text.length - rest.length - tail.length;
    remaining = parsed.content.length > shown ? parsed.content.slice(shown) : '';
  }
  if (remaining) yield chunk({ content: remaining });
  if (toolCalls.length > 0) {
    yield chunk({ tool_calls: toolCalls.map((call, index) => ({ index, ...call })) });
    reason = 'tool_calls';
  }
  yield { ...chunk({}, reason), usage: usage(c.plan, loop.count, reasoningTokens) };
}

/** A text completion as a stream of chunks: the continuation decoded incrementally, stop strings cut. */
export async function* completionChunks(c: Omit<StreamContext, 'tools'>): AsyncGenerator<CompletionChunk> {
  const created = Math.floor(Date.now() / 1000);
  const chunk = (piece: string, finish: FinishReason | null, logprobs: TokenLogprob[]): CompletionChunk => ({
    id: c.id,
    object: 'text_completion',
    created,
    model: c.model,
    choices: [{ index: 0, text: piece, finish_reason: finish, logprobs: c.withLogprobs ? { content: logprobs } : null }],
  });
  const decoder = new StreamDecoder(c.tokenizer);
  const text = new TextStream(c.stops);
  const loop = new TokenLoop(c, () => text.stopped);
  for await (const t of loop) {
    const piece = text.push(decoder.push(t.id));
    const logprobs = c.withLogprobs ? [tokenLogprob(c.tokenizer, t)] : [];
    if (piece || logprobs.length) yield chunk(piece, null, logprobs);
  }
  const rest = text.push(decoder.flush()) + text.finish().rest;
  yield { ...chunk(rest, loop.reason, []), usage: usage(c.plan, loop.count, 0) };
}

export function tokenLogprob(tokenizer: Tokenizer, t: TokenEvent): TokenLogprob {
  const entry = (id: number, logprob: number) => {
    const token = tokenizer.decode([id]);
    return { token, logprob, bytes: [...new TextEncoder().encode(token)] };
  };
  return { ...entry(t.id, t.logprob ?? 0), top_logprobs: (t.top ?? []).map((a) => entry(a.id, a.logprob)) };
}

/** The stream collected into one chat.completion. */
export async function collectChat(chunks: AsyncIterable<ChatCompletionChunk>, withLogprobs: boolean): Promise<ChatCompletion> {
  let content = '';
  let reasoning = '';
  const toolCalls: ToolCall[] = [];
  const logprobs: TokenLogprob[] = [];
  let last: ChatCompletionChunk | undefined;
  for await (const ch of chunks) {
    const d = ch.choices[0].delta;
    content += d.content ?? '';
    reasoning += d.reasoning_content ?? '';
    for (const { index: _, ...call } of d.tool_calls ?? []) toolCalls.push(call);
    logprobs.push(...(ch.choices[0].logprobs?.content ?? []));
    last = ch;
  }
  if (!last?.usage) throw new InternalError('internal: the chat stream ended without usage');
  return {
    id: last.id,
    object: 'chat.completion',
    created: last.created,
    model: last.model,
    choices: [
      {
        index: 0,
        message: {
          role: 'assistant',
          content: content.length > 0 || toolCalls.length === 0 ? content : null,
          ...(reasoning ? { reasoning_content: reasoning.trim() } : {}),
          ...(toolCalls.length ? { tool_calls: toolCalls } : {}),
        },
        finish_reason: last.choices[0].finish_reason ?? 'length',
        logprobs: withLogprobs ? { content: logprobs } : null,
      },
    ],
    usage: last.usage,
  };
}
