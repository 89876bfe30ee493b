import { describe, expect, it } from 'vitest';
import { LrfuPolicy, LruPolicy, type TraceStep, replayTrace } from '../../src/runtime/expert_policy.ts';
import { rng } from '../helpers/random.ts';

const step = (layer: number, ...experts: number[]): TraceStep => ({ layer, experts, weights: experts.map(() => 1) });

describe('eviction policies', () => {
  it('LRU evicts the least recently used expert', () => {
    const p = new LruPolicy(8);
    [3, 1, 4, 1, 5].forEach((e, t) => p.touch(e, t));
    expect(p.victim([3, 4, 5, 1])).toBe(3);
    expect(p.victim([4, 5, 1])).toBe(4);
  });

  it('LRFU keeps a frequently used expert through a scan of rare ones that makes LRU evict it', () => {
    // Two slots: expert 0 used four times, then 1 and 2 once each, then 0 again.
    const trace = [step(0, 0), step(0, 0), step(0, 0), step(0, 0), step(0, 1), step(0, 2), step(0, 0)];
    const lru = replayTrace(trace, 1, 4, 2, (n) => new LruPolicy(n));
    const lrfu = replayTrace(trace, 1, 4, 2, (n) => new LrfuPolicy(n));
    expect(lru).toMatchObject({ hits: 3, misses: 4 });
    expect(lrfu).toMatchObject({ hits: 4, misses: 3 });
  });

  it('LRFU weights uses: an expert chosen by many tokens of a step outlives one chosen by a single token', () => {
    const p = new LrfuPolicy(4, 0.05);
    p.touch(0, 0, 10);
    p.touch(1, 1, 1);
    expect(p.victim([0, 1])).toBe(1);
  });

  it('never evicts an expert the current step needs, and counts one hit or miss per distinct expert', () => {
    const trace = [step(0, 0, 1), step(1, 2, 3), step(0, 1, 2), step(0, 0, 2)];
    const r = replayTrace(trace, 2, 4, 2, (n) => new LruPolicy(n));
    expect(r.hits + r.misses).toBe(8);
    // layer 0: {0,1} miss miss; {1,2}: hit, miss (evicts 0); {0,2}: miss (evicts 1), hit. layer 1: two misses.
    expect(r).toMatchObject({ hits: 2, misses: 6 });
  });

  it('on a skewed synthetic routing trace (Zipf-like popularity), LRFU hits more often than LRU', () => {
    const r = rng(3);
    const E = 64;
    const weights = Array.from({ length: E }, (_, e) => 1 / (e + 1) ** 0.8);
    const total = weights.reduce((a, b) => a + b, 0);
    const pick = () => {
      let u = r() * total;
      for (let e = 0; e < E; e++) if ((u -= weights[e]) <= 0) return e;
      return E - 1;
    };
    const trace: TraceStep[] = [];
    for (let t = 0; t < 4000; t++) {
      const chosen = new Set<number>();
      while (chosen.size < 8) chosen.add(pick());
      trace.push(step(0, ...chosen));
    }
    const lru = replayTrace(trace, 1, E, 16, (n) => new LruPolicy(n));
    const lrfu = replayTrace(trace, 1, E, 16, (n) => new LrfuPolicy(n));
    expect(lrfu.hitRate).toBeGreaterThan(lru.hitRate);
  });
});
