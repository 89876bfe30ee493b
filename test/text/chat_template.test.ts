import { describe, expect, it } from 'vitest';
import { RequestError, TemplateError } from '../../src/errors.ts';
import { FileSource } from '../../src/storage/file.ts';
import { type ChatMessage, TEMPLATE_LIMITS, type ToolDefinition, renderBounded, renderChat } from '../../src/text/chat_template.ts';
import { Template } from '@huggingface/jinja';
import { Tokenizer } from '../../src/text/tokenizer.ts';
import { parseToolCalls } from '../../src/text/tool_calls.ts';
import { FIXTURES, fixtureDir } from '../helpers/fixtures.ts';
import { textGolden } from './sources.ts';

/**
 * A template written for these tests that renders the Qwen3.5 forms (§4 of the spec): tools as JSON lines,
 * reasoning in <think>, calls as <tool_call><function=…><parameter=…>, object and list values as JSON,
 * consecutive tool results in one user turn.
 */
const QWEN_FORM_TEMPLATE = [
  "{%- if tools -%}{{- '<|im_start|>system\\n# Tools\\n<tools>' -}}",
  "{%- for tool in tools -%}{{- '\\n' + (tool | tojson) -}}{%- endfor -%}{{- '\\n</tools><|im_end|>\\n' -}}{%- endif -%}",
  '{%- for message in messages -%}',
  "{%- if message.role == 'tool' -%}",
  "{%- if loop.first or loop.previtem.role != 'tool' -%}{{- '<|im_start|>user' -}}{%- endif -%}",
  "{{- '\\n<tool_response>\\n' + message.content + '\\n</tool_response>' -}}",
  "{%- if loop.last or loop.nextitem.role != 'tool' -%}{{- '<|im_end|>\\n' -}}{%- endif -%}",
  '{%- else -%}',
  "{{- '<|im_start|>' + message.role + '\\n' -}}",
  "{%- if message.reasoning_content -%}{{- '<think>\\n' + message.reasoning_content + '\\n</think>\\n\\n' -}}{%- endif -%}",
  '{%- if message.content -%}{{- message.content -}}{%- endif -%}',
  '{%- if message.tool_calls -%}{%- for call in message.tool_calls -%}',
  "{%- if not loop.first -%}{{- '\\n' -}}{%- elif message.content -%}{{- '\\n\\n' -}}{%- endif -%}",
  "{{- '<tool_call>\\n<function=' + call.function.name + '>\\n' -}}",
  '{%- for name, value in call.function.arguments | items -%}',
  "{{- '<parameter=' + name + '>\\n' -}}",
  '{%- if value is mapping or (value is iterable and value is not string) -%}{{- value | tojson -}}{%- else -%}{{- value | string -}}{%- endif -%}',
  "{{- '\\n</parameter>\\n' -}}",
  '{%- endfor -%}',
  "{{- '</function>\\n</tool_call>' -}}",
  '{%- endfor -%}{%- endif -%}',
  "{{- '<|im_end|>\\n' -}}",
  '{%- endif -%}',
  '{%- endfor -%}',
  "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n<think>\\n' -}}{%- endif -%}",
].join('');

const WEATHER: ToolDefinition = {
  type: 'function',
  function: {
    name: 'get_weather',
    description: 'Current weather for a city',
    parameters: { type: 'object', properties: { city: { type: 'string' }, zip: { type: 'string' }, options: { type: 'object' } }, required: ['city'] },
  },
};

