import { Environment, Interpreter, Template } from '@huggingface/jinja';
import { QwenError, RequestError, TemplateError } from '../errors.ts';

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
    return renderBounded(compiled, variables, TEMPLATE_LIMITS);
  } catch (error) {
    if (error instanceof TemplateError) throw new TemplateError(`chat template: ${error.message}`, { cause: error });
    if (error instanceof QwenError) throw error; // raise_exception's RequestError
    throw new TemplateError(`chat template failed to render: ${(error as Error).message}`, { cause: error });
  }
}

/**
 * Bounds on one rendering of a chat template (a template is code from the model's files): a template that
 * loops for ever, builds a huge text or asks for a huge range() stops with an error instead of taking the
 * process's memory or time. Real Qwen3.5 prompts are far inside them.
 */
export const TEMPLATE_LIMITS = {
  /** Characters of the rendered prompt, and of any one string value made while rendering. */
  maxOutputChars: 16 * 1024 * 1024,
  /** Characters of all the block outputs made while rendering (loop bodies included), summed. */
  maxProducedChars: 64 * 1024 * 1024,
  /** Wall-clock milliseconds. */
  maxMs: 5000,
  /** Items of one range(). */
  maxRange: 1_000_000,
};
export type TemplateLimits = typeof TEMPLATE_LIMITS;

type Evaluate = (this: Interpreter, statement: unknown, environment: Environment) => { type: string; value: unknown };

/**
 * Template.render with limits (@huggingface/jinja has none): the same globals, an interpreter whose
 * evaluate / evaluateBlock count time and the characters produced, and a range() that refuses huge ranges.
 */
export function renderBounded(template: Template, variables: Record<string, unknown>, limits: TemplateLimits = TEMPLATE_LIMITS): string {
  const deadline = performance.now() + limits.maxMs;
  const env = new Environment();
  const globals: Record<string, unknown> = {
    false: false,
    true: true,
    none: null,
    False: false,
    True: true,
    None: null,
    // The template refuses this conversation.
    raise_exception: (message: unknown) => {
      throw new RequestError(`rejected by the chat template: ${String(message)}`, 'messages');
    },
    range: (start: number, stop?: number, step = 1) => boundedRange(start, stop, step, limits.maxRange),
    strftime_now: (format: string) => strftime(new Date(), String(format)),
  };
  for (const [name, value] of Object.entries({ ...globals, ...variables })) env.set(name, value);
  const interpreter = new Interpreter(env);
  const proto = Interpreter.prototype as unknown as { evaluate: Evaluate; evaluateBlock: Evaluate };
  let steps = 0;
  let produced = 0;
  const check = (value: { type: string; value: unknown }) => {
    if (value?.type === 'StringValue' && (value.value as string).length > limits.maxOutputChars) {
      throw new TemplateError(`rendering made a text of ${(value.value as string).length} characters, more than the limit of ${limits.maxOutputChars}`);
    }
    return value;
  };
  const tick = () => {
    if ((++steps & 255) === 0 && performance.now() > deadline) {
      throw new TemplateError(`rendering took more than ${limits.maxMs} ms (a template that loops without end?)`);
    }
  };
  // Every expression and every block (a loop body, even an empty one, is one block per iteration) ticks.
  Object.assign(interpreter, {
    evaluate(this: Interpreter, statement: unknown, environment: Environment) {
      tick();
      return check(proto.evaluate.call(this, statement, environment));
    },
    evaluateBlock(this: Interpreter, statements: unknown, environment: Environment) {
      tick();
      const block = check(proto.evaluateBlock.call(this, statements, environment));
      produced += (block.value as string).length;
      if (produced > limits.maxProducedChars)
        throw new TemplateError(`rendering produced more than ${limits.maxProducedChars} characters (a template that loops without end?)`);
      return block;
    },
  });
  return check(interpreter.run(template.parsed) as { type: string; value: unknown }).value as string;
}

/** Python's range(), refusing more than `max` items. */
function boundedRange(start: number, stop: number | undefined, step: number, max: number): number[] {
  if (stop === undefined) [start, stop] = [0, start];
  if (step === 0) throw new TemplateError('range() step must not be zero');
  const steps = Math.ceil((stop - start) / step);
  const count = Number.isNaN(steps) ? 0 : Math.max(0, steps);
  if (!(count <= max)) throw new TemplateError(`range(${start}, ${stop}, ${step}) has ${count} items, more than the limit of ${max}`);
  return Array.from({ length: count }, (_, i) => start + i * step);
}

/** The strftime subset @huggingface/jinja's strftime_now knows. */
function strftime(date: Date, format: string): string {
  const pad2 = (n: number) => String(n).padStart(2, '0');
  return format.replace(/%[YmdbBHM%]/g, (token) => {
    switch (token) {
      case '%Y':
        return String(date.getFullYear());
      case '%m':
        return pad2(date.getMonth() + 1);
      case '%d':
        return pad2(date.getDate());
      case '%b':
        return new Intl.DateTimeFormat(undefined, { month: 'short' }).format(date);
      case '%B':
        return new Intl.DateTimeFormat(undefined, { month: 'long' }).format(date);
      case '%H':
        return pad2(date.getHours());
      case '%M':
        return pad2(date.getMinutes());
      default:
        return '%';
    }
  });
}

let cached: { source: string; template: Template } | undefined;

function compile(source: string): Template {
  if (cached?.source === source) return cached.template;
  if (typeof source !== 'string' || source === '') throw new TemplateError('chat template is empty or not a string');
  let template: Template;
  try {
    template = new Template(source);
  } catch (error) {
    throw new TemplateError(`chat template could not be parsed: ${(error as Error).message}`, { cause: error });
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
      throw new RequestError(`not valid JSON (${(error as Error).message})`, `${path}.function.arguments`, { cause: error });
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
