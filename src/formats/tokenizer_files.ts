import { ModelFormatError } from '../errors.ts';
import { readJson, type WeightSource } from './source.ts';

export type Json = Record<string, unknown>;
export interface AddedTokenJson extends Json {
  id: number;
  content: string;
}

/** What a checkpoint's tokenizer files say, checked: no tokenizer library needed to read them. */
export interface TokenizerFiles {
  /** tokenizer.json (a byte-level BPE whose Split and Replace patterns the library will honour). */
  json: Json;
  /** tokenizer_config.json, or {} when absent. */
  config: Json;
  /** tokenizer.json's added tokens, plus those only tokenizer_config.json declares. */
  addedTokens: AddedTokenJson[];
  /** One past the highest id of the vocabulary and the added tokens. */
  size: number;
  /** generation_config.json's eos_token_id, else tokenizer_config.json's eos_token; [] when neither says. */
  eosTokenIds: number[];
}

export async function readTokenizerFiles(source: WeightSource): Promise<TokenizerFiles> {
  if (!(await source.has('tokenizer.json'))) throw new ModelFormatError(`missing from ${source.location}`, 'tokenizer.json');
  const json = asObject(await readJson(source, 'tokenizer.json'), 'tokenizer.json', 'the top level');
  // The library guesses a model from the fields of an unknown type (and would load it); only BPE is Qwen's.
  const model = asObject(json.model, 'tokenizer.json', 'model');
  if (model.type !== 'BPE')
    throw new ModelFormatError(`model.type ${JSON.stringify(model.type)} is not supported (Qwen3.5 tokenizers are byte-level "BPE")`, 'tokenizer.json');
  for (const section of ['normalizer', 'pre_tokenizer', 'decoder', 'post_processor']) checkPatterns(json[section], section);
  const config = (await source.has('tokenizer_config.json'))
    ? asObject(await readJson(source, 'tokenizer_config.json'), 'tokenizer_config.json', 'the top level')
    : {};
  const addedTokens = mergeAddedTokens(json, config);
  const size = highestId(json, addedTokens) + 1;
  const vocab = asObject(model.vocab ?? {}, 'tokenizer.json', 'model.vocab');
  const tokenId = (content: string) =>
    addedTokens.find((t) => t.content === content)?.id ?? (Object.hasOwn(vocab, content) ? (vocab[content] as number) : undefined);
  const eosTokenIds = await readEos(source, config, tokenId, size);
  return { json, config, addedTokens, size, eosTokenIds };
}

const SPLIT_BEHAVIORS = ['removed', 'isolated', 'mergedwithprevious', 'mergedwithnext', 'contiguous'];

/**
 * The `pattern` of every Split and Replace step under `value` must be {"Regex": string} or {"String": string}:
 * the library warns about any other and drops the step, which would tokenize differently without an error.
 */
function checkPatterns(value: unknown, where: string): void {
  if (Array.isArray(value)) {
    value.forEach((v, i) => checkPatterns(v, `${where}[${i}]`));
    return;
  }
  if (typeof value !== 'object' || value === null) return;
  const step = value as Json;
  if (step.type === 'Split' || step.type === 'Replace') {
    const pattern = step.pattern as Json | undefined;
    const ok = typeof pattern === 'object' && pattern !== null && (typeof pattern.Regex === 'string' || typeof pattern.String === 'string');
    if (!ok) throw new ModelFormatError(`${where}.pattern: ${JSON.stringify(step.pattern)} is not {"Regex": ...} or {"String": ...}`, 'tokenizer.json');
  }
  if (step.type === 'Split' && step.behavior !== undefined && !(typeof step.behavior === 'string' && SPLIT_BEHAVIORS.includes(step.behavior.toLowerCase()))) {
    throw new ModelFormatError(
      `${where}.behavior: ${JSON.stringify(step.behavior)} is not one of Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous`,
      'tokenizer.json',
    );
  }
  for (const [key, v] of Object.entries(step)) if (typeof v === 'object' && v !== null && key !== 'pattern') checkPatterns(v, `${where}.${key}`);
}

