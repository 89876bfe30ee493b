import { afterAll, describe, expect, it } from 'vitest';
import { openCheckpoint } from '../../src/formats/open.ts';
import { ModelFormatError } from '../../src/errors.ts';
import { FileSource } from '../../src/storage/file.ts';
import { readJson } from '../../src/formats/source.ts';
import { renderChat } from '../../src/text/chat_template.ts';
import { Tokenizer } from '../../src/text/tokenizer.ts';
import { FIXTURES, fixtureDir } from '../helpers/fixtures.ts';
import { type FixtureGgufOptions, type KeyValue, kv, removeWrittenGgufs, writeFixtureGguf } from '../helpers/gguf_writer.ts';
import { textGolden } from '../text/sources.ts';

afterAll(removeWrittenGgufs);

async function ggufFiles(fixture: (typeof FIXTURES)[number], options: FixtureGgufOptions = {}) {
  const { dir, file } = await writeFixtureGguf(fixture, options);
  return (await openCheckpoint(new FileSource(dir), file)).files;
}

const replace = (entry: KeyValue): FixtureGgufOptions => ({ metadata: (entries) => entries.map((e) => (e.key === entry.key ? entry : e)) });
const without = (key: string): FixtureGgufOptions => ({ metadata: (entries) => entries.filter((e) => e.key !== key) });

for (const fixture of FIXTURES) {
  describe(`${fixture}: tokenizer files synthesised from GGUF metadata`, async () => {
    const golden = textGolden(fixture);
    const files = await ggufFiles(fixture);
    const tokenizer = await Tokenizer.load(files);
    const original = new FileSource(fixtureDir(fixture));

    it('encodes every tokenizer case to the golden ids and decodes them back', () => {
      for (const c of golden.tokenizer_cases) {
        expect(tokenizer.encode(c.text), c.text).toEqual(c.ids);
        expect(tokenizer.decode(c.ids), c.text).toBe(c.decoded);
      }
      expect(tokenizer.encode(golden.rendered_prompt)).toEqual(golden.prompt_ids);
    });

    it('renders every chat case with the GGUF chat template', () => {
      for (const c of golden.chat_cases) {
        const rendered = renderChat(tokenizer.chatTemplate!, {
          messages: c.messages,
          addGenerationPrompt: c.add_generation_prompt,
          enableThinking: c.enable_thinking,
        });
        expect(rendered).toBe(c.rendered);
      }
    });

    it("has the fixture tokenizer's size, vocabulary, merges, added tokens and eos ids", async () => {
      expect(tokenizer.size).toBe(golden.tokenizer_size);
      const ours = (await readJson(files, 'tokenizer.json')) as Record<string, any>;
      const theirs = (await readJson(original, 'tokenizer.json')) as Record<string, any>;
      expect(ours.model.vocab).toEqual(theirs.model.vocab);
      expect(ours.model.merges).toEqual(theirs.model.merges);
      expect(ours.pre_tokenizer).toEqual(theirs.pre_tokenizer);
      expect(ours.normalizer).toEqual(theirs.normalizer);
      expect(ours.decoder).toEqual(theirs.decoder);
      // special matches HF: <think>, <tool_call>, the FIM tokens... are not special.
      const added = (list: any[]) => list.map((t) => [t.id, t.content, t.special]);
      expect(added(ours.added_tokens)).toEqual(added(theirs.added_tokens));
      expect(tokenizer.eosTokenIds).toEqual((await Tokenizer.load(original)).eosTokenIds);
      for (const [token, id] of Object.entries(golden.special_ids)) expect(tokenizer.tokenId(token)).toBe(id);
    });

    it('carries eos, pad and sampling settings into tokenizer_config.json and generation_config.json', async () => {
      const config = (await readJson(files, 'tokenizer_config.json')) as Record<string, unknown>;
      const theirs = (await readJson(original, 'tokenizer_config.json')) as Record<string, unknown>;
      for (const key of ['eos_token', 'pad_token', 'bos_token', 'add_bos_token', 'chat_template']) expect(config[key], key).toEqual(theirs[key]);
      const generation = (await readJson(files, 'generation_config.json')) as Record<string, unknown>;
      const theirGeneration = (await readJson(original, 'generation_config.json')) as Record<string, unknown>;
      for (const key of ['eos_token_id', 'pad_token_id', 'do_sample', 'temperature', 'top_p', 'top_k'])
        expect(generation[key], key).toEqual(theirGeneration[key]);
    });
  });
}

describe('GGUF tokenizer metadata', () => {
  it('uses the Qwen2 split regex for the qwen2 pre-tokenizer', async () => {
    const files = await ggufFiles('tiny-qwen35', replace(kv.str('tokenizer.ggml.pre', 'qwen2')));
    const json = (await readJson(files, 'tokenizer.json')) as Record<string, any>;
    expect(json.pre_tokenizer.pretokenizers[0].pattern.Regex).toBe(
      "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
    );
    expect((await Tokenizer.load(files)).encode('Hello, world! 12345')).toEqual(textGolden('tiny-qwen35').tokenizer_cases[0].ids);
  });

  const refused: [string, FixtureGgufOptions, RegExp][] = [
    [
      'an unknown pre-tokenizer',
      replace(kv.str('tokenizer.ggml.pre', 'llama-bpe')),
      /metadata key tokenizer\.ggml\.pre: "llama-bpe" is not a Qwen pre-tokenizer/,
    ],
    ['no pre-tokenizer', without('tokenizer.ggml.pre'), /metadata key tokenizer\.ggml\.pre: missing/],
    [
      'a SentencePiece tokenizer',
      replace(kv.str('tokenizer.ggml.model', 'llama')),
      /metadata key tokenizer\.ggml\.model: "llama" is not a byte-level BPE tokenizer/,
    ],
    ['no merges', without('tokenizer.ggml.merges'), /metadata key tokenizer\.ggml\.merges: missing/],
    ['a malformed merge', replace(kv.array('tokenizer.ggml.merges', 8, ['a b c'])), /metadata key tokenizer\.ggml\.merges: entry 0 "a b c" is not two tokens/],
  ];
  for (const [what, options, message] of refused) {
    it(`refuses ${what}, naming the key`, async () => {
      const files = await ggufFiles('tiny-qwen35', options);
      await expect(files.text('tokenizer.json')).rejects.toThrow(ModelFormatError);
      await expect(files.text('tokenizer.json')).rejects.toThrow(new RegExp(`tiny-qwen35\\.gguf: ${message.source}`));
    });
  }

  it('names an eos id outside the vocabulary', async () => {
    const files = await ggufFiles('tiny-qwen35', replace(kv.u32('tokenizer.ggml.eos_token_id', 5000)));
    await expect(files.text('generation_config.json')).rejects.toThrow(/tokenizer\.ggml\.eos_token_id: 5000 is not a token id \(0\.\.1023\)/);
  });

  it('provides only config.json when the file has no tokenizer', async () => {
    const files = await ggufFiles('tiny-qwen35', { metadata: (entries) => entries.filter((e) => !e.key.startsWith('tokenizer.')) });
    expect(await files.has('config.json')).toBe(true);
    expect(await files.has('tokenizer.json')).toBe(false);
    await expect(files.text('tokenizer.json')).rejects.toThrow(/tokenizer\.json: not provided by .*tiny-qwen35\.gguf/);
  });
});
