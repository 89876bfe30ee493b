import { cpSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { readSafetensorsHeader } from '../../src/formats/safetensors.ts';
import { FileSource } from '../../src/storage/file.ts';
import { type CheckpointSpec, writeCheckpoint } from '../helpers/checkpoint.ts';
import { type BoundedResult, errorLine, jsonLine, runBounded } from '../helpers/cli.ts';
import { type FixtureName, fixtureDir, golden } from '../helpers/fixtures.ts';
import { kv, removeWrittenGgufs, writeFixtureGguf } from '../helpers/gguf_writer.ts';

// What a new user or an attacker can get wrong, through the CLI: each case ends within 60 s, under 500 MB of
// resident memory (runBounded), with one line naming the file, field or flag (errorLine: no stack trace).
afterAll(() => removeWrittenGgufs());

const ids = golden('tiny-qwen35').prompt_ids.join(',');
const run = async (args: string[]): Promise<BoundedResult> => {
  const r = await runBounded(args);
  expect(r.code, `rss guard or crash:\n${r.stderr}`).not.toBe(99);
  expect(r.ms).toBeLessThan(60_000);
  return r;
};
const generateIds = (model: string, ...extra: string[]) =>
  run(['generate', '--model', model, '--prompt-ids', ids, '--max-tokens', '2', '--adapter', 'llvmpipe', ...extra]);

/** A writable copy of a fixture, with `edit` applied to it. */
function copyOf(fixture: FixtureName, edit: (dir: string) => void): string {
  const dir = join(mkdtempSync(join(tmpdir(), 'qwen-hardening-')), fixture);
  cpSync(fixtureDir(fixture), dir, { recursive: true });
  edit(dir);
  return dir;
}
const editJson = (dir: string, file: string, edit: (json: any) => unknown) => {
  const path = join(dir, file);
  writeFileSync(path, JSON.stringify(edit(JSON.parse(readFileSync(path, 'utf8')))));
};
const writeText = (dir: string, file: string, text: string) => writeFileSync(join(dir, file), text);

describe('token ids', () => {
  it('refuses an id past the vocabulary, and ids between the tokenizer size and vocab_size', async () => {
    const past = await run(['generate', '--model', fixtureDir('tiny-qwen35'), '--prompt-ids', '977,1024', '--max-tokens', '4', '--adapter', 'llvmpipe']);
    expect(errorLine(past)).toBe("error: --prompt-ids: id 1024 (at position 1) is not below the model's vocab_size 1024");
    const padding = await run(['generate', '--model', fixtureDir('tiny-qwen35'), '--prompt-ids', '977,1010', '--max-tokens', '4', '--adapter', 'llvmpipe']);
    expect(errorLine(padding)).toMatch(
      /^error: --prompt-ids: id 1010 \(at position 1\) is not a token: the tokenizer has 1009 \(ids 1009\.\.1023 are padding rows\)$/,
    );
    const score = await run([
      'score',
      '--model',
      fixtureDir('tiny-qwen35'),
      '--ids',
      '5,1020',
      '--out',
      join(tmpdir(), 'qwen-hardening-x.f32'),
      '--adapter',
      'llvmpipe',
    ]);
    expect(errorLine(score)).toMatch(/^error: --ids: id 1020 \(at position 1\) is not a token/);
  }, 120_000);

  it('refuses --prompt with --prompt-ids, and a prompt + --max-tokens past --context before loading anything', async () => {
    const both = await run(['generate', '--model', fixtureDir('tiny-qwen35'), '--prompt', 'Hello', '--prompt-ids', ids]);
    expect(both.code).toBe(2);
    expect(errorLine(both)).toMatch(/^error: give one of --prompt, --messages or --prompt-ids/);
    // The model does not exist: the refusal comes before it is opened.
    const context = await run([
      'generate',
      '--model',
      '/nonexistent/model',
      '--prompt-ids',
      '1,2,3',
      '--max-tokens',
      '10',
      '--context',
      '8',
      '--adapter',
      'llvmpipe',
    ]);
    expect(context.code).toBe(2);
    expect(errorLine(context)).toMatch(/^error: --prompt-ids \(3 ids\) \+ --max-tokens 10 = 13 tokens, more than --context 8/);
  }, 60_000);
});

describe('flags', () => {
  // Every command with a misspelt flag: refused before anything runs, naming the flag.
  const typos: { command: string; args: string[]; typo: string; meant: string }[] = (<[string, string[], string, string][]>[
    ['generate', ['--model', fixtureDir('tiny-qwen35'), '--prompt-ids', ids], '--max-token', '--max-tokens'],
    ['generate', ['--model', fixtureDir('tiny-qwen35'), '--prompt', 'Hi'], '--temprature', '--temperature'],
    ['tokenize', ['--model', fixtureDir('tiny-qwen35'), '--text', 'Hi'], '--jsn', '--json'],
    ['score', ['--model', fixtureDir('tiny-qwen35'), '--ids', '1,2', '--out', '/tmp/x'], '--id', '--ids'],
    ['convert', ['--model', fixtureDir('tiny-qwen35'), '--dtype', 'f32', '--out', '/tmp/x'], '--shard-mib', '--shard-mb'],
    ['export', ['--model', fixtureDir('tiny-qwen35'), '--out', '/tmp/x'], '--ouput', '--out'],
    ['bench', ['--synthetic', 'qwen3.5-0.8b'], '--decode-token', '--decode-tokens'],
    ['adapter', [], '--adaptor', '--adapter'],
  ]).map(([command, args, typo, meant]) => ({ command, args, typo, meant }));
  it.each(typos)(
    '$command refuses the unknown flag $typo',
    async ({ command, args, typo, meant }) => {
      const r = await run([command, ...args, typo, '4']);
      expect(r.code).toBe(2);
      expect(errorLine(r)).toBe(`error: unknown flag ${typo} for ${command} (did you mean ${meant}?) ("qwen-webgpu help" shows the usage)`);
    },
    60_000,
  );

  it('prints the usage for help, --help and -h, before or after a command, and the version for --version', async () => {
    for (const args of [[], ['help'], ['--help'], ['-h'], ['generate', '--help'], ['serve', '-h', '--port', '1']]) {
      const r = await run(args);
      expect(r.code, args.join(' ')).toBe(0);
      expect(r.stdout, args.join(' ')).toMatch(/^qwen-webgpu: Qwen3.5 on WebGPU\n.*qwen-webgpu version /s);
    }
    const { version } = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8'));
    for (const args of [['version'], ['--version'], ['-V']]) expect((await run(args)).stdout, args.join(' ')).toBe(`qwen-webgpu ${version}\n`);
    const stray = await run(['generate', '-x']);
    expect(errorLine(stray)).toBe('error: unexpected argument "-x" ("qwen-webgpu help" shows the usage)');
  }, 120_000);

  it('refuses a flag of another command, and chat flags with --prompt-ids', async () => {
    const other = await run(['tokenize', '--model', fixtureDir('tiny-qwen35'), '--text', 'Hi', '--max-tokens', '4']);
    expect(errorLine(other)).toMatch(/^error: unknown flag --max-tokens for tokenize/);
    const stop = await run(['generate', '--model', fixtureDir('tiny-qwen35'), '--prompt-ids', ids, '--stop', 'x']);
    expect(errorLine(stop)).toMatch(/^error: --stop is for chats \(--prompt, --messages\), not --prompt-ids/);
  }, 60_000);

  it('refuses a timeout of 0 seconds, which would fail every read or step at once', async () => {
    const http = await run(['tokenize', '--model', fixtureDir('tiny-qwen35'), '--text', 'Hi', '--http-timeout', '0']);
    expect(errorLine(http)).toMatch(/^error: --http-timeout must be a number > 0, got "0"/);
    const stage = await run(['serve', '--model', fixtureDir('tiny-qwen35'), '--stages', '2', '--stage-timeout-s', '0']);
    expect(stage.code).toBe(2);
    expect(errorLine(stage)).toMatch(/^error: --stage-timeout-s must be a number > 0, got "0"/);
  }, 60_000);

  it('refuses speculative decoding flags that contradict each other, and a draft count out of range', async () => {
    expect(errorLine(await generateIds(fixtureDir('tiny-qwen35'), '--no-mtp', '--draft-tokens', '2'))).toMatch(
      /^error: --draft-tokens is for speculative decoding, which --no-mtp turns off/,
    );
    expect(errorLine(await generateIds(fixtureDir('tiny-qwen35'), '--draft-tokens', '4'))).toMatch(/^error: --draft-tokens must be 1 to 3, got 4/);
    expect(errorLine(await generateIds(fixtureDir('tiny-qwen35'), '--no-mtp', '--draft-vocab', '100'))).toMatch(
      /^error: --draft-vocab is for speculative decoding, which --no-mtp turns off/,
    );
    expect(errorLine(await generateIds(fixtureDir('tiny-qwen35'), '--draft-vocab', '-5'))).toMatch(/^error: --draft-vocab must be an integer ≥ 0, got "-5"/);
    // A config without MTP layers: its mtp.* tensors are then none of the model's.
    const noMtp = copyOf('tiny-qwen35', (dir) =>
      editJson(dir, 'config.json', (config) => ({ ...config, text_config: { ...config.text_config, mtp_num_hidden_layers: 0 } })),
    );
    expect(errorLine(await generateIds(noMtp, '--draft-tokens', '2'))).toMatch(/speculative decoding is not possible: the checkpoint has no MTP block/);
  }, 120_000);

  it('accepts every flag bench reads', async () => {
    // Both --model and --synthetic: bench's own check answers, so no flag was refused before it.
    const r = await run([
      'bench',
      '--model',
      '/nonexistent',
      '--synthetic',
      'qwen3.5-0.8b',
      '--layers',
      '1',
      '--prompt-tokens',
      '4',
      '--decode-tokens',
      '2',
      '--json',
      '--dtype',
      'f32',
      '--activations',
      'f32',
      '--adapter',
      'llvmpipe',
      '--no-f16',
      '--expert-cache-mb',
      '64',
      '--verify',
      '--http-timeout',
      '5',
      '--verify-cost',
      '--draft-vocab',
      '100',
      '--host-only',
    ]);
    expect(errorLine(r)).toMatch(/^error: bench takes --model <dir> or --synthetic <name>/);
    const unverified = await run(['bench', '--synthetic', 'qwen3.5-0.8b', '--layers', '1', '--draft-vocab', '100', '--adapter', 'llvmpipe']);
    expect(errorLine(unverified)).toMatch(/^error: --draft-vocab is for --verify-cost/);
  }, 60_000);

  it('prints a stack trace only with --debug', async () => {
    const dir = copyOf('tiny-qwen35', (d) => writeText(d, 'generation_config.json', '{"do_sample": true,'));
    const plain = await generateIds(dir);
    expect(errorLine(plain)).toMatch(/^error: generation_config\.json: not valid JSON/);
    const debug = await generateIds(dir, '--debug');
    expect(debug.stderr).toMatch(/^error: generation_config\.json: not valid JSON.*\nModelFormatError: generation_config\.json.*\n\s+at /m);
  }, 60_000);

  it('checks score --out before the model loads', async () => {
    const r = await run(['score', '--model', '/nonexistent/model', '--ids', '1,2', '--out', '/nonexistent/x', '--adapter', 'llvmpipe']);
    expect(errorLine(r)).toBe('error: --out: cannot write /nonexistent/x: there is no directory /nonexistent');
  }, 60_000);
});

describe('model files', () => {
  it('names generation_config.json and its field: null, not JSON, a wrong type, a value out of range', async () => {
    const cases: [string, RegExp][] = [
      ['null', /^error: generation_config\.json: the top level is null, not a JSON object$/],
      ['{"do_sample": true, "temperature": "hot"}', /^error: generation_config\.json: temperature: "hot" is not a number$/],
      ['{"do_sample": "yes"}', /^error: generation_config\.json: do_sample: "yes" is not true or false$/],
      ['{"do_sample": true, "top_p": 7}', /^error: generation_config\.json: top_p: 7 must be in \(0, 1\]/],
    ];
    for (const [text, message] of cases) {
      const dir = copyOf('tiny-qwen35', (d) => writeText(d, 'generation_config.json', text));
      expect(errorLine(await generateIds(dir)), text).toMatch(message);
      const chat = await run(['generate', '--model', dir, '--prompt', 'Hi', '--max-tokens', '2', '--adapter', 'llvmpipe']);
      expect(errorLine(chat), text).toMatch(message);
    }
  }, 180_000);

  it('names a null model.safetensors.index.json', async () => {
    const dir = copyOf('tiny-qwen35-moe', (d) => writeText(d, 'model.safetensors.index.json', 'null'));
    expect(errorLine(await generateIds(dir))).toBe('error: model.safetensors.index.json: is not a JSON object');
  }, 60_000);

  it('refuses overlapping safetensors data_offsets, naming both tensors', async () => {
    const dir = copyOf('tiny-qwen35', () => {});
    const entries = await readSafetensorsHeader(new FileSource(dir), 'model.safetensors');
    const bytes = readFileSync(join(dir, 'model.safetensors'));
    const headerLen = Number(bytes.readBigUInt64LE(0));
    const header = JSON.parse(bytes.subarray(8, 8 + headerLen).toString());
    // Two tensors of the same size: the second now points at the first one's bytes.
    const [a, b] = entries.filter(
      (e) => e.shape.join() === entries.find((x) => x.name.endsWith('layers.1.input_layernorm.weight'))!.shape.join() && e.name.includes('layernorm'),
    );
    header[b.name].data_offsets = header[a.name].data_offsets;
    let json = JSON.stringify(header);
    json += ' '.repeat(Math.max(0, headerLen - json.length));
    expect(json.length).toBe(headerLen);
    writeFileSync(join(dir, 'model.safetensors'), Buffer.concat([bytes.subarray(0, 8), Buffer.from(json), bytes.subarray(8 + headerLen)]));
    expect(errorLine(await generateIds(dir))).toMatch(
      new RegExp(`^error: model\\.safetensors: (${a.name}|${b.name}): data_offsets \\[\\d+, \\d+\\] overlap those of (${a.name}|${b.name})`),
    );
  }, 60_000);

  it('refuses a tokenizer.json of an unknown model type', async () => {
    const dir = copyOf('tiny-qwen35', (d) => editJson(d, 'tokenizer.json', (t) => ({ ...t, model: { ...t.model, type: 'Magic' } })));
    const r = await run(['tokenize', '--model', dir, '--text', 'Hello']);
    expect(errorLine(r)).toBe('error: tokenizer.json: model.type "Magic" is not supported (Qwen3.5 tokenizers are byte-level "BPE")');
  }, 60_000);

  it('stops a chat template that loops without end', async () => {
    const dir = copyOf('tiny-qwen35', (d) =>
      editJson(d, 'tokenizer_config.json', (c) => ({ ...c, chat_template: '{% for i in range(100000000) %}x{% endfor %}' })),
    );
    const r = await run(['tokenize', '--model', dir, '--messages', writeMessages()]);
    expect(errorLine(r)).toMatch(/^error: chat template: range\(0, 100000000, 1\) has 100000000 items, more than the limit of 1000000$/);
    const nested = copyOf('tiny-qwen35', (d) =>
      editJson(d, 'tokenizer_config.json', (c) => ({
        ...c,
        chat_template: '{% for i in range(100000) %}{% for j in range(100000) %}{{ i }}{% endfor %}{% endfor %}',
      })),
    );
    const slow = await run(['tokenize', '--model', nested, '--messages', writeMessages()]);
    expect(errorLine(slow)).toMatch(/^error: chat template: (rendering took more than 5000 ms|rendering produced more than)/);
  }, 120_000);
});

function writeMessages(): string {
  const file = join(mkdtempSync(join(tmpdir(), 'qwen-hardening-')), 'chat.json');
  writeFileSync(file, JSON.stringify([{ role: 'user', content: 'Hi' }]));
  return file;
}

// Counts in config.json or GGUF metadata that no tensor backs used to drive allocation first (Node died out
// of memory, naming nothing); now they are checked against the tensor index first.
describe('counts checked against the tensor index', () => {
  it('mtp_num_hidden_layers and num_hidden_layers without layer_types', async () => {
    const mtp = copyOf('tiny-qwen35', (d) => editJson(d, 'config.json', (c) => ((c.text_config.mtp_num_hidden_layers = 1_000_000), c)));
    // convert copies the MTP block, so it plans it and refuses the count; generate never loads it, so nothing is built from it.
    const convert = await run([
      'convert',
      '--model',
      mtp,
      '--dtype',
      'f32',
      '--out',
      join(mkdtempSync(join(tmpdir(), 'qwen-hardening-')), 'packed'),
      '--adapter',
      'llvmpipe',
    ]);
    expect(errorLine(convert)).toBe("error: config.json: text_config.mtp_num_hidden_layers: 1000000 MTP layers, but the checkpoint's tensors hold 1");
    expect(jsonLine(await generateIds(mtp, '--greedy', '--json')).ids).toHaveLength(2);
    const layers = copyOf('tiny-qwen35', (d) =>
      editJson(d, 'config.json', (c) => {
        c.text_config.num_hidden_layers = 5e7;
        delete c.text_config.layer_types;
        return c;
      }),
    );
    expect(errorLine(await generateIds(layers))).toBe(
      "error: config.json: text_config.num_hidden_layers: 50000000 layers, but the checkpoint's tensors hold 4",
    );
  }, 120_000);

  it('num_experts of a checkpoint with one tensor per expert', async () => {
    const spec: CheckpointSpec = {
      seed: 9,
      hidden: 64,
      layers: 2,
      heads: [2, 1],
      linearHeads: [1, 2],
      experts: { count: 4, topk: 2, intermediate: 32, shared: 32, perExpert: true },
      tied: true,
      dtype: 'BF16',
    };
    const dir = writeCheckpoint(spec);
    editJson(dir, 'config.json', (c) => ((c.text_config.num_experts = 2e8), c));
    expect(errorLine(await generateIds(dir))).toBe(
      "error: config.json: text_config.num_experts: 200000000 experts, but the checkpoint's tensors hold 4 per layer",
    );
  }, 60_000);

  it('a GGUF block_count, and an expert_count its expert tensors do not hold', async () => {
    const blocks = await writeFixtureGguf('tiny-qwen35', { metadata: (e) => e.map((k) => (k.key === 'qwen35.block_count' ? kv.u32(k.key, 50_000_000) : k)) });
    expect(errorLine(await generateIds(join(blocks.dir, blocks.file)))).toMatch(
      new RegExp(
        `^error: ${blocks.file}: metadata key qwen35\\.block_count: 50000000 blocks \\(49999999 main layers\\), but the file's tensors hold 5 blocks$`,
      ),
    );
    const experts = await writeFixtureGguf('tiny-qwen35-moe', {
      metadata: (e) => e.map((k) => (k.key === 'qwen35moe.expert_count' ? kv.u32(k.key, 200_000_000) : k)),
    });
    expect(errorLine(await generateIds(join(experts.dir, experts.file)))).toMatch(
      new RegExp(
        `^error: ${experts.file}: blk\\.0\\.ffn_\\w+_exps\\.weight: dims \\[\\d+,\\d+,\\d+\\] are not \\{cols, rows, 200000000\\} \\(metadata key qwen35moe\\.expert_count is 200000000\\)$`,
      ),
    );
  }, 120_000);
});
