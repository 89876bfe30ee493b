// matvec: y = W x for ONE token (decode), bandwidth-bound; dense layers, lm_head and MoE experts.
//   nn.Linear (F.linear(x, W)) on one row. Epilogues: 'store' y = acc; 'add' y += acc (the residual add
//   of an output projection); 'swiglu' y = silu(W_gate x) * (W_up x) (Qwen3_5MLP: act_fn(gate_proj(x)) *
//   up_proj(x); Qwen3_5MoeExperts: gate_up_proj[e] = [gate; up], gate rows first). The optional scale
//   multiplies the result before store/add (MoE routing weight); in 'sum' it weights each pick's term.
//   w (one part of a GpuTensor; element (item - first) * itemStride + row * rowStride + col, read a UNIT at a
//     time: 8 elements (f32, f16) or one q4 group of 32 (its scale read once); strides are passed in UNITs):
//     dense [N, K] (item = output row) · dense swiglu [I, 2, K] (item r: row 0 gate, row 1 up)
//     experts [E, N, K] or swiglu [E, 2I, K] (item = slot; output row r reads row r, up row r + I)
//   x: act [K] at x_off; experts 'sum': [topk][K], pick p at x_off + p * x_stride (staged as f32)
//   y: act or f32 (the variant's; logits are f32) [N] at y_off + y_row0 (y_row0: a dense part's first row); experts 'each': [topk][N], pick j at
//      y_off + j * y_stride
//   ids: u32 [topk] at ids_off (chosen expert ids) · slots: u32 [E] expert id -> slot · scales: f32 at scale_idx
//   grid: flat_id = j * row_groups + g (j: the pick for 'each', else 0). Workgroup g owns rows g*ROWS ..+ROWS;
//     each row is shared by TPR = WG / ROWS consecutive invocations that stride over its UNITs (coalesced
//     16- or 32-byte loads), then row_sum (a tree over the row's TPR lanes). x is staged through workgroup
//     memory in tiles of 4 * XT4 elements (every row of the workgroup reuses it). 'sum' runs over the picks as
//     one dot product of length topk * KU units (KU = K rounded up to a UNIT), so the loads of different picks
//     overlap instead of waiting on one another.
//   preconditions (matvec.ts): WG, ROWS powers of two, ROWS <= WG; XT4 a multiple of UNIT / 4; 'sum': topk <=
//     MAX_PICKS; rowStride, itemStride multiples of UNIT; x and y distinct; a pick whose slot is outside this
//     part contributes nothing here (another part's dispatch serves it).
override WG: u32 = 256u;
override ROWS: u32 = 8u;
override TPR: u32 = WG / ROWS;
override XT4: u32 = 256u;
const MAX_PICKS = 32u;
const NONE = 0xffffffffu;

var<workgroup> xs: array<vec4<f32>, XT4>;
// 'sum': each pick's item offset in this part (in UNITs; NONE if elsewhere) and its scale.
var<workgroup> pick_base: array<u32, MAX_PICKS>;
var<workgroup> pick_scale: array<f32, MAX_PICKS>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
  let id = flat_id(wg, nwg);
  let g = id % params.row_groups;
  let j = id / params.row_groups;
  // Returns before a barrier only on workgroup-uniform values: params, workgroup ids, and read-only
  // storage (ids, slots) indexed by them.
  if (j >= params.jobs) { return; }
  let lane = li % TPR;
  let r = g * ROWS + li / TPR;
  let live = r < params.rows;
  let ku = (params.k + UNIT - 1u) / UNIT;
  let u4 = UNIT / 4u;
  var rowu = 0u; // UNIT offset of row r (of pick j) in this part
  if (SUM) {
    // All slot lookups at once, rather than a chain of dependent loads per pick.
    if (li < params.topk) {
      let item = pick_item(li);
      pick_base[li] = select(NONE, item * params.item_stride_u, item < params.items);
      pick_scale[li] = term_scale(li);
    }
    rowu = r * params.row_stride_u;
  } else if (DENSE) {
    rowu = r * params.item_stride_u;
  } else {
    let item = pick_item(j);
    if (item >= params.items) { return; }
    rowu = item * params.item_stride_u + r * params.row_stride_u;
  }
  // x as one virtual vector of npicks * ku units: pick p's K values, zero up to the next multiple of UNIT.
  // Zeroing matters: x past K is live data of other tensors, and 0-padded weights times NaN is NaN.
  let len = select(1u, params.topk, SUM) * ku;
  var acc = vec2<f32>(0.0);
  for (var t = 0u; t < len; t += XT4 / u4) {
    let n4 = min(XT4, u4 * (len - t));
    workgroupBarrier();
    for (var v = li; v < n4; v += WG) {
      let e = 4u * (u4 * t + v);       // virtual element index
      let p = select(0u, e / (UNIT * ku), SUM);
      let k = e - p * UNIT * ku;
      let i = params.x_off + p * params.x_stride + k;
      xs[v] = vec4<f32>(select(0.0, f32(x[i]), k < params.k), select(0.0, f32(x[i + 1u]), k + 1u < params.k),
                        select(0.0, f32(x[i + 2u]), k + 2u < params.k), select(0.0, f32(x[i + 3u]), k + 3u < params.k));
    }
    workgroupBarrier();
    if (live) {
      for (var c = lane; c < n4 / u4; c += TPR) {
        let xv = x_unit(c);
        let q = t + c;
        if (SUM) {
          let p = q / ku;
          let base = pick_base[p];
          if (base != NONE) { acc.x += pick_scale[p] * w_dot(base + rowu + q - p * ku, xv); }
        } else {
          acc.x += w_dot(rowu + q, xv);
          if (SWIGLU) { acc.y += w_dot(rowu + params.up_u + q, xv); }
        }
      }
    }
  }
  let a = row_sum(acc, li);
  if (lane == 0u && live) {
    var v = a.x;
    if (SWIGLU) { v = silu(a.x) * a.y; }
    emit(params.y_off + j * params.y_stride + params.y_row0 + r, v * out_scale(j));
  }
}
