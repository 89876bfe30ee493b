import { expect } from 'vitest';

/** Max of |a - b| / (atol + rtol |b|) must stay ≤ 1; the message names the worst element. */
export function expectClose(actual: ArrayLike<number>, expected: ArrayLike<number>, atol: number, rtol = 0, label = ''): void {
  expect(actual.length, `${label} length`).toBe(expected.length);
  let worst = 0;
  let at = -1;
  for (let i = 0; i < expected.length; i++) {
    const err = Math.abs(actual[i] - expected[i]) / (atol + rtol * Math.abs(expected[i]));
    if (!(err <= worst)) {
      worst = err;
      at = i;
      if (Number.isNaN(err)) break;
    }
  }
  const detail = at >= 0 ? `worst at ${at}: got ${actual[at]}, want ${expected[at]}` : '';
  expect(worst, `${label} ${detail}`).toBeLessThanOrEqual(1);
}
