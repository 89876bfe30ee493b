// gated_delta_net_chunk_output: the outputs of HF torch_chunk_gated_delta_rule, in parallel over chunks, value heads
//   and DVT = 16 value columns, from the state at each chunk's start (hs) and v_new of gated_delta_net_chunk_scan:
//     O[i] = e^cum_i (q_i · S) + Σ_{l <= i} attn[i,l] v_new[l]          (attn is zero above the diagonal)
//   i.e. one product [q ⊙ e^cum | attn] [S; v_new] with a reduction over DK + C.
//   qkv: [T, qkv_stride] act (only q is read) · uw: [nv, tp, dv + DK] f32 (v_new | W) · attn: [nv, tp, C] ·
//   gate: [nv, tp, 2] · hs: [nv, chunks, DK, dv] (all f32) · out: [T, nv, dv] act
//   grid: chunks * nv * ceil(dv / DVT) workgroups (flat_id; id = (n * nv + h) * tiles + tile) of 256 invocations;
//   invocation (i, q) = (li / 4, li % 4) owns row i, columns 4q..4q+3; [S; v_new] sits in workgroup memory (`sv`) and
//   [q | attn] streams through `stage` in tiles of DT columns.
//   preconditions: DK <= 128 (sv 12 KiB + stage 4 KiB at DK = 128); dv % 4 == 0.
const C: u32 = 64u;
const DVT: u32 = 16u;
const DT: u32 = 16u;
var<workgroup> sv: array<vec4<f32>, (DK + C) * 4u>;   // rows [0, DK): S; rows [DK, DK + C): v_new
var<workgroup> stage: array<f32, C * DT>;   // swizzled tiles: swz and stage_tile (helpers)

// Element e < C*DT of the q tile at column d0 (zero past the valid rows).
fn q_elem(t0: u32, rows: u32, qoff: u32, d0: u32, e: u32) -> f32 {
  let r = e / DT;
  let d = d0 + e % DT;
  if (r >= rows || d >= DK) { return 0.0; }
  return f32(qkv[(t0 + r) * params.qkv_stride + qoff + d]);
}

// Element e < C*DT of the attn tile at column l0.
fn a_elem(srow: u32, l0: u32, e: u32) -> f32 { return attn[(srow + e / DT) * C + l0 + e % DT]; }

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
  let tiles = (params.dv + DVT - 1u) / DVT;
  let id = flat_id(wg, nwg);
  if (id >= params.chunks * params.nv * tiles) { return; }
  let col0 = (id % tiles) * DVT;
  let h = (id / tiles) % params.nv;
  let n = id / (tiles * params.nv);
  let t0 = n * C;
  let rows = min(C, params.tokens - t0);
  let srow = h * params.tp + t0;
  let width = params.dv + DK;
  let qoff = (h / params.ratio) * DK;

  for (var e = li; e < (DK + C) * 4u; e += 256u) {
    let r = e / 4u;
    let c = col0 + 4u * (e % 4u);
    var v = vec4<f32>(0.0);
    if (c < params.dv) {
      var at: u32;
      if (r < DK) { at = ((h * params.chunks + n) * DK + r) * params.dv + c; v = vec4<f32>(hs[at], hs[at + 1u], hs[at + 2u], hs[at + 3u]); }
      else { at = (srow + r - DK) * width + c; v = vec4<f32>(uw[at], uw[at + 1u], uw[at + 2u], uw[at + 3u]); }
    }
    sv[e] = v;
  }

  let i = li / 4u;
  let q = li % 4u;
  // Each invocation stages 4 elements of a tile; the next tile's are loaded during this one's math.
  var acc = vec4<f32>(0.0);
  var pf = vec4<f32>(0.0);
  for (var m = 0u; m < 4u; m++) { pf[m] = q_elem(t0, rows, qoff, 0u, li + 256u * m); }
  for (var d0 = 0u; d0 < DK; d0 += DT) {
    // Also orders the loads of sv above (first tile) and the previous tile's reads of stage.
    workgroupBarrier();
    stage_tile(pf, li);
    workgroupBarrier();
    for (var m = 0u; m < 4u; m++) {
      if (d0 + DT < DK) { pf[m] = q_elem(t0, rows, qoff, d0 + DT, li + 256u * m); } else { pf[m] = a_elem(srow, 0u, li + 256u * m); }
    }
    for (var d = 0u; d < DT; d++) { acc += stage[swz(i, d)] * sv[min(d0 + d, DK - 1u) * 4u + q]; }
  }
  acc *= gate[(srow + i) * 2u];
  for (var l0 = 0u; l0 < C; l0 += DT) {
    workgroupBarrier();
    stage_tile(pf, li);
    workgroupBarrier();
    if (l0 + DT < C) {
      for (var m = 0u; m < 4u; m++) { pf[m] = a_elem(srow, l0 + DT, li + 256u * m); }
    }
    for (var l = 0u; l < DT; l++) { acc += stage[swz(i, l)] * sv[(DK + l0 + l) * 4u + q]; }
  }

  let c4 = col0 + 4u * q;
  if (i < rows && c4 < params.dv) {
    let at = ((t0 + i) * params.nv + h) * params.dv + c4;
    out[at] = act(acc.x); out[at + 1u] = act(acc.y); out[at + 2u] = act(acc.z); out[at + 3u] = act(acc.w);
  }
}
