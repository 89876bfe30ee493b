import { checks } from './checks.ts';

const check = checks('ropeTable');

/**
 * RoPE cos/sin table for partial rotary embedding (Qwen3_5TextRotaryEmbedding, text-only: all three M-RoPE
 * axes carry the same position, so it is plain RoPE on the first `rotaryDim` dims).
 * Entry (p, i), i < rotaryDim/2, at (p * rotaryDim/2 + i) * 2 = [cos(p·θ^(-2i/rotaryDim)), sin(…)].
 * Angles are computed here in f64: GPU sin/cos lose accuracy far from 0 and positions reach 262,144.
 */
export function ropeTable(capacity: number, rotaryDim: number, theta: number): Float32Array {
  check.count('capacity', capacity);
  if (!Number.isInteger(rotaryDim) || rotaryDim < 2 || rotaryDim % 2 !== 0) check.fail(`rotaryDim ${rotaryDim} must be a positive even integer`);
  if (!(theta > 1)) check.fail(`theta ${theta} must be > 1`);
  const half = rotaryDim / 2;
  const invFreq = Array.from({ length: half }, (_, i) => theta ** ((-2 * i) / rotaryDim));
  const table = new Float32Array(capacity * rotaryDim);
  for (let p = 0; p < capacity; p++) {
    for (let i = 0; i < half; i++) {
      const angle = p * invFreq[i];
      table[(p * half + i) * 2] = Math.cos(angle);
      table[(p * half + i) * 2 + 1] = Math.sin(angle);
    }
  }
  return table;
}
