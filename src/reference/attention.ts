/**
 * Gated full attention (Qwen3_5Attention, spec §2.4) on the CPU, f64 arithmetic, f32 storage: the oracle for
 * attention_prepare and attention. RoPE angles are computed here from θ directly (not from ropeTable).
 */

export interface PrepareRef {
  /** [tokens, projStride]: per row [q_0 | gate_0 | …], k at kOffset, v at vOffset. */
  proj: Float32Array;
  projStride: number;
  kOffset: number;
  vOffset: number;
  tokens: number;
  nq: number;
  nkv: number;
  headDim: number;
  rotaryDim: number;
  theta: number;
  qNorm: Float32Array;
  kNorm: Float32Array;
  eps: number;
  pos: number;
  /** [nkv, capacity, headDim], written at positions pos..pos+tokens-1. */
  kCache: Float32Array;
  vCache: Float32Array;
  capacity: number;
}

/** RMSNorm1p then rotate-half RoPE on the first rotaryDim dims, at position p. */
function normRope(x: ArrayLike<number>, w: Float32Array, eps: number, rotaryDim: number, theta: number, p: number): number[] {
  const D = w.length;
  let ss = 0;
  for (let d = 0; d < D; d++) ss += x[d] * x[d];
  const inv = 1 / Math.sqrt(ss / D + eps);
  const n = Array.from({ length: D }, (_, d) => x[d] * inv * (1 + w[d]));
  const half = rotaryDim / 2;
  const y = n.slice();
  for (let i = 0; i < half; i++) {
    const angle = p * theta ** ((-2 * i) / rotaryDim);
    const c = Math.cos(angle);
    const s = Math.sin(angle);
    y[i] = n[i] * c - n[i + half] * s;
    y[i + half] = n[i + half] * c + n[i] * s;
  }
  return y;
}

/** Returns q [tokens, nq, headDim]; writes the K (normed, rotated) and V (raw) cache rows. */
export function attentionPrepare(a: PrepareRef): Float32Array {
  const D = a.headDim;
  const q = new Float32Array(a.tokens * a.nq * D);
  for (let t = 0; t < a.tokens; t++) {
    const p = a.pos + t;
    const row = t * a.projStride;
    for (let h = 0; h < a.nq; h++) {
      const src = a.proj.subarray(row + h * 2 * D, row + h * 2 * D + D);
      q.set(normRope(src, a.qNorm, a.eps, a.rotaryDim, a.theta, p), (t * a.nq + h) * D);
    }
    for (let g = 0; g < a.nkv; g++) {
      const k = a.proj.subarray(row + a.kOffset + g * D, row + a.kOffset + (g + 1) * D);
      const dst = (g * a.capacity + p) * D;
      a.kCache.set(normRope(k, a.kNorm, a.eps, a.rotaryDim, a.theta, p), dst);
      a.vCache.set(a.proj.subarray(row + a.vOffset + g * D, row + a.vOffset + (g + 1) * D), dst);
    }
  }
  return q;
}

export interface AttentionRef {
  q: Float32Array;
  proj: Float32Array;
  projStride: number;
  tokens: number;
  nq: number;
  nkv: number;
  headDim: number;
  kCache: Float32Array;
  vCache: Float32Array;
  capacity: number;
  pos: number;
}

/** out[t, h*D + d] = softmax_{p ≤ pos+t}(q·K[g,p] / √D) · V[g,p,d] · sigmoid(gate[t,h,d]), g = h / (nq/nkv). */
export function attention(a: AttentionRef): Float32Array {
  const D = a.headDim;
  const group = a.nq / a.nkv;
  const out = new Float32Array(a.tokens * a.nq * D);
  const scale = 1 / Math.sqrt(D);
  for (let t = 0; t < a.tokens; t++) {
    const keys = a.pos + t + 1;
    for (let h = 0; h < a.nq; h++) {
      const g = Math.floor(h / group);
      const qo = (t * a.nq + h) * D;
      const scores = new Float64Array(keys);
      let max = -Infinity;
      for (let p = 0; p < keys; p++) {
        const ko = (g * a.capacity + p) * D;
        let s = 0;
        for (let d = 0; d < D; d++) s += a.q[qo + d] * a.kCache[ko + d];
        scores[p] = s * scale;
        max = Math.max(max, scores[p]);
      }
      let sum = 0;
      for (let p = 0; p < keys; p++) sum += scores[p] = Math.exp(scores[p] - max);
      for (let d = 0; d < D; d++) {
        let o = 0;
        for (let p = 0; p < keys; p++) o += scores[p] * a.vCache[(g * a.capacity + p) * D + d];
        const gate = a.proj[t * a.projStride + h * 2 * D + D + d];
        out[qo + d] = o / sum / (1 + Math.exp(-gate));
      }
    }
  }
  return out;
}
