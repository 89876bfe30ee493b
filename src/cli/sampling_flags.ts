import type { SamplingOptions } from '../runtime/sampler.ts';
import type { GenerationDefaults } from '../runtime/generation_config.ts';
import { type Args, UsageError, numberFlag } from './args.ts';

export const SAMPLING_FLAGS = ['temperature', 'top-p', 'top-k', 'min-p', 'presence-penalty', 'frequency-penalty', 'repetition-penalty'] as const;

/**
 * Sampling settings from the command line. --greedy, or explicit settings, or else the model's own
 * generation_config.json defaults (do_sample, temperature, top_p, top_k, min_p, repetition_penalty, checked
 * by parseGenerationConfig), or greedy when it has none.
 */
export function samplingFromFlags(args: Args, defaults: GenerationDefaults): SamplingOptions {
  const explicit = SAMPLING_FLAGS.some((f) => args.flags.has(f));
  if (args.flags.has('greedy') && explicit) throw new UsageError('--greedy cannot be combined with sampling settings');
  const seed = numberFlag(args, 'seed');
  if (args.flags.has('greedy')) return { temperature: 0, seed };
  if (!explicit) return defaults.doSample ? { ...defaults.sampling, seed } : { temperature: 0, seed };
  return {
    temperature: numberFlag(args, 'temperature'),
    topP: numberFlag(args, 'top-p'),
    topK: numberFlag(args, 'top-k'),
    minP: numberFlag(args, 'min-p'),
    presencePenalty: numberFlag(args, 'presence-penalty'),
    frequencyPenalty: numberFlag(args, 'frequency-penalty'),
    repetitionPenalty: numberFlag(args, 'repetition-penalty'),
    seed,
  };
}