for (const fixture of FIXTURES) {
  const golden = textGolden(fixture);
  describe(`${fixture} chat template`, async () => {
    const tokenizer = await Tokenizer.load(new FileSource(fixtureDir(fixture)));
    const template = tokenizer.chatTemplate!;

    golden.chat_cases.forEach((c, i) => {
      it(`renders chat case ${i} (enable_thinking ${c.enable_thinking ?? 'unset'}) exactly`, () => {
        const rendered = renderChat(template, { messages: c.messages, addGenerationPrompt: c.add_generation_prompt, enableThinking: c.enable_thinking });
        expect(rendered).toBe(c.rendered);
      });
    });

    it('renders the golden prompt, which tokenizes to the golden prompt ids', () => {
      const rendered = renderChat(template, { messages: golden.prompt_messages, addGenerationPrompt: true });
      expect(rendered).toBe(golden.rendered_prompt);
      expect(tokenizer.encode(rendered)).toEqual(golden.prompt_ids);
    });

    it("renders tools, an assistant's tool calls (JSON-string arguments parsed) and a tool result with the model's template", () => {
      const rendered = renderChat(template, {
        messages: [
          { role: 'system', content: 'S' },
          { role: 'user', content: 'Weather?' },
          {
            role: 'assistant',
            content: null,
            tool_calls: [{ type: 'function', function: { name: 'get_weather', arguments: '{"city": "Paris", "days": 2}' } }],
          },
          { role: 'tool', tool_call_id: 'call_1', content: '21 C' },
        ],
        tools: [WEATHER],
      });
      expect(rendered).toBe(
        '<|im_start|>system\nS\n\n# Tools\n<tools>\n' +
          '{"type": "function", "function": {"name": "get_weather", "description": "Current weather for a city", "parameters": {"type": "object", ' +
          '"properties": {"city": {"type": "string"}, "zip": {"type": "string"}, "options": {"type": "object"}}, "required": ["city"]}}}' +
          '\n</tools>\nTo call a tool, reply with:\n<tool_call>\n<function=NAME>\n<parameter=ARGUMENT>\nVALUE\n</parameter>\n</function>\n</tool_call><|im_end|>\n' +
          '<|im_start|>user\nWeather?<|im_end|>\n' +
          '<|im_start|>assistant\n\n<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n<parameter=days>\n2\n</parameter>\n</function>\n</tool_call><|im_end|>\n' +
          '<|im_start|>user\n<tool_response>\n21 C\n</tool_response><|im_end|>\n',
      );
    });
  });
}

describe('tool calls through a Qwen3.5-form template', () => {
  const args = {
    city: 'São Paulo',
    zip: '01310',
    options: { units: ['C', 'F'], detail: { hourly: true, hours: 12 } },
    days: 3,
    verbose: false,
    note: 'line one\nline two',
  };
  const messages: ChatMessage[] = [
    { role: 'system', content: 'Be brief.' },
    { role: 'user', content: 'Weather in São Paulo and Lima?' },
    {
      role: 'assistant',
      content: 'Checking both.',
      reasoning_content: 'Two cities, two calls.',
      tool_calls: [
        { id: 'call_a', type: 'function', function: { name: 'get_weather', arguments: JSON.stringify(args) } },
        { id: 'call_b', type: 'function', function: { name: 'get_weather', arguments: { city: 'Lima' } } },
      ],
    },
    { role: 'tool', tool_call_id: 'call_a', content: '{"temp": 24}' },
    { role: 'tool', tool_call_id: 'call_b', content: '{"temp": 19}' },
  ];
  const rendered = renderChat(QWEN_FORM_TEMPLATE, { messages, tools: [WEATHER], addGenerationPrompt: true });

  it('renders the calls in the XML form and the results in one user turn', () => {
    expect(rendered).toContain('<tools>\n{"type": "function", "function": {"name": "get_weather", ');
    expect(rendered).toContain(
      '<|im_start|>assistant\n<think>\nTwo cities, two calls.\n</think>\n\nChecking both.\n\n<tool_call>\n<function=get_weather>\n<parameter=city>\nSão Paulo\n</parameter>\n',
    );
    expect(rendered).toContain('<parameter=options>\n{"units": ["C", "F"], "detail": {"hourly": true, "hours": 12}}\n</parameter>\n');
    expect(rendered).toContain(
      '</function>\n</tool_call>\n<tool_call>\n<function=get_weather>\n<parameter=city>\nLima\n</parameter>\n</function>\n</tool_call><|im_end|>\n',
    );
    expect(rendered).toContain(
      '<|im_start|>user\n<tool_response>\n{"temp": 24}\n</tool_response>\n<tool_response>\n{"temp": 19}\n</tool_response><|im_end|>\n',
    );
    expect(rendered.endsWith('<|im_start|>assistant\n<think>\n')).toBe(true);
  });

  it('parses its own rendering back to the same calls', () => {
    const start = rendered.indexOf('</think>\n\n') + '</think>\n\n'.length;
    const turn = rendered.slice(start, rendered.indexOf('<|im_end|>', start));
    const { content, toolCalls } = parseToolCalls(turn, { tools: [WEATHER] });
    expect(content).toBe('Checking both.');
    expect(toolCalls.map((c) => c.function.name)).toEqual(['get_weather', 'get_weather']);
    expect(JSON.parse(toolCalls[0].function.arguments)).toEqual(args);
    expect(JSON.parse(toolCalls[1].function.arguments)).toEqual({ city: 'Lima' });
  });

  it('leaves the template its defaults and lets extra variables through', () => {
    const template =
      "{{ bos_token }}{{ 'T' if enable_thinking is defined else 'U' }}{{ 'G' if add_generation_prompt else 'N' }}{{ 'tools' if tools is defined else '' }}";
    expect(renderChat(template, { messages: [], extra: { bos_token: '<s>' } })).toBe('<s>UN');
    expect(renderChat(template, { messages: [], enableThinking: false, addGenerationPrompt: true, tools: [] })).toBe('TGtools');
  });
});

