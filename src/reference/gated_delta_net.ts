import { conv1dCausal } from './conv1d_causal.ts';
import { l2norm } from './l2norm.ts';
import { rmsNormGated } from './rms_norm_gated.ts';

/**
 * The Gated DeltaNet core of Qwen3_5GatedDeltaNet in f64, in its two algebraically equal forms (spec §2.3):
 * `gatedDeltaNetRecurrent` (HF torch_recurrent_gated_delta_rule) and `gatedDeltaNetChunked`
 * (HF torch_chunk_gated_delta_rule, UT transform over chunks of 64). Same arguments, same results.
 * q and k in `qkv` are already l2-normed (q also scaled by Dk^-0.5); value head h reads key head h / (nv / nk).
 */
export interface GatedDeltaNetRefArgs {
  tokens: number;
  nk: number;
  nv: number;
  dk: number;
  dv: number;
  /** token t: q heads at t*qkvStride + [0, nk*dk), k at + nk*dk, v at + 2*nk*dk */
  qkv: Float32Array;
  qkvStride: number;
  /** b[t,h] = ba[t*baStride + bOffset + h], a[t,h] = ba[t*baStride + aOffset + h] */
  ba: Float32Array;
  baStride: number;
  bOffset: number;
  aOffset: number;
  aLog: Float32Array;
  dtBias: Float32Array;
  /** [nv, dk, dv] state before the first token; not modified. */
  state: ArrayLike<number>;
}

export interface GatedDeltaNetRefResult {
  /** [T, nv, dv] */
  out: Float64Array;
  /** [nv, dk, dv] state after the last token */
  state: Float64Array;
}

const softplus = (x: number) => (x > 20 ? x : Math.log1p(Math.exp(x)));

/** beta = sigmoid(b) and g = -exp(A_log) * softplus(a + dt_bias) for token t, value head h. */
export function gates(a: GatedDeltaNetRefArgs, t: number, h: number): { beta: number; g: number } {
  const b = a.ba[t * a.baStride + a.bOffset + h];
  const x = a.ba[t * a.baStride + a.aOffset + h];
  return { beta: 1 / (1 + Math.exp(-b)), g: -Math.exp(a.aLog[h]) * softplus(x + a.dtBias[h]) };
}

function vectors(a: GatedDeltaNetRefArgs, t: number, h: number) {
  const j = Math.floor(h / (a.nv / a.nk));
  const row = t * a.qkvStride;
  return {
    q: a.qkv.subarray(row + j * a.dk, row + (j + 1) * a.dk),
    k: a.qkv.subarray(row + a.nk * a.dk + j * a.dk, row + a.nk * a.dk + (j + 1) * a.dk),
    v: a.qkv.subarray(row + 2 * a.nk * a.dk + h * a.dv, row + 2 * a.nk * a.dk + (h + 1) * a.dv),
  };
}

/** Per token: S = e^g S; u = beta (v - S^T k); S += k u^T; o = S^T q (the updated state). */
export function gatedDeltaNetRecurrent(a: GatedDeltaNetRefArgs): GatedDeltaNetRefResult {
  const { tokens: T, nv, dk, dv } = a;
  const S = Float64Array.from(a.state);
  const out = new Float64Array(T * nv * dv);
  const u = new Float64Array(dv);
  for (let t = 0; t < T; t++) {
    for (let h = 0; h < nv; h++) {
      const { beta, g } = gates(a, t, h);
      const { q, k, v } = vectors(a, t, h);
      const s = S.subarray(h * dk * dv, (h + 1) * dk * dv);
      const decay = Math.exp(g);
      for (let i = 0; i < dk * dv; i++) s[i] *= decay;
      for (let c = 0; c < dv; c++) {
        let ks = 0;
        for (let d = 0; d < dk; d++) ks += s[d * dv + c] * k[d];
        u[c] = beta * (v[c] - ks);
      }
      for (let d = 0; d < dk; d++) for (let c = 0; c < dv; c++) s[d * dv + c] += k[d] * u[c];
      for (let c = 0; c < dv; c++) {
        let o = 0;
        for (let d = 0; d < dk; d++) o += s[d * dv + c] * q[d];
        out[(t * nv + h) * dv + c] = o;
      }
    }
  }
  return { out, state: S };
}

/**
 * Spec §2.3's chunked pseudo-code, per value head and chunk of C tokens (the last one zero-padded: q = k = v = 0,
 * beta = 0, g = 0):
 *   cum = cumsum(g); D[i,j] = e^(cum_i - cum_j) (j <= i); A = (kb k^T) ⊙ D; M = I + strict_lower(A)
 *   U = M^-1 vb; W = M^-1 (kb ⊙ e^cum); v_new = U - W S
 *   O = (q ⊙ e^cum) S + ((q k^T) ⊙ D) v_new;  S = e^cum_last S + (k ⊙ e^(cum_last - cum))^T v_new
 */
