/** Seeded random numbers for reproducible kernel inputs (mulberry32 + Box-Muller). */
import { rng } from '../../src/numeric/random.ts';

export { rng };

export function randn(n: number, seed: number, scale = 1): Float32Array {
  const r = rng(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const u = Math.max(r(), 1e-12);
    out[i] = Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * r()) * scale;
  }
  return out;
}
