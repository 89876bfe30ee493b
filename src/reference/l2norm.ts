/**
 * HF `l2norm` of the GDN core on the heads of each token, with q's extra Dk^-0.5 scale; f64 accumulation.
 * Returns a copy of x where, for t < tokens and h < heads, v = x[t*tokenStride + h*dim ..][0, dim) becomes
 * v * 1/sqrt(Σv² + 1e-6) * (h < scaledHeads ? scale : 1). Everything else is copied unchanged.
 */
export function l2norm(
  x: Float32Array,
  a: { tokens: number; heads: number; dim: number; tokenStride: number; scaledHeads: number; scale: number },
): Float32Array {
  const y = Float32Array.from(x);
  for (let t = 0; t < a.tokens; t++) {
    for (let h = 0; h < a.heads; h++) {
      const base = t * a.tokenStride + h * a.dim;
      let ss = 0;
      for (let i = 0; i < a.dim; i++) ss += x[base + i] ** 2;
      const f = (1 / Math.sqrt(ss + 1e-6)) * (h < a.scaledHeads ? a.scale : 1);
      for (let i = 0; i < a.dim; i++) y[base + i] = x[base + i] * f;
    }
  }
  return y;
}
