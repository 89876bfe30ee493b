import type { ToolDefinition } from './chat_template.ts';

export interface ToolCall {
  id: string;
  type: 'function';
  /** `arguments` is a JSON object as a string, as in OpenAI's API. */
  function: { name: string; arguments: string };
}

type Json = Record<string, unknown>;

const BLOCK = /<tool_call>([\s\S]*?)<\/tool_call>/g;
// One function per block; a missing </function> is tolerated, as the block's end closes it.
const FUNCTION = /^\s*<function=([^>\n]+)>([\s\S]*?)(?:<\/function>)?\s*$/;
// A missing </parameter> is tolerated when the next parameter (or the end of the function) follows.
const PARAMETER = /<parameter=([^>\n]+)>([\s\S]*?)(?:<\/parameter>|(?=<parameter=)|$)/g;

/**
 * Finds Qwen3.5's tool calls in generated text:
 * `<tool_call>\n<function=NAME>\n<parameter=ARG>\nVALUE\n</parameter>\n...</function>\n</tool_call>`.
 * A value becomes JSON when it parses as JSON (`3`, `true`, `{"a": 1}`), else stays a string; with `tools`,
 * a parameter whose schema type is string stays a string. The JSON body of earlier Qwen models
 * (`<tool_call>{"name": ..., "arguments": {...}}</tool_call>`) is read too. Blocks that are incomplete or
 * malformed stay in the text. When calls are found, `content` is the rest of the text, trimmed.
 */
export function parseToolCalls(text: string, options: { tools?: ToolDefinition[] } = {}): { content: string; toolCalls: ToolCall[] } {
  const toolCalls: ToolCall[] = [];
  const content = text.replace(BLOCK, (block, body: string) => {
    const call = parseXmlCall(body, options.tools) ?? parseJsonCall(body);
    if (call === undefined) return block;
    toolCalls.push({ id: callId(), type: 'function', function: { name: call.name, arguments: JSON.stringify(call.arguments) } });
    return '';
  });
  return toolCalls.length === 0 ? { content: text, toolCalls } : { content: content.trim(), toolCalls };
}

function parseXmlCall(body: string, tools: ToolDefinition[] | undefined): { name: string; arguments: Json } | undefined {
  const fn = FUNCTION.exec(body);
  if (fn === null) return undefined;
  const name = fn[1].trim();
  if (name === '') return undefined;
  const types = parameterTypes(tools, name);
  const entries: [string, unknown][] = [];
  let rest = fn[2];
  for (const p of fn[2].matchAll(PARAMETER)) {
    const arg = p[1].trim();
    if (arg === '') return undefined;
    entries.push([arg, parseValue(stripNewlines(p[2]), types.get(arg))]);
    rest = rest.replace(p[0], '');
  }
  // Anything but whitespace outside the parameters means this is not a call we understand.
  // fromEntries defines own properties, so even a parameter named __proto__ stays an argument.
  return rest.trim() === '' ? { name, arguments: Object.fromEntries(entries) } : undefined;
}

function parseJsonCall(body: string): { name: string; arguments: Json } | undefined {
  let call: unknown;
  try {
    call = JSON.parse(body);
  } catch {
    return undefined;
  }
  if (!isObject(call) || typeof call.name !== 'string' || call.name === '') return undefined;
  let args = call.arguments ?? {};
  if (typeof args === 'string') {
    try {
      args = JSON.parse(args);
    } catch {
      return undefined;
    }
  }
  return isObject(args) ? { name: call.name, arguments: args } : undefined;
}

/** The template writes `\nVALUE\n`: one newline on each side belongs to the format, not the value. */
function stripNewlines(value: string): string {
  return value.replace(/^\r?\n/, '').replace(/\r?\n$/, '');
}

function parseValue(value: string, schemaType: unknown): unknown {
  const isString = schemaType === 'string' || (Array.isArray(schemaType) && schemaType.includes('string'));
  if (isString) return value;
  let parsed: unknown;
  try {
    parsed = JSON.parse(value);
  } catch {
    return value;
  }
  // A number JavaScript cannot hold exactly (a long id, 1e400) keeps its digits as a string.
  const lossy = typeof parsed === 'number' && (!Number.isFinite(parsed) || (Number.isInteger(parsed) && !Number.isSafeInteger(parsed)));
  return lossy ? value : parsed;
}

/** Each parameter's JSON Schema `type` for the named tool, where the caller gave its definition. */
function parameterTypes(tools: ToolDefinition[] | undefined, name: string): Map<string, unknown> {
  const parameters = tools?.find((t) => t.function?.name === name)?.function.parameters;
  const properties = isObject(parameters) ? parameters.properties : undefined;
  const types = new Map<string, unknown>();
  if (isObject(properties)) for (const [arg, schema] of Object.entries(properties)) if (isObject(schema)) types.set(arg, schema.type);
  return types;
}

function isObject(value: unknown): value is Json {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** OpenAI-style `call_` + 24 random alphanumerics (Web Crypto: Node, Deno and browsers alike). */
function callId(): string {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';
  const bytes = crypto.getRandomValues(new Uint8Array(24));
  return `call_${Array.from(bytes, (b) => alphabet[b % alphabet.length]).join('')}`;
}
