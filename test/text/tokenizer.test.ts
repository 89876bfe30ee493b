import { describe, expect, it } from 'vitest';
import { ModelFormatError, QwenError } from '../../src/errors.ts';
import { FileSource } from '../../src/storage/file.ts';
import { Tokenizer } from '../../src/text/tokenizer.ts';
import { FIXTURES, fixtureDir } from '../helpers/fixtures.ts';
import { fixtureFile, fixtureSource, textGolden } from './sources.ts';

for (const fixture of FIXTURES) {
  const golden = textGolden(fixture);

  describe(`${fixture} tokenizer`, async () => {
    const tokenizer = await Tokenizer.load(new FileSource(fixtureDir(fixture)));

    for (const c of golden.tokenizer_cases) {
      it(`encodes and decodes ${JSON.stringify(c.text)}`, () => {
        expect(tokenizer.encode(c.text)).toEqual(c.ids);
        expect(tokenizer.decode(c.ids)).toBe(c.decoded);
        expect(tokenizer.decode(Int32Array.from(c.ids))).toBe(c.decoded);
      });
    }

    it('encodes the rendered prompt to the golden prompt ids', () => {
      expect(tokenizer.encode(golden.rendered_prompt)).toEqual(golden.prompt_ids);
      expect(tokenizer.decode(golden.prompt_ids)).toBe(golden.rendered_prompt);
    });

    it('normalizes to NFC before encoding', () => {
      const decomposed = 'cafe\u0301';
      expect(decomposed).not.toBe(decomposed.normalize('NFC'));
      expect(tokenizer.encode(decomposed)).toEqual(tokenizer.encode('caf\u00e9'));
    });

    it('knows the special tokens, the eos ids, its size and chat template', () => {
      for (const [token, id] of Object.entries(golden.special_ids)) expect(tokenizer.tokenId(token)).toBe(id);
      expect(tokenizer.tokenId('<tool_call>')).toBeTypeOf('number');
      expect(tokenizer.tokenId('no such token')).toBeUndefined();
      expect(tokenizer.eosTokenIds).toEqual(JSON.parse(fixtureFile(fixture, 'generation_config.json')).eos_token_id);
      expect(tokenizer.size).toBe(golden.tokenizer_size);
      expect(tokenizer.chatTemplate).toBe(JSON.parse(fixtureFile(fixture, 'tokenizer_config.json')).chat_template);
    });

    it('skips special tokens on request but keeps <think> and <tool_call> (not special)', () => {
      const ids = tokenizer.encode('<|im_start|>assistant\n<think>\nhm</think>ok<tool_call><|im_end|>');
      expect(tokenizer.decode(ids, { skipSpecialTokens: true })).toBe('assistant\n<think>\nhm</think>ok<tool_call>');
      expect(tokenizer.decode(ids)).toBe('<|im_start|>assistant\n<think>\nhm</think>ok<tool_call><|im_end|>');
    });

    it('decodes no ids to the empty string and keeps spaces before punctuation', () => {
      expect(tokenizer.decode([])).toBe('');
      expect(tokenizer.encode('')).toEqual([]);
      const text = "a , b . c 's";
      expect(tokenizer.decode(tokenizer.encode(text))).toBe(text);
    });

    it('rejects ids outside the vocabulary, naming the id and its index', () => {
      expect(() => tokenizer.decode([5, tokenizer.size])).toThrow(QwenError);
      expect(() => tokenizer.decode([5, tokenizer.size])).toThrow(`token id ${tokenizer.size} at index 1`);
      expect(() => tokenizer.decode([-1])).toThrow('token id -1 at index 0');
      expect(() => tokenizer.decode([1.5])).toThrow('token id 1.5 at index 0');
    });
  });
}

