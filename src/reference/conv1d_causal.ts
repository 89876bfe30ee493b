/**
 * Depthwise causal conv1d over time + SiLU (HF `causal_conv1d_update` / `F.conv1d` path of Qwen3_5GatedDeltaNet),
 * with the raw inputs carried between calls in a ring of K slots (slot p % K holds position p); f64 accumulation.
 *   y[t,c] = silu(Σ_{j<K} w[c*wStride + j] * in[t-(K-1)+j, c]); in[τ<0] = state[((pos+τ) % K)*C + c], in[τ≥0] = x[τ*xStride + c].
 * Returns y [T, C] and the new ring [K, C] (positions pos+T-(K-1) .. pos+T-1 written; other slots as they were).
 */
export function conv1dCausal(a: {
  x: Float32Array;
  xStride: number;
  w: Float32Array;
  wStride: number;
  kernelSize: number;
  state: Float32Array;
  position: number;
  tokens: number;
  channels: number;
}): { y: Float32Array; state: Float32Array } {
  const { x, xStride, w, wStride, kernelSize: K, state, position: pos, tokens: T, channels: C } = a;
  const slot = (tau: number) => (((pos + tau) % K) + K) % K;
  const input = (tau: number, c: number) => (tau < 0 ? state[slot(tau) * C + c] : x[tau * xStride + c]);
  const y = new Float32Array(T * C);
  for (let t = 0; t < T; t++) {
    for (let c = 0; c < C; c++) {
      let s = 0;
      for (let j = 0; j < K; j++) s += w[c * wStride + j] * input(t - (K - 1) + j, c);
      y[t * C + c] = s / (1 + Math.exp(-s));
    }
  }
  const next = Float32Array.from(state);
  for (let tau = Math.max(0, T - (K - 1)); tau < T; tau++) for (let c = 0; c < C; c++) next[slot(tau) * C + c] = x[tau * xStride + c];
  return { y, state: next };
}
