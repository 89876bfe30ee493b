// gated_delta_net_chunk_scan: the sequential half of HF torch_chunk_gated_delta_rule, chunk after chunk, for one value
//   head h and DVT = 16 columns of its state S [DK, dv] (columns of S never interact, so workgroups never communicate).
//   With U, W and gate from gated_delta_net_chunk_prepare, per chunk n (t0 = n*C, C = 64, rows < C valid):
//     hs[n] = S;   v_new = U - W S   (written over U in uw);   S = e^cum_last S + (k ⊙ e^(cum_last - cum))^T v_new
//   The outputs come after, in parallel over chunks (gated_delta_net_chunk_output reads hs and v_new).
//   qkv:   [T, qkv_stride] act (q heads, then k heads, then v heads; gated_delta_net_chunk.ts); only k is read
//   uw:    [nv, tp, dv + DK] f32, row (h, t) = U | W; U is replaced by v_new
//   gate:  [nv, tp, 2] f32 (e^cum, e^(cum_last - cum)) · hs: [nv, chunks, DK, dv] f32, the state at each chunk's start
//   state: [nv, DK, dv] f32, read and updated
//   grid: nv * ceil(dv / DVT) workgroups (flat_id; id = h * tiles + tile) of 256 invocations. The state tile lives in
//   workgroup memory for the whole call. v_new: invocation (i, q) = (li / 4, li % 4) owns row i, columns 4q..4q+3, and
//   streams W through `stage` in tiles of DT columns. Update: invocation (d, half) = (li / 2, li % 2) owns row d,
//   columns 8 half..8 half+7, and streams k through `stage` in tiles of IT rows.
//   preconditions: DK <= 128 (workgroup memory: st 8 KiB + vs 4 KiB + stage 4 KiB at DK = 128); dv % 4 == 0.
const C: u32 = 64u;
const DVT: u32 = 16u;
const DT: u32 = 16u;
const IT: u32 = 8u;
var<workgroup> st: array<vec4<f32>, DK * 4u>;   // S[d][4q..4q+3]
var<workgroup> vs: array<vec4<f32>, C * 4u>;    // e^(cum_last - cum_i) v_new[i][4q..4q+3]
var<workgroup> stage: array<f32, 1024u>;   // swizzled tiles: swz and stage_tile (helpers)

// Element e < C*DT of the W tile at column d0: row e / DT, column d0 + e % DT.
fn w_elem(srow: u32, width: u32, d0: u32, e: u32) -> f32 {
  let d = d0 + e % DT;
  if (d >= DK) { return 0.0; }
  return uw[(srow + e / DT) * width + params.dv + d];
}

