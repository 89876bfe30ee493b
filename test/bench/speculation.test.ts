import { describe, expect, it } from 'vitest';
import { projectSpeculation } from '../../src/bench/speculation.ts';

describe('projectSpeculation', () => {
  it('counts the tokens a pass yields and what it costs, against hand-worked cases', () => {
    // Nothing accepted: one token per pass, at the price of the pass and the drafts.
    expect(projectSpeculation(0, 3, 1.2, 0.1)).toEqual({ tokensPerPass: 1, stepsPerPass: 1.5, speedup: 1 / 1.5 });
    // Everything accepted: k + 1 tokens.
    expect(projectSpeculation(1, 2, 1, 0)).toEqual({ tokensPerPass: 3, stepsPerPass: 1, speedup: 3 });
    // 80% and one draft: 1.8 tokens for 1.1 + 0.1 steps.
    const one = projectSpeculation(0.8, 1, 1.1, 0.1);
    expect(one.tokensPerPass).toBeCloseTo(1.8, 12);
    expect(one.speedup).toBeCloseTo(1.5, 12);
    // 50% and three drafts: 1 + 0.5 + 0.25 + 0.125.
    expect(projectSpeculation(0.5, 3, 1, 0).tokensPerPass).toBeCloseTo(1.875, 12);
  });
});
