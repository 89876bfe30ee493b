/**
 * Depthwise causal conv1d over time + SiLU (HF `causal_conv1d_update` / `F.conv1d` path of Qwen3_5GatedDeltaNet),
 * with the state of the last K-1 raw inputs carried between calls; f64 accumulation.
 *   y[t,c] = silu(Σ_{j<K} w[c*wStride + j] * in[t-(K-1)+j, c]); in[τ<0] = state[(K-1+τ)*C + c], in[τ≥0] = x[τ*xStride + c].
 * Returns y [T, C] and the new state [K-1, C] (the last K-1 raw inputs, oldest first).
 */
export function conv1dCausal(a: {
  x: Float32Array; xStride: number; w: Float32Array; wStride: number; kernelSize: number;
  state: Float32Array; tokens: number; channels: number;
}): { y: Float32Array; state: Float32Array } {
  const { x, xStride, w, wStride, kernelSize: K, state, tokens: T, channels: C } = a;
  const input = (tau: number, c: number) => (tau < 0 ? state[(K - 1 + tau) * C + c] : x[tau * xStride + c]);
  const y = new Float32Array(T * C);
  for (let t = 0; t < T; t++) {
    for (let c = 0; c < C; c++) {
      let s = 0;
      for (let j = 0; j < K; j++) s += w[c * wStride + j] * input(t - (K - 1) + j, c);
      y[t * C + c] = s / (1 + Math.exp(-s));
    }
  }
  const next = new Float32Array((K - 1) * C);
  for (let r = 0; r < K - 1; r++) for (let c = 0; c < C; c++) next[r * C + c] = input(T - (K - 1) + r, c);
  return { y, state: next };
}
