import { ModelFormatError } from '../errors.ts';
import type { GgufMetadata } from './gguf_metadata.ts';

/**
 * tokenizer.json, tokenizer_config.json and generation_config.json from a GGUF's tokenizer.ggml.* keys, in
 * the shape of Qwen3.5's own files (spec §4): byte-level BPE, NFC, the Qwen split regex, ByteLevel decoding,
 * added tokens after the BPE vocabulary.
 */

/** llama.cpp's token types (llama_token_type / gguf.TokenType). */
const TokenType = { NORMAL: 1, UNKNOWN: 2, CONTROL: 3, USER_DEFINED: 4, UNUSED: 5, BYTE: 6 } as const;

/** Split regexes by tokenizer.ggml.pre (llama-vocab.cpp LLAMA_VOCAB_PRE_TYPE_QWEN35 / _QWEN2), as HF writes them. */
const SPLIT_REGEX: Record<string, string> = {
  qwen35: "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?[\\p{L}\\p{M}]+|\\p{N}| ?[^\\s\\p{L}\\p{M}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
  qwen2: "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
};

/**
 * Qwen's added tokens that HF marks `special: false` but the converter stores as CONTROL because they look
 * special (`<|...|>`, convert_hf_to_gguf.py does_token_look_special); <think>, <tool_call>... arrive as
 * USER_DEFINED and need no exception.
 */
const NOT_SPECIAL = new Set(['<|fim_prefix|>', '<|fim_middle|>', '<|fim_suffix|>', '<|fim_pad|>', '<|repo_name|>', '<|file_sep|>']);

interface Vocab {
  tokens: string[];
  types: number[];
}

function readVocab(meta: GgufMetadata): Vocab {
  const model = meta.string('tokenizer.ggml.model', 'required for the tokenizer');
  if (model !== 'gpt2') throw new ModelFormatError(`metadata key tokenizer.ggml.model: "${model}" is not a byte-level BPE tokenizer ("gpt2")`, meta.file);
  const tokens = meta.stringArray('tokenizer.ggml.tokens', 'required for the tokenizer');
  const types = meta.optionalIntArray('tokenizer.ggml.token_type') ?? tokens.map(() => TokenType.NORMAL);
  if (types.length !== tokens.length) {
    throw new ModelFormatError(`metadata key tokenizer.ggml.token_type: ${types.length} entries for ${tokens.length} tokens`, meta.file);
  }
  return { tokens, types };
}

function tokenId(meta: GgufMetadata, key: string, vocab: Vocab): number | undefined {
  const id = meta.optionalInt(key);
  if (id !== undefined && id >= vocab.tokens.length)
    throw new ModelFormatError(`metadata key ${key}: ${id} is not a token id (0..${vocab.tokens.length - 1})`, meta.file);
  return id;
}

export function synthesizeTokenizerJson(meta: GgufMetadata): Record<string, unknown> {
  const vocab = readVocab(meta);
  const pre = meta.string('tokenizer.ggml.pre', 'required for the split regex');
  const regex = SPLIT_REGEX[pre];
  if (!regex)
    throw new ModelFormatError(`metadata key tokenizer.ggml.pre: "${pre}" is not a Qwen pre-tokenizer (${Object.keys(SPLIT_REGEX).join(', ')})`, meta.file);
  const merges = meta.stringArray('tokenizer.ggml.merges', 'required for BPE').map((merge, i) => {
    const parts = merge.split(' ');
    if (parts.length !== 2 || parts[0] === '' || parts[1] === '') {
      throw new ModelFormatError(`metadata key tokenizer.ggml.merges: entry ${i} ${JSON.stringify(merge)} is not two tokens separated by one space`, meta.file);
    }
    return parts;
  });

  const bpe: Record<string, number> = {};
  const added: Record<string, unknown>[] = [];
  vocab.tokens.forEach((token, id) => {
    const type = vocab.types[id];
    if (type === TokenType.CONTROL || type === TokenType.USER_DEFINED) {
      const special = type === TokenType.CONTROL && !NOT_SPECIAL.has(token);
      added.push({ id, content: token, single_word: false, lstrip: false, rstrip: false, normalized: false, special });
    } else if (type !== TokenType.UNUSED) {
      // Padding rows ([PAD n], UNUSED) stay out: the tokenizer never produces them.
      bpe[token] = id;
    }
  });

  const byteLevel = { type: 'ByteLevel', add_prefix_space: false, trim_offsets: false, use_regex: false };
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: added,
    normalizer: { type: 'NFC' },
    pre_tokenizer: {
      type: 'Sequence',
      pretokenizers: [{ type: 'Split', pattern: { Regex: regex }, behavior: 'Isolated', invert: false }, byteLevel],
    },
    post_processor: byteLevel,
    decoder: byteLevel,
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: '',
      end_of_word_suffix: '',
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: false,
      vocab: bpe,
      merges,
    },
  };
}

export function synthesizeTokenizerConfig(meta: GgufMetadata, contextLength: number): Record<string, unknown> {
  const vocab = readVocab(meta);
  const name = (key: string) => {
    const id = tokenId(meta, key, vocab);
    return id === undefined ? null : vocab.tokens[id];
  };
  const addBos = meta.optionalBool('tokenizer.ggml.add_bos_token') ?? false;
  const config: Record<string, unknown> = {
    tokenizer_class: 'Qwen2Tokenizer',
    model_max_length: contextLength,
    add_bos_token: addBos,
    bos_token: addBos ? name('tokenizer.ggml.bos_token_id') : null,
    eos_token: name('tokenizer.ggml.eos_token_id'),
    pad_token: name('tokenizer.ggml.padding_token_id'),
    errors: 'replace',
    clean_up_tokenization_spaces: false,
  };
  const template = meta.optionalString('tokenizer.chat_template');
  if (template !== undefined) config.chat_template = template;
  return config;
}

/** The eos id, then <|im_end|> and <|endoftext|> (Qwen's chat and document ends), plus the file's sampling defaults. */
export function synthesizeGenerationConfig(meta: GgufMetadata): Record<string, unknown> {
  const vocab = readVocab(meta);
  const eos = tokenId(meta, 'tokenizer.ggml.eos_token_id', vocab);
  const ends = [eos, vocab.tokens.indexOf('<|im_end|>'), vocab.tokens.indexOf('<|endoftext|>')];
  const config: Record<string, unknown> = {
    eos_token_id: [...new Set(ends.filter((id): id is number => id !== undefined && id >= 0))],
  };
  const pad = tokenId(meta, 'tokenizer.ggml.padding_token_id', vocab);
  if (pad !== undefined) config.pad_token_id = pad;
  // llama.cpp's general.sampling.* keys carry the model author's recommended sampling.
  const temperature = meta.optionalNumber('general.sampling.temp');
  const topP = meta.optionalNumber('general.sampling.top_p');
  const topK = meta.optionalInt('general.sampling.top_k', -1);
  const minP = meta.optionalNumber('general.sampling.min_p');
  const repetition = meta.optionalNumber('general.sampling.penalty_repeat');
  if (temperature !== undefined) {
    config.do_sample = temperature > 0;
    config.temperature = temperature;
  }
  if (topP !== undefined) config.top_p = topP;
  if (topK !== undefined && topK > 0) config.top_k = topK;
  if (minP !== undefined) config.min_p = minP;
  if (repetition !== undefined) config.repetition_penalty = repetition;
  return config;
}