export function gatedDeltaNetChunked(a: GatedDeltaNetRefArgs, C = 64): GatedDeltaNetRefResult {
  const { tokens: T, nv, dk, dv } = a;
  const S = Float64Array.from(a.state);
  const out = new Float64Array(T * nv * dv);
  const q = new Float64Array(C * dk),
    k = new Float64Array(C * dk),
    v = new Float64Array(C * dv);
  const beta = new Float64Array(C),
    cum = new Float64Array(C);
  const A = new Float64Array(C * C),
    QK = new Float64Array(C * C);
  const U = new Float64Array(C * dv),
    W = new Float64Array(C * dk),
    vNew = new Float64Array(C * dv);
  for (let h = 0; h < nv; h++) {
    const s = S.subarray(h * dk * dv, (h + 1) * dk * dv);
    for (let t0 = 0; t0 < T; t0 += C) {
      let acc = 0;
      for (let i = 0; i < C; i++) {
        const t = t0 + i;
        if (t < T) {
          const gt = gates(a, t, h);
          const vec = vectors(a, t, h);
          q.set(vec.q, i * dk);
          k.set(vec.k, i * dk);
          v.set(vec.v, i * dv);
          beta[i] = gt.beta;
          acc += gt.g;
        } else {
          q.fill(0, i * dk, (i + 1) * dk);
          k.fill(0, i * dk, (i + 1) * dk);
          v.fill(0, i * dv, (i + 1) * dv);
          beta[i] = 0;
        }
        cum[i] = acc;
      }
      const D = (i: number, j: number) => Math.exp(cum[i] - cum[j]);
      for (let i = 0; i < C; i++) {
        for (let j = 0; j <= i; j++) {
          let kk = 0,
            qk = 0;
          for (let d = 0; d < dk; d++) {
            kk += k[i * dk + d] * k[j * dk + d];
            qk += q[i * dk + d] * k[j * dk + d];
          }
          A[i * C + j] = beta[i] * kk * D(i, j);
          QK[i * C + j] = qk * D(i, j);
        }
      }
      // Forward substitution with the unit lower-triangular M (A's diagonal is not used).
      for (let i = 0; i < C; i++) {
        for (let c = 0; c < dv; c++) {
          let x = v[i * dv + c] * beta[i];
          for (let j = 0; j < i; j++) x -= A[i * C + j] * U[j * dv + c];
          U[i * dv + c] = x;
        }
        for (let d = 0; d < dk; d++) {
          let x = k[i * dk + d] * beta[i] * Math.exp(cum[i]);
          for (let j = 0; j < i; j++) x -= A[i * C + j] * W[j * dk + d];
          W[i * dk + d] = x;
        }
      }
      for (let i = 0; i < C; i++) {
        for (let c = 0; c < dv; c++) {
          let ws = 0;
          for (let d = 0; d < dk; d++) ws += W[i * dk + d] * s[d * dv + c];
          vNew[i * dv + c] = U[i * dv + c] - ws;
        }
      }
      for (let i = 0; i < C && t0 + i < T; i++) {
        const e = Math.exp(cum[i]);
        for (let c = 0; c < dv; c++) {
          let o = 0;
          for (let d = 0; d < dk; d++) o += q[i * dk + d] * e * s[d * dv + c];
          for (let j = 0; j <= i; j++) o += QK[i * C + j] * vNew[j * dv + c];
          out[((t0 + i) * nv + h) * dv + c] = o;
        }
      }
      const last = cum[C - 1];
      for (let d = 0; d < dk; d++) {
        for (let c = 0; c < dv; c++) {
          let x = Math.exp(last) * s[d * dv + c];
          for (let i = 0; i < C; i++) x += k[i * dk + d] * Math.exp(last - cum[i]) * vNew[i * dv + c];
          s[d * dv + c] = x;
        }
      }
    }
  }
  return { out, state: S };
}

/**
 * One decode token of the whole DeltaNet mixer between its projections (the fused gated_delta_net_decode kernel):
 * causal conv over the ring + SiLU, l2norm of q (scaled by dk^-0.5) and k, the recurrent step, the gated RMS norm.
 * `proj` is the in-projection row: qkv at [0, conv_dim), z at zOffset, b at bOffset, a at aOffset.
 */
export function gatedDeltaNetDecode(a: {
  nk: number;
  nv: number;
  dk: number;
  dv: number;
  proj: Float32Array;
  zOffset: number;
  bOffset: number;
  aOffset: number;
  convW: Float32Array;
  wStride: number;
  kernelSize: number;
  convState: Float32Array;
  position: number;
  aLog: Float32Array;
  dtBias: Float32Array;
  state: ArrayLike<number>;
  normW: Float32Array;
  eps: number;
}): { y: Float32Array; convState: Float32Array; state: Float64Array } {
  const { nk, nv, dk, dv } = a;
  const convDim = 2 * nk * dk + nv * dv;
  const conv = conv1dCausal({
    x: a.proj,
    xStride: a.proj.length,
    w: a.convW,
    wStride: a.wStride,
    kernelSize: a.kernelSize,
    state: a.convState,
    position: a.position,
    tokens: 1,
    channels: convDim,
  });
  const qkv = l2norm(conv.y, { tokens: 1, heads: 2 * nk, dim: dk, tokenStride: convDim, scaledHeads: nk, scale: dk ** -0.5 });
  const core = gatedDeltaNetRecurrent({
    tokens: 1,
    nk,
    nv,
    dk,
    dv,
    qkv,
    qkvStride: convDim,
    ba: a.proj,
    baStride: a.proj.length,
    bOffset: a.bOffset,
    aOffset: a.aOffset,
    aLog: a.aLog,
    dtBias: a.dtBias,
    state: a.state,
  });
  const y = rmsNormGated({
    x: Float32Array.from(core.out),
    z: a.proj,
    zTokenStride: a.proj.length,
    zOffset: a.zOffset,
    w: a.normW,
    rows: nv,
    heads: nv,
    dim: dv,
    eps: a.eps,
  });
  return { y, convState: conv.state, state: core.state };
}