export function asObject(value: unknown, file: string, where: string): Json {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new ModelFormatError(`${where} is not a JSON object`, file);
  return value as Json;
}

/** tokenizer.json's added tokens, plus any that only tokenizer_config.json's added_tokens_decoder declares (HF adds those too). */
function mergeAddedTokens(json: Json, config: Json): AddedTokenJson[] {
  const list = json.added_tokens ?? [];
  if (!Array.isArray(list)) throw new ModelFormatError('added_tokens is not a list', 'tokenizer.json');
  const tokens = list.map((t, i) => checkAddedToken(t, 'tokenizer.json', `added_tokens[${i}]`));
  const byId = new Map(tokens.map((t) => [t.id, t]));
  const decoder = config.added_tokens_decoder;
  if (decoder === undefined) return tokens;
  for (const [key, value] of Object.entries(asObject(decoder, 'tokenizer_config.json', 'added_tokens_decoder'))) {
    const field = `added_tokens_decoder.${key}`;
    const token = checkAddedToken({ ...asObject(value, 'tokenizer_config.json', field), id: Number(key) }, 'tokenizer_config.json', field);
    const known = byId.get(token.id);
    if (known === undefined) tokens.push(token);
    else if (known.content !== token.content) {
      throw new ModelFormatError(
        `${field}: is ${JSON.stringify(token.content)} but tokenizer.json has ${JSON.stringify(known.content)} for that id`,
        'tokenizer_config.json',
      );
    }
  }
  return tokens;
}

function checkAddedToken(value: unknown, file: string, field: string): AddedTokenJson {
  const token = asObject(value, file, field);
  if (!Number.isInteger(token.id) || (token.id as number) < 0) throw new ModelFormatError(`${field}: id is not a non-negative integer`, file);
  if (typeof token.content !== 'string' || token.content === '') throw new ModelFormatError(`${field}: content is not a non-empty string`, file);
  return token as AddedTokenJson;
}

function highestId(json: Json, addedTokens: AddedTokenJson[]): number {
  const model = asObject(json.model, 'tokenizer.json', 'model');
  const vocab = asObject(model.vocab ?? {}, 'tokenizer.json', 'model.vocab');
  let max = -1;
  for (const [token, id] of Object.entries(vocab)) {
    if (!Number.isInteger(id) || (id as number) < 0)
      throw new ModelFormatError(`model.vocab[${JSON.stringify(token)}] is not a non-negative integer id`, 'tokenizer.json');
    if ((id as number) > max) max = id as number;
  }
  for (const t of addedTokens) if (t.id > max) max = t.id;
  if (max < 0) throw new ModelFormatError('has no tokens (model.vocab and added_tokens are empty)', 'tokenizer.json');
  return max;
}

/** generation_config.json's eos_token_id (a number or a list), else tokenizer_config.json's eos_token. */
async function readEos(source: WeightSource, config: Json, tokenId: (content: string) => number | undefined, size: number): Promise<number[]> {
  if (await source.has('generation_config.json')) {
    const generation = asObject(await readJson(source, 'generation_config.json'), 'generation_config.json', 'the top level');
    const eos = generation.eos_token_id;
    if (eos !== undefined && eos !== null) {
      const ids = Array.isArray(eos) ? eos : [eos];
      ids.forEach((id, i) => {
        if (!Number.isInteger(id) || id < 0 || id >= size) {
          const where = Array.isArray(eos) ? `eos_token_id[${i}]` : 'eos_token_id';
          throw new ModelFormatError(`${where}: ${JSON.stringify(id)} is not a token id (0..${size - 1})`, 'generation_config.json');
        }
      });
      return ids as number[];
    }
  }
  // eos_token is a string or, in older configs, an AddedToken object {content, ...}.
  const eos = config.eos_token;
  const content = typeof eos === 'object' && eos !== null ? (eos as Json).content : eos;
  if (content === undefined || content === null) return [];
  const id = typeof content === 'string' ? tokenId(content) : undefined;
  if (id === undefined) throw new ModelFormatError(`eos_token: ${JSON.stringify(content)} is not a token of tokenizer.json`, 'tokenizer_config.json');
  return [id];
}
