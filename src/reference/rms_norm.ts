/** y = x · rsqrt(mean(x²) + eps) · (1 + w), rows of length w.length; f64 accumulation. */
export function rmsNorm(x: Float32Array, w: Float32Array, eps: number): Float32Array {
  const cols = w.length;
  const y = new Float32Array(x.length);
  for (let base = 0; base < x.length; base += cols) {
    let ss = 0;
    for (let i = 0; i < cols; i++) ss += x[base + i] ** 2;
    const inv = 1 / Math.sqrt(ss / cols + eps);
    for (let i = 0; i < cols; i++) y[base + i] = x[base + i] * inv * (1 + w[i]);
  }
  return y;
}
