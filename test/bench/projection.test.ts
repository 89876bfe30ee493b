import { describe, expect, it } from 'vitest';
import { projectDecode } from '../../src/bench/projection.ts';

describe('projectDecode', () => {
  it('adds every layer, the head and 2·(S − 1) hops through stage 0, against hand-worked cases', () => {
    expect(projectDecode({ layers: 60, layerMs: 0.5, headMs: 2, hopMs: 0.25, stages: 1 })).toEqual({
      stages: 1,
      hops: 0,
      token_ms: 32,
      tokens_per_s: 1000 / 32,
      aggregate_tokens_per_s: 1000 / 32,
    });
    const four = projectDecode({ layers: 60, layerMs: 0.5, headMs: 2, hopMs: 0.25, stages: 4 });
    expect(four.hops).toBe(6);
    expect(four.token_ms).toBeCloseTo(33.5, 12);
    expect(four.aggregate_tokens_per_s).toBeCloseTo(4000 / 33.5, 9);
  });
});
