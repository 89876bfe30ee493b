import { ModelFormatError, RequestError } from '../errors.ts';
import { type WeightSource, readJson } from '../formats/source.ts';
import { type SamplingOptions, resolveSampling } from './sampler.ts';

export const GENERATION_CONFIG = 'generation_config.json';

/** The model's own sampling defaults: `doSample` false means greedy. */
export interface GenerationDefaults {
  doSample: boolean;
  sampling: SamplingOptions;
}

const FIELDS = {
  temperature: 'temperature',
  top_p: 'topP',
  top_k: 'topK',
  min_p: 'minP',
  repetition_penalty: 'repetitionPenalty',
} as const satisfies Record<string, keyof SamplingOptions>;

/**
 * generation_config.json's sampling settings (do_sample, temperature, top_p, top_k, min_p,
 * repetition_penalty), checked: a value of the wrong type, or (with do_sample) out of range, is a
 * ModelFormatError naming the file and field. A missing or null field is the sampler's default.
 */
export function parseGenerationConfig(raw: unknown, file = GENERATION_CONFIG): GenerationDefaults {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw))
    throw new ModelFormatError(`the top level is ${raw === null ? 'null' : Array.isArray(raw) ? 'a list' : `a ${typeof raw}`}, not a JSON object`, file);
  const g = raw as Record<string, unknown>;
  const doSample = g.do_sample ?? false;
  if (typeof doSample !== 'boolean') throw new ModelFormatError(`do_sample: ${JSON.stringify(doSample)} is not true or false`, file);
  const sampling: SamplingOptions = {};
  for (const [field, option] of Object.entries(FIELDS)) {
    const v = g[field];
    if (v === undefined || v === null) continue;
    if (typeof v !== 'number' || !Number.isFinite(v)) throw new ModelFormatError(`${field}: ${JSON.stringify(v)} is not a number`, file);
    sampling[option as keyof typeof sampling] = v;
  }
  if (doSample) {
    try {
      resolveSampling({ ...sampling, seed: 0 }, Number.MAX_SAFE_INTEGER);
    } catch (error) {
      if (!(error instanceof RequestError)) throw error;
      const field = Object.entries(FIELDS).find(([, o]) => o === error.field)?.[0] ?? error.field;
      throw new ModelFormatError(`${field}: ${error.detail}`, file, undefined, { cause: error });
    }
  }
  return { doSample, sampling };
}

/** The checkpoint's generation_config.json, parsed; greedy defaults when it has none. */
export async function readGenerationConfig(source: WeightSource): Promise<GenerationDefaults> {
  if (!(await source.has(GENERATION_CONFIG))) return { doSample: false, sampling: {} };
  return parseGenerationConfig(await readJson(source, GENERATION_CONFIG));
}