// Element e < IT*DK of the k tile at chunk row i0 (zero past the valid rows).
fn k_elem(t0: u32, rows: u32, koff: u32, i0: u32, e: u32) -> f32 {
  let r = i0 + e / DK;
  if (e >= IT * DK || r >= rows) { return 0.0; }
  return f32(qkv[(t0 + r) * params.qkv_stride + koff + e % DK]);
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
  let tiles = (params.dv + DVT - 1u) / DVT;
  let id = flat_id(wg, nwg);
  if (id >= params.nv * tiles) { return; }
  let h = id / tiles;
  let col0 = (id % tiles) * DVT;
  let j = h / params.ratio;
  let width = params.dv + DK;
  let koff = params.nk * DK + j * DK;
  let sbase = h * DK * params.dv;

  for (var e = li; e < DK * 4u; e += 256u) {
    let c = col0 + 4u * (e % 4u);
    var v = vec4<f32>(0.0);
    if (c < params.dv) {
      let at = sbase + (e / 4u) * params.dv + c;
      v = vec4<f32>(state[at], state[at + 1u], state[at + 2u], state[at + 3u]);
    }
    st[e] = v;
  }
  workgroupBarrier();

  let i = li / 4u;
  let q = li % 4u;
  let c4 = col0 + 4u * q;
  let dd = li / 2u;
  let half = li % 2u;
  for (var n = 0u; n < params.chunks; n++) {
    let t0 = n * C;
    let rows = min(C, params.tokens - t0);
    let srow = h * params.tp + t0;

    for (var e = li; e < DK * 4u; e += 256u) {
      let c = col0 + 4u * (e % 4u);
      if (c < params.dv) {
        let at = ((h * params.chunks + n) * DK + e / 4u) * params.dv + c;
        let v = st[e];
        hs[at] = v.x; hs[at + 1u] = v.y; hs[at + 2u] = v.z; hs[at + 3u] = v.w;
      }
    }

    // v_new = U - W S. Each invocation stages 4 elements of a tile; the next tile's are loaded during this one's math.
    var acc = vec4<f32>(0.0);
    var pf = vec4<f32>(0.0);
    for (var m = 0u; m < 4u; m++) { pf[m] = w_elem(srow, width, 0u, li + 256u * m); }
    for (var d0 = 0u; d0 < DK; d0 += DT) {
      stage_tile(pf, li);
      workgroupBarrier();
      if (d0 + DT < DK) {
        for (var m = 0u; m < 4u; m++) { pf[m] = w_elem(srow, width, d0 + DT, li + 256u * m); }
      }
      for (var d = 0u; d < DT; d++) {
        acc += stage[swz(i, d)] * st[min(d0 + d, DK - 1u) * 4u + q];
      }
      workgroupBarrier();
    }
    var vn = vec4<f32>(0.0);
    if (i < rows && c4 < params.dv) {
      let at = (srow + i) * width + c4;
      vn = vec4<f32>(uw[at], uw[at + 1u], uw[at + 2u], uw[at + 3u]) - acc;
      uw[at] = vn.x; uw[at + 1u] = vn.y; uw[at + 2u] = vn.z; uw[at + 3u] = vn.w;
    }
    vs[i * 4u + q] = vn * gate[(srow + i) * 2u + 1u];
    // Also: every read of st above happens before the update below.
    workgroupBarrier();

    // S = e^cum_last S + Σ_i k_i (e^(cum_last - cum_i) v_new_i)
    let ecl = gate[(srow + C - 1u) * 2u];
    var s0 = vec4<f32>(0.0);
    var s1 = vec4<f32>(0.0);
    if (dd < DK) {
      s0 = ecl * st[dd * 4u + 2u * half];
      s1 = ecl * st[dd * 4u + 2u * half + 1u];
    }
    for (var m = 0u; m < 4u; m++) { pf[m] = k_elem(t0, rows, koff, 0u, li + 256u * m); }
    for (var i0 = 0u; i0 < rows; i0 += IT) {
      for (var m = 0u; m < 4u; m++) {
        let e = li + 256u * m;
        if (e < IT * DK) { stage[e] = pf[m]; }
      }
      workgroupBarrier();
      if (i0 + IT < rows) {
        for (var m = 0u; m < 4u; m++) { pf[m] = k_elem(t0, rows, koff, i0 + IT, li + 256u * m); }
      }
      if (dd < DK) {
        for (var r = 0u; r < IT; r++) {
          let kv = stage[r * DK + dd];
          s0 += kv * vs[(i0 + r) * 4u + 2u * half];
          s1 += kv * vs[(i0 + r) * 4u + 2u * half + 1u];
        }
      }
      workgroupBarrier();
    }
    if (dd < DK) {
      st[dd * 4u + 2u * half] = s0;
      st[dd * 4u + 2u * half + 1u] = s1;
    }
    workgroupBarrier();
  }

  for (var e = li; e < DK * 4u; e += 256u) {
    let c = col0 + 4u * (e % 4u);
    if (c < params.dv) {
      let at = sbase + (e / 4u) * params.dv + c;
      let v = st[e];
      state[at] = v.x; state[at + 1u] = v.y; state[at + 2u] = v.z; state[at + 3u] = v.w;
    }
  }
}
