// gated_delta_net_decode: one decode token of Qwen3_5GatedDeltaNet from the in-projection to the gated norm, in one
//   dispatch (what conv1d_causal, l2norm, gated_delta_net_chunk and rms_norm_gated do for T tokens):
//     raw = proj[0 .. conv_dim)                       the qkv columns of the fused in-projection
//     qkv = silu(causal conv of raw over the ring)    conv1d_causal with T = 1; the ring gets raw at slot pos % K
//     q = l2norm(q) * DK^-0.5,  k = l2norm(k)         HF l2norm (eps 1e-6 inside the sqrt)
//     beta = sigmoid(b);  g = -exp(A_log) * softplus(a + dt_bias)
//     S = e^g S;  u = beta (v - S^T k);  S += k u^T;  o = S^T q             (HF torch_recurrent_gated_delta_rule, T = 1)
//     y = o * rsqrt(mean(o²) + eps) * norm_w * silu(z)                       (Qwen3_5RMSNormGated)
//   Each of `rows` rows is a sequence of its own (continuous batching): its token at positions[row], its projection,
//   ring, state and output at row strides; a row at SKIPPED_ROW computes nothing and writes nothing; its state is
//   updated in place (state_out 0, seq_rows 1). Otherwise (rows = 1, state_out 1) the dispatch runs seq_rows
//   consecutive rows of one sequence in order (a verification of drafted tokens): each workgroup keeps its state
//   columns in registers from row to row and writes the state after row t to slot state_out + t; row t's conv reads
//   the raw inputs of the rows before it from proj rather than the ring. Only row 0 writes its ring slot (pos % K,
//   which no row reads); row t >= 1 leaves its raw inputs in pending slot K + t - 1 of the ring buffer, moved into the
//   ring when the row is kept (Session.keepVerified): a ring slot written for row t would be one that another
//   workgroup's row 0 still reads.
//   proj: [rows, proj_stride] act: qkv at [0, conv_dim), z of value head h at z_off + h*DV, b at b_off + h, a at a_off + h
//   conv_w: [conv_dim, w_stride] f32 · conv_state: [rows, K, conv_dim] act rings (conv1d_causal.wgsl), then for
//   one sequence's rows the seq_rows - 1 pending slots · decay_params: [2, nv] f32 (A_log, then dt_bias) · state: [slots, nv, DK, DV] f32,
//   read from slot row and written as above · norm_w: [DV] f32
//   y: [rows, y_stride] act (head h at h*DV) · positions: [rows] u32 (one sequence's rows: [seq_rows], consecutive)
//   grid: rows * nv workgroups (flat_id, head innermost), one per value head h (key head j = h / ratio), of WG = DV * KSPLIT invocations;
//   invocation (col = li % DV, ks = li / DV) keeps rows d = ks + KSPLIT*r (r < RPT) of state column col in
//   registers. Every workgroup of key head j computes j's q and k itself (the same values); only the first
//   (h % ratio == 0) writes their raw inputs to the ring, and each workgroup writes its own head's v channels.
//   Every read of the ring is of slots other than pos % K, so no workgroup reads what another writes.
//   preconditions: nv % nk == 0; DK <= 256; DV * KSPLIT = WG <= 256; 2 <= K <= 8; all buffers distinct.
const RPT: u32 = (DK + KSPLIT - 1u) / KSPLIT;
var<workgroup> qk: array<f32, 2u * DK>;     // q then k of key head j, conv'd, then l2-normed
var<workgroup> vv: array<f32, DV>;          // v of head h, conv'd
var<workgroup> red: array<vec3<f32>, WG>;  // each invocation's part of S^T k, S^T q, k·q
// The current row's place in its sequence (0: the first row), token position and the bases of its projection and ring.
var<private> seq_t: u32;
var<private> pos: u32;
var<private> proj0: u32;
var<private> ring0: u32;

