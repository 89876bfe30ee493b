import type { SamplingOptions } from '../runtime/sampler.ts';
import { type Args, UsageError, numberFlag } from './args.ts';

const SAMPLING_FLAGS = ['temperature', 'top-p', 'top-k', 'min-p', 'presence-penalty', 'frequency-penalty', 'repetition-penalty'] as const;

/**
 * Sampling settings from the command line. --greedy, or explicit settings, or else the model's own
 * generation_config.json defaults (do_sample, temperature, top_p, top_k), or greedy when it has none.
 */
export function samplingFromFlags(args: Args, generationConfig: Record<string, unknown>): SamplingOptions {
  const explicit = SAMPLING_FLAGS.some((f) => args.flags.has(f));
  if (args.flags.has('greedy') && explicit) throw new UsageError('--greedy cannot be combined with sampling settings');
  const seed = numberFlag(args, 'seed');
  if (args.flags.has('greedy')) return { temperature: 0, seed };
  if (!explicit) {
    const g = generationConfig;
    if (g.do_sample !== true) return { temperature: 0, seed };
    const num = (v: unknown) => (typeof v === 'number' ? v : undefined);
    return { temperature: num(g.temperature), topP: num(g.top_p), topK: num(g.top_k), minP: num(g.min_p), repetitionPenalty: num(g.repetition_penalty), seed };
  }
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