describe('renderChat validation', () => {
  const user: ChatMessage = { role: 'user', content: 'hi' };
  const call = (args: unknown) =>
    ({ role: 'assistant', content: null, tool_calls: [{ type: 'function', function: { name: 'f', arguments: args } }] }) as unknown as ChatMessage;
  const cases: [string, Parameters<typeof renderChat>[1], string, RegExp][] = [
    ['messages not a list', { messages: {} as unknown as ChatMessage[] }, 'messages', /must be a list of messages/],
    ['an unknown role', { messages: [user, { role: 'developer', content: 'x' } as unknown as ChatMessage] }, 'messages[1].role', /unknown role "developer"/],
    ['a message that is not an object', { messages: ['hi' as unknown as ChatMessage] }, 'messages[0]', /must be an object, not a string/],
    [
      'list content',
      { messages: [{ role: 'user', content: [{ type: 'text', text: 'x' }] } as unknown as ChatMessage] },
      'messages[0].content',
      /must be a string or null, not a list/,
    ],
    ['number content', { messages: [{ role: 'user', content: 5 } as unknown as ChatMessage] }, 'messages[0].content', /not a number/],
    [
      'non-string reasoning_content',
      { messages: [user, { role: 'assistant', content: 'a', reasoning_content: 1 } as unknown as ChatMessage] },
      'messages[1].reasoning_content',
      /must be a string/,
    ],
    [
      'a tool that is not type function',
      { messages: [user], tools: [{ type: 'retrieval', function: { name: 'f' } } as unknown as ToolDefinition] },
      'tools[0].type',
      /must be "function", not "retrieval"/,
    ],
    ['a tool without a function', { messages: [user], tools: [{ type: 'function' } as unknown as ToolDefinition] }, 'tools[0].function', /is missing/],
    [
      'a tool without a name',
      { messages: [user], tools: [{ type: 'function', function: {} } as unknown as ToolDefinition] },
      'tools[0].function.name',
      /non-empty string/,
    ],
    ['a tool with an empty name', { messages: [user], tools: [{ type: 'function', function: { name: ' ' } }] }, 'tools[0].function.name', /non-empty string/],
    [
      'tool parameters that are a list',
      { messages: [user], tools: [{ type: 'function', function: { name: 'f', parameters: [] as unknown as Record<string, unknown> } }] },
      'tools[0].function.parameters',
      /JSON Schema object, not a list/,
    ],
    [
      'tool parameters that are a string',
      { messages: [user], tools: [{ type: 'function', function: { name: 'f', parameters: '{}' as unknown as Record<string, unknown> } }] },
      'tools[0].function.parameters',
      /not a string/,
    ],
    ['tools not a list', { messages: [user], tools: {} as unknown as ToolDefinition[] }, 'tools', /must be a list/],
    ['tool-call arguments that are not JSON', { messages: [user, call('{"city": Paris}')] }, 'messages[1].tool_calls[0].function.arguments', /not valid JSON/],
    [
      'tool-call arguments that are JSON but not an object',
      { messages: [user, call('[1, 2]')] },
      'messages[1].tool_calls[0].function.arguments',
      /JSON object of named arguments, not a list/,
    ],
    ['missing tool-call arguments', { messages: [user, call(undefined)] }, 'messages[1].tool_calls[0].function.arguments', /is missing/],
    [
      'a tool call without a name',
      { messages: [user, { role: 'assistant', content: null, tool_calls: [{ type: 'function', function: { arguments: '{}' } }] } as unknown as ChatMessage] },
      'messages[1].tool_calls[0].function.name',
      /non-empty string/,
    ],
    [
      'a tool call of another type',
      {
        messages: [user, { role: 'assistant', content: null, tool_calls: [{ type: 'x', function: { name: 'f', arguments: '{}' } }] } as unknown as ChatMessage],
      },
      'messages[1].tool_calls[0].type',
      /must be "function"/,
    ],
    ['tool calls on a user message', { messages: [{ ...user, tool_calls: [] }] }, 'messages[0].tool_calls', /only assistant messages/],
  ];
  for (const [what, args, field, message] of cases) {
    it(`rejects ${what}, naming ${field}`, () => {
      let error: unknown;
      try {
        renderChat('{{ "rendered" }}', args);
      } catch (e) {
        error = e;
      }
      expect(error).toBeInstanceOf(RequestError);
      expect((error as RequestError).field).toBe(field);
      expect((error as Error).message).toMatch(message);
      expect((error as Error).message.startsWith(`${field}: `)).toBe(true);
    });
  }

  it('names template problems: a syntax error, a refusal by raise_exception, a failure while rendering', () => {
    expect(() => renderChat('{% for m in messages %}', { messages: [user] })).toThrow(/^chat template could not be parsed: /);
    expect(() => renderChat('', { messages: [user] })).toThrow(TemplateError);
    const refusing = "{% if messages[0].role != 'system' %}{{ raise_exception('System message must come first.') }}{% endif %}";
    expect(() => renderChat(refusing, { messages: [user] })).toThrow(RequestError);
    expect(() => renderChat(refusing, { messages: [user] })).toThrow('messages: rejected by the chat template: System message must come first.');
    expect(() => renderChat('{{ messages[0].content.nope() }}', { messages: [user] })).toThrow(/^chat template failed to render: /);
  });
});