// Causal conv + SiLU of channel c for the current token (raw = its input now); also returns raw for the ring.
fn conv_channel(c: u32) -> vec2<f32> {
  let raw = f32(proj[proj0 + c]);
  var acc = conv_w[c * params.w_stride + params.k - 1u] * raw;
  for (var j = 0u; j + 1u < params.k; j++) {
    // Tap j reads position pos - back: a row of this dispatch's sequence when back <= seq_t, else the ring.
    let back = params.k - 1u - j;
    var v: f32;
    if (back <= seq_t) {
      v = f32(proj[proj0 - back * params.proj_stride + c]);
    } else {
      v = f32(conv_state[ring0 + ((pos + j + 1u) % params.k) * params.conv_dim + c]);
    }
    acc += conv_w[c * params.w_stride + j] * v;
  }
  return vec2<f32>(silu(acc), raw);
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        lanes: Lanes) {
  let li = lanes.li;
  let id = flat_id(wg, nwg);
  if (id >= params.nv * params.rows) { return; }  // workgroup-uniform
  let h = id % params.nv;
  let local = id / params.nv;
  if (positions[local] == SKIPPED_ROW) { return; }  // workgroup-uniform (a private variable would not count as such)
  ring0 = local * params.k * params.conv_dim;
  let j = h / params.ratio;
  let col = li % DV;
  let ks = li / DV;
  let owner = h % params.ratio == 0u;
  let a_h = exp(decay_params[h]);
  let state0 = (local * params.nv + h) * DK * DV + col;
  var s: array<f32, RPT>;
  for (var r = 0u; r < RPT; r++) {
    let d = ks + KSPLIT * r;
    if (d < DK) { s[r] = state[state0 + d * DV]; }
  }

  for (var row_t = 0u; row_t < params.seq_rows; row_t++) {
    // The row before is done with qk, vv and red (its last workgroup_sum3 ends with a barrier; this one says so).
    workgroupBarrier();
    seq_t = row_t;
    let row = local + row_t;
    pos = positions[row];
    proj0 = row * params.proj_stride;
    let slot_now = ring0 + select(params.k + row_t - 1u, pos % params.k, row_t == 0u) * params.conv_dim;

    // q and k channels of key head j, then v of head h.
    var ss = vec3<f32>(0.0);
    for (var i = li; i < 2u * DK; i += WG) {
      let c = select(params.nk * DK + j * DK + i - DK, j * DK + i, i < DK);
      let r = conv_channel(c);
      qk[i] = r.x;
      if (i < DK) { ss.x += r.x * r.x; } else { ss.y += r.x * r.x; }
      if (owner) { conv_state[slot_now + c] = act(r.y); }
    }
    if (ks == 0u) {
      let c = 2u * params.nk * DK + h * DV + col;
      let r = conv_channel(c);
      vv[col] = r.x;
      conv_state[slot_now + c] = act(r.y);
    }
    let norms = workgroup_sum3(ss, lanes);  // its barriers also publish qk and vv
    let fq = inverseSqrt(norms.x + 1e-6) * inverseSqrt(f32(DK));
    let fk = inverseSqrt(norms.y + 1e-6);

    let beta = sigmoid(f32(proj[proj0 + params.b_off + h]));
    let decay = exp(-a_h * softplus(f32(proj[proj0 + params.a_off + h]) + decay_params[params.nv + h]));
    var p = vec3<f32>(0.0);
    for (var r = 0u; r < RPT; r++) {
      let d = ks + KSPLIT * r;
      if (d < DK) {
        let kd = qk[DK + d] * fk;
        let qd = qk[d] * fq;
        p += vec3<f32>(s[r] * kd, s[r] * qd, kd * qd);
      }
    }
    red[li] = p;
    workgroupBarrier();
    var tot = vec3<f32>(0.0);
    for (var m = 0u; m < KSPLIT; m++) { tot += red[col + DV * m]; }
    workgroupBarrier();
    let u = beta * (vv[col] - decay * tot.x);
    let sout = ((local + params.state_out + row_t) * params.nv + h) * DK * DV + col;
    for (var r = 0u; r < RPT; r++) {
      let d = ks + KSPLIT * r;
      if (d < DK) {
        s[r] = decay * s[r] + qk[DK + d] * fk * u;
        state[sout + d * DV] = s[r];
      }
    }

    let o = decay * tot.y + u * tot.z;
    let sq = workgroup_sum3(vec3<f32>(select(0.0, o * o, ks == 0u), 0.0, 0.0), lanes).x;
    if (ks == 0u) {
      let inv = inverseSqrt(sq / f32(DV) + params.eps);
      y[row * params.y_stride + h * DV + col] = act(o * inv * norm_w[col] * silu(f32(proj[proj0 + params.z_off + h * DV + col])));
    }
  }
}
