import { readdirSync, readFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { describe, expect, it } from 'vitest';
import * as errors from '../src/errors.ts';
import { CapabilityError, ContractError, ERROR_CLASSES, ModelFormatError, QwenError, RequestError, TemplateError, UsageError } from '../src/errors.ts';
import { parseArgs } from '../src/cli/args.ts';
import { ggmlTypeByName } from '../src/formats/gguf_types.ts';
import { Sha256 } from '../src/formats/sha256.ts';
import { type WeightSource, readJson } from '../src/formats/source.ts';
import type { Caps } from '../src/gpu/caps.ts';
import { packParams } from '../src/gpu/kernel.ts';
import { checks } from '../src/kernels/checks.ts';
import { grid } from '../src/kernels/grid.ts';
import { quantizeQ4Item } from '../src/numeric/q4.ts';
import { parseGenerationConfig } from '../src/runtime/generation_config.ts';
import { resolveSampling } from '../src/runtime/sampler.ts';
import { renderChat } from '../src/text/chat_template.ts';

/** What `body` throws (it must throw). */
function thrown(body: () => unknown): unknown {
  try {
    body();
  } catch (error) {
    return error;
  }
  throw new Error('did not throw');
}

const SRC = join(import.meta.dirname, '..', 'src');
const sources = (dir: string): string[] =>
  readdirSync(dir, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? sources(join(dir, e.name)) : e.name.endsWith('.ts') ? [join(dir, e.name)] : []));

describe('one error hierarchy', () => {
  it('src/ builds no plain Error, TypeError or RangeError: every error is a QwenError subclass from src/errors.ts', () => {
    const plain = /new (Error|TypeError|RangeError|SyntaxError)\(/;
    const found = sources(SRC)
      .filter((file) => relative(SRC, file) !== 'errors.ts')
      .flatMap((file) =>
        readFileSync(file, 'utf8')
          .split('\n')
          .map((line, i) => [`${relative(SRC, file)}:${i + 1}`, line] as const),
      )
      .filter(([, line]) => plain.test(line))
      .map(([at]) => at);
    expect(found).toEqual([]);
  });

  it('lists every class by its name, each a QwenError', () => {
    const classes = Object.entries(errors).filter(([, v]) => typeof v === 'function' && (v === QwenError || v.prototype instanceof QwenError));
    expect(Object.keys(ERROR_CLASSES).sort()).toEqual(classes.map(([name]) => name).sort());
    for (const [name, cls] of Object.entries(ERROR_CLASSES)) {
      const error = new (cls as unknown as new (message: string, a: string, b: string) => QwenError)('m', 'a', 'b');
      expect(error.name).toBe(name);
      expect(error).toBeInstanceOf(QwenError);
    }
  });

  it('answers representative bad inputs with the class that says what failed, its fields set', () => {
    const cases: [string, () => unknown, new (...args: never[]) => QwenError, Record<string, unknown>][] = [
      ['a kernel argument', () => checks('rms_norm').count('rows', 0), ContractError, { op: 'rms_norm', detail: 'rows = 0 must be a positive integer' }],
      ['a q4 item of the wrong size', () => quantizeQ4Item(new Float32Array(3), 64), ContractError, { op: 'q4' }],
      ['a params value', () => packParams({ n: 'u32' }, { n: Number.NaN }), ContractError, { op: 'packParams' }],
      [
        'a hash finished twice',
        () => {
          const h = new Sha256();
          h.digest();
          h.digest();
        },
        ContractError,
        { op: 'Sha256' },
      ],
      ['an unknown ggml type', () => ggmlTypeByName('Q9_9'), ContractError, { op: 'ggmlTypeByName' }],
      ['too many workgroups', () => grid(2 ** 40, { maxWorkgroupsPerDim: 65535 } as Caps), CapabilityError, { capability: 'maxComputeWorkgroupsPerDimension' }],
      ['a sampling option', () => resolveSampling({ temperature: -1 }, 10), RequestError, { field: 'temperature', detail: '-1 must be ≥ 0 (0 = greedy)' }],
      ['a generation_config value', () => parseGenerationConfig({ do_sample: true, top_p: 2 }), ModelFormatError, { file: 'generation_config.json' }],
      ['a template that does not parse', () => renderChat('{% for %}', { messages: [{ role: 'user', content: 'hi' }] }), TemplateError, {}],
      ['a template that fails to render', () => renderChat('{{ x.y.z() }}', { messages: [{ role: 'user', content: 'hi' }] }), TemplateError, {}],
      [
        'a conversation the template refuses',
        () => renderChat("{{ raise_exception('no ' + messages[0].role) }}", { messages: [{ role: 'user', content: 'hi' }] }),
        RequestError,
        { field: 'messages', detail: 'rejected by the chat template: no user' },
      ],
      ['a command line', () => parseArgs(['generate', 'stray'], new Set()), UsageError, {}],
    ];
    for (const [what, body, cls, fields] of cases) {
      const error = thrown(body);
      expect(error, what).toBeInstanceOf(cls);
      expect(error, what).toBeInstanceOf(QwenError);
      expect(error, what).toMatchObject(fields);
    }
  });

  it('keeps the field out of `detail` and the foreign error as `cause`', async () => {
    const config = thrown(() => parseGenerationConfig({ do_sample: true, top_p: 2 })) as ModelFormatError;
    expect(config.message).toBe('generation_config.json: top_p: 2 must be in (0, 1] (1 = off)');
    expect(config.cause).toBeInstanceOf(RequestError);
    expect((config.cause as RequestError).detail).toBe('2 must be in (0, 1] (1 = off)');

    const source = { location: 'mem', text: async () => '{ not json' } as unknown as WeightSource;
    const json = await readJson(source, 'config.json').catch((e: unknown) => e);
    expect(json).toBeInstanceOf(ModelFormatError);
    expect((json as ModelFormatError).file).toBe('config.json');
    expect((json as ModelFormatError).cause).toBeInstanceOf(SyntaxError);
  });
});
