import type { ChatMessage, ToolDefinition } from '../text/chat_template.ts';

/** OpenAI-shaped request and response types (chat.completions and completions), as WebLLM and llama-server take them. */

export type Reasoning = 'off' | 'on' | { budget: number };

export interface SamplingRequest {
  max_tokens?: number;
  temperature?: number;
  top_p?: number;
  top_k?: number;
  min_p?: number;
  presence_penalty?: number;
  frequency_penalty?: number;
  repetition_penalty?: number;
  seed?: number;
  stop?: string | string[];
  /** Return the sampled tokens' logprobs; `top_logprobs` alternatives per token (0-20). */
  logprobs?: boolean;
  top_logprobs?: number;
  signal?: AbortSignal;
  /** Engine extension: called with every generated token id (sampled or forced, the eos id included). */
  onToken?: (id: number) => void;
}

export interface ChatCompletionRequest extends SamplingRequest {
  messages: ChatMessage[];
  tools?: ToolDefinition[];
  /** 'on' (default when the template thinks), 'off' (rendered with enable_thinking=false), or a thinking-token budget. */
  reasoning?: Reasoning;
  stream?: boolean;
}

export interface CompletionRequest extends SamplingRequest {
  prompt: string;
  stream?: boolean;
}

export type FinishReason = 'stop' | 'length' | 'tool_calls';

export interface ToolCall {
  id: string;
  type: 'function';
  function: { name: string; arguments: string };
}

export interface TokenLogprob {
  token: string;
  logprob: number;
  bytes: number[];
  top_logprobs: { token: string; logprob: number; bytes: number[] }[];
}

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  completion_tokens_details: { reasoning_tokens: number };
}

export interface ChatCompletion {
  id: string;
  object: 'chat.completion';
  created: number;
  model: string;
  choices: {
    index: 0;
    message: { role: 'assistant'; content: string | null; reasoning_content?: string; tool_calls?: ToolCall[] };
    finish_reason: FinishReason;
    logprobs: { content: TokenLogprob[] } | null;
  }[];
  usage: Usage;
}

export interface ChatCompletionChunk {
  id: string;
  object: 'chat.completion.chunk';
  created: number;
  model: string;
  choices: {
    index: 0;
    delta: { role?: 'assistant'; content?: string; reasoning_content?: string; tool_calls?: (ToolCall & { index: number })[] };
    finish_reason: FinishReason | null;
    logprobs: { content: TokenLogprob[] } | null;
  }[];
  /** On the last chunk only. */
  usage?: Usage;
}

export interface Completion {
  id: string;
  object: 'text_completion';
  created: number;
  model: string;
  choices: { index: 0; text: string; finish_reason: FinishReason; logprobs: { content: TokenLogprob[] } | null }[];
  usage: Usage;
}

export interface CompletionChunk {
  id: string;
  object: 'text_completion';
  created: number;
  model: string;
  choices: { index: 0; text: string; finish_reason: FinishReason | null; logprobs: { content: TokenLogprob[] } | null }[];
  usage?: Usage;
}