// A chat template is code from the model's files: one that loops for ever, or builds a huge text, stops with
// an error within its limits (time, characters, range size) instead of taking the process's memory.
describe('bounded template rendering', () => {
  const user: ChatMessage = { role: 'user', content: 'Hi' };

  it('refuses a huge range() before building it', () => {
    const rss0 = process.memoryUsage.rss();
    const t0 = performance.now();
    expect(() => renderChat('{% for i in range(100000000) %}x{% endfor %}', { messages: [user] })).toThrow(
      new TemplateError('chat template: range(0, 100000000, 1) has 100000000 items, more than the limit of 1000000'),
    );
    expect(performance.now() - t0).toBeLessThan(1000);
    expect(process.memoryUsage.rss() - rss0).toBeLessThan(100 * 1024 * 1024);
  });

  it('stops a template past its time, output or production limit', () => {
    const limits = { ...TEMPLATE_LIMITS, maxMs: 60_000, maxOutputChars: 100_000, maxProducedChars: 1_000_000 };
    const render =
      (source: string, maxMs = limits.maxMs) =>
      () =>
        renderBounded(new Template(source), { messages: [user] }, { ...limits, maxMs });
    const t0 = performance.now();
    expect(render('{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}', 300)).toThrow(/^rendering took more than 300 ms/);
    expect(performance.now() - t0).toBeLessThan(3000);
    expect(render("{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}")).toThrow(
      /^rendering made a text of \d+ characters, more than the limit of 100000$/,
    );
    expect(render('{% for i in range(100000) %}{{ i }} and more text{% endfor %}')).toThrow(
      /^rendering (produced more than 1000000 characters|made a text of)/,
    );
  });

  it("renders like @huggingface/jinja itself, globals included (the fixtures' chat cases above go through it too)", () => {
    const source =
      "{{ range(2, 7, 2)|join(',') }} {{ range(3)|join(',') }} {{ true }} {{ none is none }} {{ True and not False }} {{ strftime_now('%Y')|length }} {{ namespace(a=1).a }}";
    expect(renderBounded(new Template(source), {})).toBe(new Template(source).render({}));
  });
});
