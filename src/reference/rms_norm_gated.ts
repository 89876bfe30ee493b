/**
 * Qwen3_5RMSNormGated in f64 (plain weight, norm before gate): rows r < rows, t = r / heads, h = r % heads,
 *   y[r*dim + i] = x[r*dim + i] / sqrt(mean_i(x²) + eps) * w[i] * silu(z[t*zTokenStride + zOffset + h*dim + i]).
 */
export function rmsNormGated(a: {
  x: Float32Array;
  z: Float32Array;
  zTokenStride: number;
  zOffset: number;
  w: Float32Array;
  rows: number;
  heads: number;
  dim: number;
  eps: number;
}): Float32Array {
  const { x, z, w, dim } = a;
  const y = new Float32Array(a.rows * dim);
  for (let r = 0; r < a.rows; r++) {
    const zBase = Math.floor(r / a.heads) * a.zTokenStride + a.zOffset + (r % a.heads) * dim;
    let ss = 0;
    for (let i = 0; i < dim; i++) ss += x[r * dim + i] ** 2;
    const inv = 1 / Math.sqrt(ss / dim + a.eps);
    for (let i = 0; i < dim; i++) {
      const g = z[zBase + i];
      y[r * dim + i] = x[r * dim + i] * inv * w[i] * (g / (1 + Math.exp(-g)));
    }
  }
  return y;
}
