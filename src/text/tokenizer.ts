import { Tokenizer as HfTokenizer } from '@huggingface/tokenizers';
import { ContractError, ModelFormatError } from '../errors.ts';
import type { WeightSource } from '../formats/source.ts';
import { type Json, readTokenizerFiles } from '../formats/tokenizer_files.ts';

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
    const { json, config, addedTokens, size, eosTokenIds } = await readTokenizerFiles(source);

    let hf: HfTokenizer;
    try {
      // HF transformers no longer cleans up spaces by default; the library still does, which would alter text.
      hf = new HfTokenizer({ ...json, added_tokens: addedTokens }, { ...config, clean_up_tokenization_spaces: config.clean_up_tokenization_spaces ?? false });
      // The library reads parts of its config only when it first encodes or decodes: try both now.
      // A vocabulary without byte tokens encodes it to nothing, and the library refuses to decode nothing.
      const ids = hf.encode(TRIAL_TEXT, { add_special_tokens: false }).ids;
      hf.decode(ids.length > 0 ? ids : [0], { skip_special_tokens: false });
    } catch (error) {
      throw new ModelFormatError(`not a tokenizer @huggingface/tokenizers can load (${(error as Error).message})`, 'tokenizer.json', undefined, {
        cause: error,
      });
    }
    const chatTemplate = (await source.has('chat_template.jinja')) ? await source.text('chat_template.jinja') : configTemplate(config);
    return new Tokenizer(hf, size, eosTokenIds, chatTemplate);
  }

  /** Added tokens written in the text (`<|im_start|>`, `<think>`) become their ids, as in HF's default. */
  encode(text: string): number[] {
    try {
      return this.hf.encode(text, { add_special_tokens: false }).ids;
    } catch (error) {
      throw new ModelFormatError(`encoding failed (${(error as Error).message})`, 'tokenizer.json', undefined, { cause: error });
    }
  }

  decode(ids: ArrayLike<number>, options: { skipSpecialTokens?: boolean } = {}): string {
    const list = Array.from(ids);
    if (list.length === 0) return '';
    list.forEach((id, i) => {
      if (!Number.isInteger(id) || id < 0 || id >= this.size || this.hf.id_to_token(id) === undefined) {
        throw new ContractError(`token id ${id} at index ${i} is not in the tokenizer's vocabulary (ids 0..${this.size - 1})`, 'decode');
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