describe('loading a tokenizer', () => {
  const fixture = 'tiny-qwen35';
  const imEnd = textGolden(fixture).special_ids['<|im_end|>'];

  it('names tokenizer.json when it is missing, not JSON, or not a tokenizer', async () => {
    await expect(Tokenizer.load(fixtureSource(fixture, { 'tokenizer.json': null }))).rejects.toThrow(/^tokenizer\.json: missing from memory$/);
    await expect(Tokenizer.load(fixtureSource(fixture, { 'tokenizer.json': '{"model": ' }))).rejects.toThrow(/^tokenizer\.json: not valid JSON/);
    await expect(Tokenizer.load(fixtureSource(fixture, { 'tokenizer.json': '[1, 2]' }))).rejects.toThrow('tokenizer.json: the top level is not a JSON object');
    await expect(Tokenizer.load(fixtureSource(fixture, { 'tokenizer.json': (j) => delete j.model }))).rejects.toThrow(
      'tokenizer.json: model is not a JSON object',
    );
    await expect(Tokenizer.load(fixtureSource(fixture, { 'tokenizer.json': (j) => ((j.decoder as { type: string }).type = 'Nonsense') }))).rejects.toThrow(
      /^tokenizer\.json: not a tokenizer @huggingface\/tokenizers can load/,
    );
    await expect(Tokenizer.load(fixtureSource(fixture, { 'tokenizer.json': (j) => ((j.added_tokens as object[])[2] = { id: 5 }) }))).rejects.toThrow(
      'tokenizer.json: added_tokens[2]: content is not a non-empty string',
    );
  });

  // Found by the fuzzer: the library drops a Split whose pattern it does not know (a warning, then a different
  // tokenizer) and reads `behavior` only when it first encodes (a TypeError then).
  it('refuses an unknown model type, a Split or Replace pattern it does not know and a bad Split behavior', async () => {
    const split = (j: Record<string, unknown>) => (j.pre_tokenizer as { pretokenizers: Record<string, unknown>[] }).pretokenizers[0];
    await expect(Tokenizer.load(fixtureSource(fixture, { 'tokenizer.json': (j) => ((j.model as { type: string }).type = 'Unigram') }))).rejects.toThrow(
      'tokenizer.json: model.type "Unigram" is not supported (Qwen3.5 tokenizers are byte-level "BPE")',
    );
    await expect(Tokenizer.load(fixtureSource(fixture, { 'tokenizer.json': (j) => (split(j).pattern = { Reg3x: '.' }) }))).rejects.toThrow(
      'tokenizer.json: pre_tokenizer.pretokenizers[0].pattern: {"Reg3x":"."} is not {"Regex": ...} or {"String": ...}',
    );
    await expect(Tokenizer.load(fixtureSource(fixture, { 'tokenizer.json': (j) => (split(j).behavior = 7) }))).rejects.toThrow(
      /^tokenizer\.json: pre_tokenizer\.pretokenizers\[0\]\.behavior: 7 is not one of Removed/,
    );
    await expect(
      Tokenizer.load(fixtureSource(fixture, { 'tokenizer.json': (j) => (j.normalizer = { type: 'Replace', pattern: {}, content: 'x' }) })),
    ).rejects.toThrow('tokenizer.json: normalizer.pattern: {} is not {"Regex": ...} or {"String": ...}');
  });

  it('is a ModelFormatError for a malformed tokenizer_config.json or generation_config.json', async () => {
    await expect(Tokenizer.load(fixtureSource(fixture, { 'tokenizer_config.json': 'nope' }))).rejects.toThrow(ModelFormatError);
    await expect(Tokenizer.load(fixtureSource(fixture, { 'tokenizer_config.json': 'nope' }))).rejects.toThrow(/^tokenizer_config\.json: not valid JSON/);
    await expect(Tokenizer.load(fixtureSource(fixture, { 'generation_config.json': '{"eos_token_id": [978, "x"]}' }))).rejects.toThrow(
      'generation_config.json: eos_token_id[1]: "x" is not a token id',
    );
    await expect(Tokenizer.load(fixtureSource(fixture, { 'generation_config.json': '{"eos_token_id": 99999}' }))).rejects.toThrow(
      'generation_config.json: eos_token_id: 99999 is not a token id',
    );
    await expect(Tokenizer.load(fixtureSource(fixture, { 'tokenizer_config.json': (c) => (c.chat_template = 7) }))).rejects.toThrow(
      'tokenizer_config.json: chat_template is neither a string nor a list',
    );
  });

  it('takes eos ids from generation_config.json (list or number), else from eos_token', async () => {
    expect((await Tokenizer.load(fixtureSource(fixture, { 'generation_config.json': '{"eos_token_id": 976}' }))).eosTokenIds).toEqual([976]);
    expect((await Tokenizer.load(fixtureSource(fixture, { 'generation_config.json': null }))).eosTokenIds).toEqual([imEnd]);
    expect((await Tokenizer.load(fixtureSource(fixture, { 'generation_config.json': '{}' }))).eosTokenIds).toEqual([imEnd]);
    const objectForm = fixtureSource(fixture, { 'generation_config.json': null, 'tokenizer_config.json': (c) => (c.eos_token = { content: '<|im_end|>' }) });
    expect((await Tokenizer.load(objectForm)).eosTokenIds).toEqual([imEnd]);
    const unknown = fixtureSource(fixture, { 'generation_config.json': null, 'tokenizer_config.json': (c) => (c.eos_token = '<eos>') });
    await expect(Tokenizer.load(unknown)).rejects.toThrow('tokenizer_config.json: eos_token: "<eos>" is not a token of tokenizer.json');
  });

  it('works without tokenizer_config.json, with no chat template', async () => {
    const tokenizer = await Tokenizer.load(fixtureSource(fixture, { 'tokenizer_config.json': null }));
    expect(tokenizer.chatTemplate).toBeUndefined();
    expect(tokenizer.encode('<|im_start|>user')).toEqual([977, 714, 260]);
  });

  it('prefers chat_template.jinja, and reads the default of a list of named templates', async () => {
    const withFile = fixtureSource(fixture, { 'chat_template.jinja': '{{ messages[0].content }}' });
    expect((await Tokenizer.load(withFile)).chatTemplate).toBe('{{ messages[0].content }}');
    const named = fixtureSource(fixture, {
      'tokenizer_config.json': (c) =>
        (c.chat_template = [
          { name: 'tool_use', template: 'T' },
          { name: 'default', template: 'D' },
        ]),
    });
    expect((await Tokenizer.load(named)).chatTemplate).toBe('D');
  });

  it('adds tokens that only tokenizer_config.json added_tokens_decoder declares, and rejects a conflicting one', async () => {
    const extra = fixtureSource(fixture, {
      'tokenizer_config.json': (c) => (c.added_tokens_decoder = { '1010': { content: '<|extra|>', special: true } }),
    });
    const tokenizer = await Tokenizer.load(extra);
    expect(tokenizer.size).toBe(1011);
    expect(tokenizer.encode('a<|extra|>')).toEqual([64, 1010]);
    expect(tokenizer.decode([64, 1010], { skipSpecialTokens: true })).toBe('a');
    const conflict = fixtureSource(fixture, { 'tokenizer_config.json': (c) => (c.added_tokens_decoder = { '977': { content: '<|other|>' } }) });
    await expect(Tokenizer.load(conflict)).rejects.toThrow(
      'tokenizer_config.json: added_tokens_decoder.977: is "<|other|>" but tokenizer.json has "<|im_start|>"',
    );
  });
});
