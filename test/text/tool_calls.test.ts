import { describe, expect, it } from 'vitest';
import type { ToolDefinition } from '../../src/text/chat_template.ts';
import { parseToolCalls } from '../../src/text/tool_calls.ts';

const call = (name: string, params: [string, string][]) =>
  `<tool_call>\n<function=${name}>\n${params.map(([k, v]) => `<parameter=${k}>\n${v}\n</parameter>\n`).join('')}</function>\n</tool_call>`;
const args = (text: string, tools?: ToolDefinition[]) => parseToolCalls(text, { tools }).toolCalls.map((c) => JSON.parse(c.function.arguments));

describe('parseToolCalls', () => {
  it('reads one call, removing it from the content', () => {
    const { content, toolCalls } = parseToolCalls(`Let me check.\n\n${call('get_weather', [['city', 'Paris']])}`);
    expect(content).toBe('Let me check.');
    expect(toolCalls).toHaveLength(1);
    expect(toolCalls[0]).toMatchObject({ type: 'function', function: { name: 'get_weather', arguments: '{"city":"Paris"}' } });
    expect(toolCalls[0].id).toMatch(/^call_[A-Za-z0-9]{24}$/);
  });

  it('reads several calls in order, each with its own id', () => {
    const text = `${call('a', [['x', '1']])}\n${call('b', [])}\n${call('c', [['y', 'two']])}`;
    const { content, toolCalls } = parseToolCalls(text);
    expect(content).toBe('');
    expect(toolCalls.map((c) => c.function.name)).toEqual(['a', 'b', 'c']);
    expect(toolCalls.map((c) => c.function.arguments)).toEqual(['{"x":1}', '{}', '{"y":"two"}']);
    expect(new Set(toolCalls.map((c) => c.id)).size).toBe(3);
  });

  it('parses values that are JSON (nested objects, lists, numbers, booleans, null) and keeps the rest as strings', () => {
    const nested = '{"units": ["C", "F"], "detail": {"hourly": true, "hours": [1, 2, {"deep": null}]}}';
    const text = call('f', [
      ['options', nested],
      ['n', '3'],
      ['ratio', '0.5'],
      ['on', 'true'],
      ['none', 'null'],
      ['list', '[1, "a"]'],
      ['city', 'São Paulo'],
      ['quoted', '"x"'],
      ['multi', 'line one\n\nline two\n'],
      ['zip', '01310'],
      ['big', '12345678901234567890'],
    ]);
    expect(args(text)).toEqual([
      {
        options: JSON.parse(nested),
        n: 3,
        ratio: 0.5,
        on: true,
        none: null,
        list: [1, 'a'],
        city: 'São Paulo',
        quoted: 'x',
        multi: 'line one\n\nline two\n',
        zip: '01310',
        big: '12345678901234567890',
      },
    ]);
  });

  it("keeps a value a string when the tool's schema says string", () => {
    const tools: ToolDefinition[] = [
      {
        type: 'function',
        function: {
          name: 'f',
          parameters: { type: 'object', properties: { code: { type: 'string' }, alt: { type: ['string', 'null'] }, n: { type: 'integer' } } },
        },
      },
    ];
    const text = call('f', [
      ['code', '123'],
      ['alt', 'true'],
      ['n', '7'],
    ]);
    expect(args(text, tools)).toEqual([{ code: '123', alt: 'true', n: 7 }]);
    expect(args(text)).toEqual([{ code: 123, alt: true, n: 7 }]);
  });

  it('tolerates a missing </parameter> or </function>, and reads the JSON body of earlier Qwen models', () => {
    expect(args('<tool_call>\n<function=f>\n<parameter=a>\n1\n<parameter=b>\nx\n</function>\n</tool_call>')).toEqual([{ a: 1, b: 'x' }]);
    expect(args('<tool_call>\n<function=f>\n<parameter=a>\n1\n</parameter>\n</tool_call>')).toEqual([{ a: 1 }]);
    const json = parseToolCalls('<tool_call>\n{"name": "f", "arguments": {"a": [1]}}\n</tool_call>');
    expect(json.toolCalls[0].function).toEqual({ name: 'f', arguments: '{"a":[1]}' });
  });

  it('keeps a parameter named __proto__ as an argument', () => {
    expect(parseToolCalls(call('f', [['__proto__', '{"x": 1}']])).toolCalls[0].function.arguments).toBe('{"__proto__":{"x":1}}');
  });

  it('leaves text without calls untouched', () => {
    expect(parseToolCalls('  Just an answer.\n')).toEqual({ content: '  Just an answer.\n', toolCalls: [] });
  });

  it('leaves partial and malformed blocks in the text', () => {
    const partial = `Sure.\n${call('f', [['a', '1']]).slice(0, 40)}`;
    expect(parseToolCalls(partial)).toEqual({ content: partial, toolCalls: [] });
    const malformed = [
      '<tool_call>\n<parameter=a>\n1\n</parameter>\n</tool_call>', // no function
      '<tool_call>\n<function=>\n</function>\n</tool_call>', // empty name
      '<tool_call>\n<function=f>\nsome words\n<parameter=a>\n1\n</parameter>\n</function>\n</tool_call>', // text outside parameters
      '<tool_call>\n<function=f>\n</function>\ntrailing\n</tool_call>', // text after the function
      '<tool_call>\n{"name": "f", "arguments": "[1]"}\n</tool_call>', // JSON arguments that are not an object
      '<tool_call>\n{"arguments": {}}\n</tool_call>', // JSON without a name
    ];
    for (const text of malformed) expect(parseToolCalls(text)).toEqual({ content: text, toolCalls: [] });
    const mixed = `${malformed[0]}\n${call('g', [['b', '2']])}`;
    const { content, toolCalls } = parseToolCalls(mixed);
    expect(content).toBe(malformed[0]);
    expect(toolCalls.map((c) => [c.function.name, c.function.arguments])).toEqual([['g', '{"b":2}']]);
  });
});
