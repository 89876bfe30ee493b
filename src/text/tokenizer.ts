import { Tokenizer as HfTokenizer } from '@huggingface/tokenizers';
import { ModelFormatError, QwenError } from '../gpu/errors.ts';
import { readJson, type WeightSource } from '../storage/source.ts';

type Json = Record<string, unknown>;
interface AddedTokenJson extends Json {
  id: number;
  content: string;
}

/**
 * The model's own tokenizer (tokenizer.json, run by @huggingface/tokenizers), its chat template and the ids
 * that end generation. Text in and out is exact: no BOS is added and decoding never cleans up spaces.
 */
export class Tokenizer {
  private constructor(
    private readonly hf: HfTokenizer,
    readonly size: number,
    readonly eosTokenIds: number[],
    readonly chatTemplate: string | undefined,
  ) {}

  static async load(source: WeightSource): Promise<Tokenizer> {
    if (!(await source.has('tokenizer.json'))) throw new ModelFormatError(`missing from ${source.location}`, 'tokenizer.json');
    const json = asObject(await readJson(source, 'tokenizer.json'), 'tokenizer.json', 'the top level');
    // The library guesses a model from the fields of an unknown type (and would load it); only BPE is Qwen's.
    const modelType = asObject(json.model, 'tokenizer.json', 'model').type;
    if (modelType !== 'BPE') throw new ModelFormatError(`model.type ${JSON.stringify(modelType)} is not supported (Qwen3.5 tokenizers are byte-level "BPE")`, 'tokenizer.json');
    for (const section of ['normalizer', 'pre_tokenizer', 'decoder', 'post_processor']) checkPatterns(json[section], section);
    const config = (await source.has('tokenizer_config.json'))
      ? asObject(await readJson(source, 'tokenizer_config.json'), 'tokenizer_config.json', 'the top level')
      : {};
    const addedTokens = mergeAddedTokens(json, config);
    const size = highestId(json, addedTokens) + 1;

    let hf: HfTokenizer;
    try {
      // HF transformers no longer cleans up spaces by default; the library still does, which would alter text.
      hf = new HfTokenizer({ ...json, added_tokens: addedTokens }, { ...config, clean_up_tokenization_spaces: config.clean_up_tokenization_spaces ?? false });
      // The library reads parts of its config only when it first encodes or decodes: try both now.
      // A vocabulary without byte tokens encodes it to nothing, and the library refuses to decode nothing.
      const ids = hf.encode(TRIAL_TEXT, { add_special_tokens: false }).ids;
      hf.decode(ids.length > 0 ? ids : [0], { skip_special_tokens: false });
    } catch (error) {
      throw new ModelFormatError(`not a tokenizer @huggingface/tokenizers can load (${(error as Error).message})`, 'tokenizer.json');
    }
    const chatTemplate = (await source.has('chat_template.jinja')) ? await source.text('chat_template.jinja') : configTemplate(config);
    const eosTokenIds = await readEos(source, config, hf, size);
    return new Tokenizer(hf, size, eosTokenIds, chatTemplate);
  }

  /** Added tokens written in the text (`<|im_start|>`, `<think>`) become their ids, as in HF's default. */
  encode(text: string): number[] {
    try {
      return this.hf.encode(text, { add_special_tokens: false }).ids;
    } catch (error) {
      throw new QwenError(`tokenizer.json: encoding failed (${(error as Error).message})`);
    }
  }

  decode(ids: ArrayLike<number>, options: { skipSpecialTokens?: boolean } = {}): string {
    const list = Array.from(ids);
    if (list.length === 0) return '';
    list.forEach((id, i) => {
      if (!Number.isInteger(id) || id < 0 || id >= this.size || this.hf.id_to_token(id) === undefined) {
        throw new QwenError(`decode: token id ${id} at index ${i} is not in the tokenizer's vocabulary (ids 0..${this.size - 1})`);
      }
    });
    return this.hf.decode(list, { skip_special_tokens: options.skipSpecialTokens ?? false });
  }

  tokenId(token: string): number | undefined {
    return this.hf.token_to_id(token);
  }
}

/** Text with words, digits, punctuation, spaces, newlines and non-Latin script, encoded once at load. */
const TRIAL_TEXT = 'Hello, world! 12 + 30 = 42.\n\tÉté 你好 ';

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
    throw new ModelFormatError(`${where}.behavior: ${JSON.stringify(step.behavior)} is not one of Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous`, 'tokenizer.json');
  }
  for (const [key, v] of Object.entries(step)) if (typeof v === 'object' && v !== null && key !== 'pattern') checkPatterns(v, `${where}.${key}`);
}

function asObject(value: unknown, file: string, where: string): Json {
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
      throw new ModelFormatError(`${field}: is ${JSON.stringify(token.content)} but tokenizer.json has ${JSON.stringify(known.content)} for that id`, 'tokenizer_config.json');
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
    if (!Number.isInteger(id) || (id as number) < 0) throw new ModelFormatError(`model.vocab[${JSON.stringify(token)}] is not a non-negative integer id`, 'tokenizer.json');
    if ((id as number) > max) max = id as number;
  }
  for (const t of addedTokens) if (t.id > max) max = t.id;
  if (max < 0) throw new ModelFormatError('has no tokens (model.vocab and added_tokens are empty)', 'tokenizer.json');
  return max;
}

/** A string, or a list of named templates of which HF uses 'default'. */
function configTemplate(config: Json): string | undefined {
  const template = config.chat_template;
  if (template === undefined || template === null) return undefined;
  if (typeof template === 'string') return template;
  if (Array.isArray(template)) {
    const named = template.find((t) => typeof t === 'object' && t !== null && (t as Json).name === 'default');
    if (named === undefined) return undefined;
    if (typeof (named as Json).template === 'string') return (named as Json).template as string;
  }
  throw new ModelFormatError('chat_template is neither a string nor a list of {name, template}', 'tokenizer_config.json');
}

/** generation_config.json's eos_token_id (a number or a list), else tokenizer_config.json's eos_token. */
async function readEos(source: WeightSource, config: Json, hf: HfTokenizer, size: number): Promise<number[]> {
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
  const id = typeof content === 'string' ? hf.token_to_id(content) : undefined;
  if (id === undefined) throw new ModelFormatError(`eos_token: ${JSON.stringify(content)} is not a token of tokenizer.json`, 'tokenizer_config.json');
  return [id];
}
