import { ModelFormatError } from '../gpu/errors.ts';
import type { WeightSource } from '../storage/source.ts';

/**
 * What the engine needs of the tokenizer before the tokenizer itself: how many ids it can produce (rows
 * past that are padding and are never sampled) and the ids that end generation.
 */
export interface VocabInfo {
  /** Ids at or above this are padding rows of the embedding/lm_head. */
  tokenizerSize: number;
  eosTokenIds: number[];
}

export async function readVocabInfo(source: WeightSource, vocabSize: number, configEos: unknown): Promise<VocabInfo> {
  let tokenizerSize = vocabSize;
  if (await source.has('tokenizer.json')) {
    let json: { model?: { vocab?: Record<string, number> }; added_tokens?: { id: number }[] };
    try {
      json = JSON.parse(await source.text('tokenizer.json'));
    } catch (error) {
      throw new ModelFormatError(`not valid JSON (${(error as Error).message})`, 'tokenizer.json');
    }
    let max = -1;
    for (const id of Object.values(json.model?.vocab ?? {})) if (id > max) max = id;
    for (const t of json.added_tokens ?? []) if (t.id > max) max = t.id;
    if (max >= vocabSize) throw new ModelFormatError(`has token id ${max}, beyond the model's vocab_size ${vocabSize}`, 'tokenizer.json');
    if (max >= 0) tokenizerSize = max + 1;
  }
  let eos: unknown = configEos;
  if (await source.has('generation_config.json')) {
    try {
      eos = JSON.parse(await source.text('generation_config.json')).eos_token_id ?? eos;
    } catch (error) {
      throw new ModelFormatError(`not valid JSON (${(error as Error).message})`, 'generation_config.json');
    }
  }
  const eosTokenIds = (Array.isArray(eos) ? eos : eos === undefined || eos === null ? [] : [eos]).filter(
    (id): id is number => Number.isInteger(id) && id >= 0 && id < vocabSize,
  );
  return { tokenizerSize, eosTokenIds };
}
