/** Index of the largest of x[0..n) (default all), the lowest on ties; NaNs are skipped (0 when all are NaN). */
export function argmax(x: ArrayLike<number>, n = x.length): number {
  let best = -1;
  for (let i = 0; i < n; i++) if (!Number.isNaN(x[i]) && (best < 0 || x[i] > x[best])) best = i;
  return Math.max(best, 0);
}
