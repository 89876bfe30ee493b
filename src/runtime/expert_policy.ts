import { ContractError } from '../errors.ts';

/**
 * Which resident expert a MoE layer's cache evicts. Each layer has its own policy; `now` counts the layer's
 * routing steps (one per forward call), and `weight` is what one step's use of an expert is worth (1, or
 * more for an expert chosen at a higher rank or by more tokens).
 */
export interface EvictionPolicy {
  readonly name: string;
  touch(expert: number, now: number, weight: number): void;
  /** The expert to evict among `candidates` (resident and not needed now). */
  victim(candidates: readonly number[], now: number): number;
  /** An evicted expert's history is kept (frequency survives eviction) unless the policy says otherwise. */
  evicted(expert: number): void;
}

/** Least recently used; ties by lower id. */
export class LruPolicy implements EvictionPolicy {
  readonly name = 'lru';
  private readonly last: Float64Array;
  constructor(experts: number) {
    this.last = new Float64Array(experts).fill(-1);
  }
  touch(expert: number, now: number): void {
    this.last[expert] = now;
  }
  victim(candidates: readonly number[]): number {
    let best = candidates[0];
    for (const e of candidates) if (this.last[e] < this.last[best]) best = e;
    return best;
  }
  evicted(): void {}
}

/**
 * LRFU (Lee et al., 2001) weighted by routing: each expert's score is Σ weight · 2^(-λ·age) over its past
 * uses, which is LFU at λ = 0 and tends to LRU as λ grows. MoE routing is skewed (a few experts per layer
 * take most tokens) and bursty, so a slowly decaying frequency keeps the popular experts through bursts of
 * rare ones that LRU would let push them out. Scores are kept as log2(score) + λ·last so that comparing
 * them never underflows. History survives eviction, so a popular expert that was pushed out comes back
 * with its frequency.
 */
export class LrfuPolicy implements EvictionPolicy {
  readonly name: string;
  private readonly key: Float64Array;
  constructor(
    experts: number,
    readonly lambda = 0.05,
  ) {
    this.name = `lrfu(λ=${lambda})`;
    this.key = new Float64Array(experts).fill(-Infinity);
  }
  touch(expert: number, now: number, weight: number): void {
    const decayed = Number.isFinite(this.key[expert]) ? 2 ** (this.key[expert] - this.lambda * now) : 0;
    this.key[expert] = Math.log2(decayed + weight) + this.lambda * now;
  }
  victim(candidates: readonly number[]): number {
    let best = candidates[0];
    for (const e of candidates) if (this.key[e] < this.key[best]) best = e;
    return best;
  }
  evicted(): void {}
}

export type PolicyName = 'lru' | 'lrfu';

export function createPolicy(name: PolicyName, experts: number): EvictionPolicy {
  switch (name) {
    case 'lru':
      return new LruPolicy(experts);
    case 'lrfu':
      return new LrfuPolicy(experts);
    default: {
      const never: never = name;
      throw new ContractError(`unknown eviction policy ${String(never)}`, 'createPolicy');
    }
  }
}

/** What a step of one layer asks for: its distinct experts, each with the weight of its use. */
export interface TraceStep {
  layer: number;
  experts: number[];
  weights: number[];
}

/**
 * Replays a routing trace through a cache of `slots` experts per layer (the decode-time behaviour: every
 * step's experts made resident, the others evictable) and counts hits and misses per expert use.
 */
export function replayTrace(
  trace: readonly TraceStep[],
  layers: number,
  experts: number,
  slots: number,
  policy: (experts: number) => EvictionPolicy,
): { hits: number; misses: number; hitRate: number } {
  const state = Array.from({ length: layers }, () => ({ policy: policy(experts), resident: new Set<number>(), now: 0 }));
  let hits = 0;
  let misses = 0;
  for (const step of trace) {
    const s = state[step.layer];
    const now = s.now++;
    const need = new Set(step.experts);
    step.experts.forEach((e, i) => s.policy.touch(e, now, step.weights[i]));
    for (const e of step.experts) {
      if (s.resident.has(e)) {
        hits++;
        continue;
      }
      misses++;
      if (s.resident.size >= slots) {
        // More distinct experts than slots (a prefill chunk): the ones this step already used go too.
        const others = [...s.resident].filter((r) => !need.has(r));
        const candidates = others.length > 0 ? others : [...s.resident];
        const v = s.policy.victim(candidates, now);
        s.resident.delete(v);
        s.policy.evicted(v);
      }
      s.resident.add(e);
    }
  }
  return { hits, misses, hitRate: hits / Math.max(1, hits + misses) };
}
