// gated_delta_net_chunk_prepare: the state-independent half of HF torch_chunk_gated_delta_rule (UT transform), for one
//   chunk of C = 64 tokens and one value head h (key head j = h / ratio); the last chunk is zero-padded (q = k = v = 0,
//   beta = 0, g = 0). With beta = sigmoid(b), g = -exp(A_log) softplus(a + dt_bias), cum = cumsum(g) over the chunk,
//   D[i,l] = e^(cum_i - cum_l) for l <= i:
//     A = (kb k^T) ⊙ D with kb = beta k;  M = I + strict_lower(A)
//     U = M^-1 (beta v)  [C, dv];  W = M^-1 (kb ⊙ e^cum)  [C, dk];  attn = (q k^T) ⊙ D, lower triangle incl. diagonal
//   Every exponent is a sum of g's of one sign (never a difference of prefix sums), so strong decays keep f32 precision.
//   qkv: [T, qkv_stride] act (q heads, then k heads, then v heads; gated_delta_net_chunk.ts) · ba: [T, ba_stride] act · decay_params: [2, nv] f32 (A_log, then dt_bias)
//   uw:   [nv, tp, dv + dk] f32, row (h, t) = U row | W row  (tp = chunks * C)
//   attn: [nv, tp, C] f32, row (h, t) = attn[i, 0..C) of t = chunk*C + i (zero above the diagonal)
//   gate: [nv, tp, 2] f32, (e^cum_i, e^(cum_last - cum_i))
//   grid: chunks * nv workgroups (flat_id; id = chunk * nv + h) of 256 invocations: gram matrices in 4×4 blocks over
//   dk tiles of KT, then the forward substitution with one column of [beta v | kb ⊙ e^cum] per invocation, over the
//   chunk's valid rows only. Its loops are bounded by the row count, not a constant: unrolled in registers (an earlier
//   form), LLVM-based adapters (lavapipe) took minutes to compile this kernel, and the solve is a small share of prefill.
//   preconditions: nv % nk == 0, ratio = nv / nk; chunks = ceil(tokens / C); scratch buffers hold nv * tp rows.
const C: u32 = 64u;
const KT: u32 = 8u;
var<workgroup> tile: array<vec4<f32>, 2u * KT * C / 4u>;   // [k | q][d][rows 4b..4b+3] of the current dk tile
var<workgroup> amat: array<f32, C * (C - 1u) / 2u>;    // strict lower A, packed
var<workgroup> gsh: array<f32, C>;
var<workgroup> bsh: array<f32, C>;
var<workgroup> ecum: array<f32, C>;                    // e^cum_i

fn tri(i: u32, l: u32) -> u32 { return i * (i - 1u) / 2u + l; }

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
  let id = flat_id(wg, nwg);
  if (id >= params.chunks * params.nv) { return; }
  let h = id % params.nv;
  let t0 = (id / params.nv) * C;
  let rows = min(C, params.tokens - t0);
  let j = h / params.ratio;
  let qoff = j * params.dk;
  let koff = params.nk * params.dk + j * params.dk;
  let voff = 2u * params.nk * params.dk + h * params.dv;
  let srow = h * params.tp + t0;
  let width = params.dv + params.dk;

  if (li < C) {
    var g = 0.0;
    var beta = 0.0;
    if (li < rows) {
      let gb = (t0 + li) * params.ba_stride;
      beta = sigmoid(f32(ba[gb + params.b_off + h]));
      g = -exp(decay_params[h]) * softplus(f32(ba[gb + params.a_off + h]) + decay_params[params.nv + h]);
    }
    gsh[li] = g;
    bsh[li] = beta;
  }
  workgroupBarrier();
  if (li < C) {
    // Prefix and suffix sums of same-sign terms: accurate without compensation.
    var pre = 0.0;
    for (var m = 0u; m <= li; m++) { pre += gsh[m]; }
    var suf = 0.0;
    for (var m = li + 1u; m < C; m++) { suf += gsh[m]; }
    ecum[li] = exp(pre);
    gate[(srow + li) * 2u] = ecum[li];
    gate[(srow + li) * 2u + 1u] = exp(suf);
  }

  // Gram matrices k k^T and q k^T: invocation (bi, bj) owns rows 4bi.. and columns 4bj.. (blocks above the diagonal idle).
  let bi = li / 16u;
  let bj = li % 16u;
  var kk: array<vec4<f32>, 4>;
  var qk: array<vec4<f32>, 4>;
  for (var d0 = 0u; d0 < params.dk; d0 += KT) {
    for (var e = li; e < 2u * KT * C; e += 256u) {
      let m = e / (KT * C);
      let r = (e % (KT * C)) / KT;
      let d = e % KT;
      var v = 0.0;
      if (r < rows && d0 + d < params.dk) { v = f32(qkv[(t0 + r) * params.qkv_stride + select(koff, qoff, m == 1u) + d0 + d]); }
      tile[(m * KT + d) * (C / 4u) + r / 4u][r % 4u] = v;
    }
    workgroupBarrier();
    if (bj <= bi) {
      for (var d = 0u; d < KT; d++) {
        let ki = tile[d * (C / 4u) + bi];
        let kj = tile[d * (C / 4u) + bj];
        let qi = tile[(KT + d) * (C / 4u) + bi];
        for (var r = 0u; r < 4u; r++) {
          kk[r] += ki[r] * kj;
          qk[r] += qi[r] * kj;
        }
      }
    }
    workgroupBarrier();
  }
  // D[i,l] = exp(Σ_{l < m <= i} g_m), the exponent summed from block-local pieces of same-sign terms: a difference of
  // two prefix sums would lose f32 precision once the decay has run to large negative values.
  var mid = 0.0;
  for (var m = 4u * bj + 4u; m <= 4u * bi; m++) { mid += gsh[m]; }
  var rin = 0.0;
  for (var r = 0u; r < 4u; r++) {
    let i = 4u * bi + r;
    if (r > 0u) { rin += gsh[i]; }
    for (var s = 0u; s < 4u; s++) {
      let l = 4u * bj + s;
      var o = 0.0;
      if (l <= i) {
        var seg = 0.0;
        for (var m = l + 1u; m <= min(i, 4u * bj + 3u); m++) { seg += gsh[m]; }
        if (bj < bi) { seg += mid + rin; }
        let decay = exp(seg);
        o = qk[r][s] * decay;
        if (l < i) { amat[tri(i, l)] = bsh[i] * kk[r][s] * decay; }
      }
      attn[(srow + i) * C + l] = o;
    }
  }
  workgroupBarrier();

  // Forward substitution (I + A) X' = X, one column of X = [beta v | kb ⊙ e^cum] per invocation.
  for (var col = li; col < width; col += 256u) {
    var x: array<f32, C>;
    for (var i = 0u; i < rows; i++) {
      let base = (t0 + i) * params.qkv_stride;
      var v = 0.0;
      if (col < params.dv) {
        v = f32(qkv[base + voff + col]) * bsh[i];
      } else {
        v = f32(qkv[base + koff + col - params.dv]) * bsh[i] * ecum[i];
      }
      for (var l = 0u; l < i; l++) { v -= amat[tri(i, l)] * x[l]; }
      x[i] = v;
      uw[(srow + i) * width + col] = v;
    }
    for (var i = rows; i < C; i++) { uw[(srow + i) * width + col] = 0.0; }
  }
}
