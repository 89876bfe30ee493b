import { Template } from '@huggingface/jinja';
import { QwenError, RequestError } from '../gpu/errors.ts';

export interface ChatToolCall {
  id?: string;
  type: 'function';
  function: { name: string; arguments: string | Record<string, unknown> };
}

export interface ChatMessage {
  role: 'system' | 'user' | 'assistant' | 'tool';
  content: string | null;
  reasoning_content?: string;
  tool_calls?: ChatToolCall[];
  tool_call_id?: string;
  name?: string;
}

export interface ToolDefinition {
  type: 'function';
  function: { name: string; description?: string; parameters?: Record<string, unknown> };
}

export interface RenderChatArgs {
  messages: ChatMessage[];
  tools?: ToolDefinition[];
  addGenerationPrompt?: boolean;
  /** Left undefined, the template's own default applies (Qwen3.5: thinking on). */
  enableThinking?: boolean;
  /** More template variables (bos_token, custom kwargs); the named arguments above take precedence. */
  extra?: Record<string, unknown>;
}

type Json = Record<string, unknown>;

const ROLES = ['system', 'user', 'assistant', 'tool'];

/**
 * Renders a conversation with the model's chat template (@huggingface/jinja), after validating it: a bad
 * message or tool throws RequestError naming its path and nothing is rendered. Tool-call arguments given as
 * JSON strings reach the template as objects, since templates iterate them (`arguments|items`).
 */
export function renderChat(template: string, args: RenderChatArgs): string {
  const messages = checkMessages(args.messages);
  const tools = args.tools === undefined ? undefined : checkTools(args.tools);
  const variables: Json = { ...args.extra, messages, add_generation_prompt: args.addGenerationPrompt ?? false };
  if (tools !== undefined) variables.tools = tools;
  if (args.enableThinking !== undefined) variables.enable_thinking = args.enableThinking;
  const compiled = compile(template);
  try {
    return compiled.render(variables);
  } catch (error) {
    const message = (error as Error).message;
    // raise_exception('...') messages are literals of the template: the template refuses this conversation.
    if (message !== '' && template.includes(message)) throw new RequestError(`rejected by the chat template: ${message}`, 'messages');
    throw new QwenError(`chat template failed to render: ${message}`);
  }
}

let cached: { source: string; template: Template } | undefined;

function compile(source: string): Template {
  if (cached?.source === source) return cached.template;
  if (typeof source !== 'string' || source === '') throw new QwenError('chat template is empty or not a string');
  let template: Template;
  try {
    template = new Template(source);
  } catch (error) {
    throw new QwenError(`chat template could not be parsed: ${(error as Error).message}`);
  }
  cached = { source, template };
  return template;
}

function checkMessages(messages: unknown): Json[] {
  if (!Array.isArray(messages)) throw new RequestError('must be a list of messages', 'messages');
  return messages.map((message, i) => checkMessage(message, `messages[${i}]`));
}

function checkMessage(value: unknown, path: string): Json {
  const message = object(value, path);
  const role = message.role;
  if (typeof role !== 'string' || !ROLES.includes(role)) {
    throw new RequestError(`unknown role ${JSON.stringify(role)} (expected ${ROLES.join(', ')})`, `${path}.role`);
  }
  const content = message.content ?? null;
  if (content !== null && typeof content !== 'string') throw new RequestError(`must be a string or null, not ${describe(content)}`, `${path}.content`);
  const out: Json = { role, content };
  for (const key of ['reasoning_content', 'tool_call_id', 'name']) {
    const field = message[key];
    if (field === undefined || field === null) continue;
    if (typeof field !== 'string') throw new RequestError(`must be a string, not ${describe(field)}`, `${path}.${key}`);
    out[key] = field;
  }
  const calls = message.tool_calls;
  if (calls !== undefined && calls !== null) {
    if (role !== 'assistant') throw new RequestError(`only assistant messages carry tool calls, not ${role}`, `${path}.tool_calls`);
    if (!Array.isArray(calls)) throw new RequestError(`must be a list, not ${describe(calls)}`, `${path}.tool_calls`);
    out.tool_calls = calls.map((call, j) => checkToolCall(call, `${path}.tool_calls[${j}]`));
  }
  return out;
}

function checkToolCall(value: unknown, path: string): Json {
  const call = object(value, path);
  if (call.type !== undefined && call.type !== 'function') throw new RequestError(`must be "function", not ${JSON.stringify(call.type)}`, `${path}.type`);
  const fn = object(call.function, `${path}.function`);
  const name = checkName(fn.name, `${path}.function.name`);
  const args = fn.arguments;
  if (args === undefined) throw new RequestError('is missing', `${path}.function.arguments`);
  let parsed: unknown = args;
  if (typeof args === 'string') {
    try {
      parsed = JSON.parse(args);
    } catch (error) {
      throw new RequestError(`not valid JSON (${(error as Error).message})`, `${path}.function.arguments`);
    }
  }
  if (!isPlainObject(parsed)) throw new RequestError(`must be a JSON object of named arguments, not ${describe(parsed)}`, `${path}.function.arguments`);
  const out: Json = { type: 'function', function: { name, arguments: parsed } };
  if (call.id !== undefined) out.id = call.id;
  return out;
}

function checkTools(tools: unknown): Json[] {
  if (!Array.isArray(tools)) throw new RequestError('must be a list of tool definitions', 'tools');
  return tools.map((value, i) => {
    const path = `tools[${i}]`;
    const tool = object(value, path);
    if (tool.type !== 'function') throw new RequestError(`must be "function", not ${JSON.stringify(tool.type)}`, `${path}.type`);
    const fn = object(tool.function, `${path}.function`);
    checkName(fn.name, `${path}.function.name`);
    if (fn.description !== undefined && typeof fn.description !== 'string') {
      throw new RequestError(`must be a string, not ${describe(fn.description)}`, `${path}.function.description`);
    }
    if (fn.parameters !== undefined && !isPlainObject(fn.parameters)) {
      throw new RequestError(`must be a JSON Schema object, not ${describe(fn.parameters)}`, `${path}.function.parameters`);
    }
    return tool;
  });
}

function checkName(name: unknown, path: string): string {
  if (typeof name !== 'string' || name.trim() === '') throw new RequestError('must be a non-empty string', path);
  return name;
}

function object(value: unknown, path: string): Json {
  if (value === undefined) throw new RequestError('is missing', path);
  if (!isPlainObject(value)) throw new RequestError(`must be an object, not ${describe(value)}`, path);
  return value;
}

function isPlainObject(value: unknown): value is Json {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function describe(value: unknown): string {
  if (value === null || value === undefined) return String(value);
  if (Array.isArray(value)) return 'a list';
  return typeof value === 'object' ? 'an object' : `a ${typeof value}`;
}
