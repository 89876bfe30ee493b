// matvec: y = W x for ONE token (decode), bandwidth-bound; dense layers, lm_head and MoE experts.
//   nn.Linear (F.linear(x, W)) on one row. Epilogues: 'store' y = acc; 'add' y += acc (the residual add
//   of an output projection); 'swiglu' y = silu(W_gate x) * (W_up x) (Qwen3_5MLP: act_fn(gate_proj(x)) *
//   up_proj(x); Qwen3_5MoeExperts: gate_up_proj[e] = [gate; up], gate rows first). The optional scale
//   multiplies the result before store/add (MoE routing weight); in 'sum' it weights each pick's term. NORM: x is
//   RMS-normed first (Qwen3_5RMSNorm, norm_w [K] f32 zero-centred): W (x * (1 + norm_w)) is accumulated as for any x, and
//   rsqrt(mean(x²) + eps) multiplies each row's sum at the end, from the squares of the x each set holds anyway.
//   w (one part of a GpuTensor; element (item - first) * itemStride + row * rowStride + col, read a UNIT at a
//     time: 8 elements (f32, f16) or one q4 group of 32 (its scale read once); strides are passed in UNITs):
//     dense [N, K] (item = output row) · dense swiglu [I, 2, K] (item r: row 0 gate, row 1 up)
//     experts [E, N, K] or swiglu [E, 2I, K] (item = slot; output row r reads row r, up row r + I)
//   x: act [K] at x_off; experts 'sum': [topk][K], pick p at x_off + p * x_stride; dense over tokens: token j at
//      x_off + j * x_stride (x_stride is 0 for one token and for 'each')
//   y: act or f32 (the variant's; logits are f32) [N] at y_off + y_row0 (y_row0: a dense part's first row); experts 'each': [topk][N], pick j at
//      y_off + j * y_stride; dense over tokens likewise token j
//   ids: u32 [topk] at ids_off (chosen expert ids) · slots: u32 [E] expert id -> slot · scales: f32, job j's at
//      scale_idx + j * scale_stride
//   grid: flat_id = g * jobs + j (j: the pick for 'each', the token for dense, else 0; a row group's jobs run side by
//     side, so its weights are still in cache for the next token). The WG invocations form WG / TPR sets
//     of TPR lanes; set s of workgroup g owns rows (g * WG / TPR + s) * rps ..+rps. The TPR lanes of a set
//     share each row, every lane on its own columns: lane l holds units t + c * TPR + l (c < XU) of x in
//     registers (hold / held_dot: XU HeldUnits, unrolled by matvec.ts) and walks the set's rows with them (RU rows
//     at a time, so that their weight loads are in flight together: walk_rows, also unrolled), so x
//     is read once per set per K tile of TPR * XU units instead of once per row (on GPUs x from shared memory per
//     row costs more than the weights; on CPU adapters it is a gather per element). STAGE (CPU adapters): each
//     tile of x is first staged in workgroup memory as vec4s, so that a lane picks up a unit in 2 or 8 vector
//     loads rather than 8 or 32 bounds-checked scalar ones (lavapipe compiles those slowly: seconds a pipeline). Each lane's per-row partial sum goes to `part`; after one
//     barrier each row's TPR partials are summed in lane order. SUBGROUPS (one set per workgroup, WG == TPR):
//     each row's partials are summed across every subgroup in registers (subgroup_sum2) and its first lane keeps
//     that sum in the subgroup's slot of the row; after the barrier a row's slots (one per subgroup) are summed.
//     'sum' runs over the picks as one dot product of length topk * KU units (KU = K rounded up to a UNIT).
//   preconditions (matvec.ts): TPR a power of two dividing WG; PART >= WG / TPR * rps * ROW_SLOTS; 'sum':
//     topk <= MAX_PICKS; rowStride, itemStride multiples of UNIT; x and y distinct; a pick whose slot is
//     outside this part contributes nothing here (another part's dispatch serves it).
override WG: u32 = 8u;
override TPR: u32 = 8u;
override PART: u32 = 72u;
// STAGE: vec4s of one K tile (TPR * XU * UNIT / 4); else 1.
override XT4: u32 = 1u;
const MAX_PICKS = 32u;
const NONE = 0xffffffffu;

var<workgroup> part: array<vec2<f32>, PART>;
// SUBGROUPS: whether this lane stores its subgroup's sums.
var<private> subgroup_leader: bool;
var<workgroup> xs: array<vec4<f32>, XT4>;
// NORM: each lane's Σ x² over the x it loaded.
var<workgroup> lane_sq: array<f32, WG>;
// 'sum': each pick's item offset in this part (in UNITs; NONE if elsewhere) and its scale.
var<workgroup> pick_base: array<u32, MAX_PICKS>;
var<workgroup> pick_scale: array<f32, MAX_PICKS>;

// One unit of x that a lane holds: its values (times 1 + the norm weights with NORM), its UNIT offset within a
// row's units (SUM: plus its pick's item; NONE past the end), its weight in the sum, and Σ x² of its raw values
// (NORM without STAGE; staging sums the squares itself).
struct HeldUnit { x: XUnit, at: u32, term: f32, sq: f32 }

// Virtual unit q of x (q < len; 'sum': pick q / ku's unit q % ku), in the tile that starts at unit t.
fn hold_unit(q: u32, t: u32, ku: u32, len: u32, j: u32) -> HeldUnit {
  let p = select(0u, min(q / ku, params.topk - 1u), SUM);
  let u = q - p * ku;
  var x: XUnit;
  var sq = 0.0;
  if (STAGE) {
    x = x_staged((q - t) * (UNIT / 4u));
  } else {
    x = x_unit(params.x_off + (j + p) * params.x_stride, u);
    if (NORM) {
      sq = unit_sq(x);
      x = norm_unit(u, x);
    }
  }
  if (SUM) {
    return HeldUnit(x, select(NONE, pick_base[p] + u, q < len && pick_base[p] != NONE), pick_scale[p], 0.0);
  }
  return HeldUnit(x, select(NONE, u, q < len), 1.0, sq);
}

// (gate or plain, up) partial dot products of one held unit with the row at UNIT offset rowu. A unit past the
// end still reads (robust access keeps the index in bounds) and is then dropped: a select rather than a branch
// keeps every lane on one path.
fn unit_dot(rowu: u32, h: HeldUnit) -> vec2<f32> {
  let gate = h.term * w_dot(rowu + h.at, h.x);
  var up = 0.0;
  if (SWIGLU) { up = w_dot(rowu + params.up_u + h.at, h.x); }
  return select(vec2<f32>(0.0), vec2<f32>(gate, up), h.at != NONE);
}

// STAGE: vec4s [0, n4) of the tile at unit t into xs (normed with NORM); returns Σ x² of the raw values staged here.
fn stage_tile(t: u32, ku: u32, n4: u32, li: u32, j: u32) -> f32 {
  var sq = 0.0;
  for (var v = li; v < n4; v += WG) {
    let e = t * UNIT + 4u * v;  // virtual element
    let p = select(0u, e / (UNIT * ku), SUM);
    let k = e - p * UNIT * ku;
    let i = params.x_off + (j + p) * params.x_stride + k;
    let raw = vec4<f32>(select(0.0, f32(x[i]), k < params.k), select(0.0, f32(x[i + 1u]), k + 1u < params.k),
                        select(0.0, f32(x[i + 2u]), k + 2u < params.k), select(0.0, f32(x[i + 3u]), k + 3u < params.k));
    if (NORM) {
      sq += dot(raw, raw);
      xs[v] = raw * norm4(k);
    } else {
      xs[v] = raw;
    }
  }
  return sq;
}

// Row r's partial dot products, into its slot of `part` (the first tile stores, later tiles add). A row past the
// set's (rr >= rps) or the tensor's end reads the last row instead and stores nothing, so the RU rows of walk_rows
// are straight-line code whose loads all issue together.
fn row_part(r: u32, rr: u32, slot: u32, itemu: u32, first_tile: bool, held: Held) {
  let live = rr < params.rps && r < params.rows;
  let rc = min(r, params.rows - 1u);
  let rowu = select(rc * params.row_stride_u + itemu, rc * params.item_stride_u, DENSE);
  var acc = held_dot(rowu, held);
  var keep = live;
  if (SUBGROUPS) {
    acc = subgroup_sum2(acc);
    keep = live && subgroup_leader;
  }
  if (keep) { part[slot] = select(part[slot] + acc, acc, first_tile); }
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, lanes: Lanes) {
  let li = lanes.li;
  subgroup_leader = subgroup_lane(lanes) == 0u;
  let id = flat_id(wg, nwg);
  let j = id % params.jobs;
  let g = id / params.jobs;
  // Returns before a barrier only on workgroup-uniform values: params, workgroup ids, and read-only
  // storage (ids, slots) indexed by them.
  if (g >= params.row_groups) { return; }
  var itemu = 0u; // 'each': UNIT offset of pick j's item in this part
  if (EACH) {
    let item = pick_item(j);
    if (item >= params.items) { return; }
    itemu = item * params.item_stride_u;
  }
  if (SUM) {
    // All slot lookups at once, rather than a chain of dependent loads per pick.
    if (li < params.topk) {
      let item = pick_item(li);
      pick_base[li] = select(NONE, item * params.item_stride_u, item < params.items);
      pick_scale[li] = term_scale(li);
    }
    workgroupBarrier();
  }
  let sets = WG / TPR;
  let lane = li % TPR;
  let first = (g * sets + li / TPR) * params.rps;
  let ku = (params.k + UNIT - 1u) / UNIT;
  let len = select(1u, params.topk, SUM) * ku;
  var sq = 0.0;
  // Row rr's slots start at rr * ROW_SLOTS: a lane's own slot, or with SUBGROUPS its subgroup's.
  let slot = select(((li / TPR) * params.rps) * ROW_SLOTS + lane, subgroup_index(lanes), SUBGROUPS);
  for (var t = 0u; t < len; t += TPR * XU) {
    if (STAGE) {
      workgroupBarrier();  // the previous tile's readers are done
      sq += stage_tile(t, ku, min(XT4, (len - t) * (UNIT / 4u)), li, j);
      workgroupBarrier();
    }
    let held = hold(t, lane, ku, len, j);
    if (NORM && !STAGE) { sq += held_sq(held); }
    for (var rr = 0u; rr < params.rps; rr += RU) {
      walk_rows(first, rr, slot + rr * ROW_SLOTS, itemu, t == 0u, held);
    }
  }
  if (NORM) {
    if (SUBGROUPS) {
      sq = subgroup_sum(sq);
      if (subgroup_leader) { lane_sq[subgroup_index(lanes)] = sq; }
    } else {
      lane_sq[li] = sq;
    }
  }
  workgroupBarrier();
  // Partial sums per row: one per lane, or per subgroup. Σ x² likewise, over the set's lanes (staged, the
  // workgroup loaded x once between all its lanes; else every set held all of x).
  let sums = select(TPR, subgroup_count(lanes), SUBGROUPS);
  let sq_sums = select(select(TPR, WG, STAGE), subgroup_count(lanes), SUBGROUPS);
  for (var i = li; i < sets * params.rps; i += WG) {
    let r = g * sets * params.rps + i;
    if (r < params.rows) {
      var a = vec2<f32>(0.0);
      for (var l = 0u; l < sums; l++) { a += part[i * ROW_SLOTS + l]; }
      if (NORM) {
        let s0 = select((i / params.rps) * TPR, 0u, STAGE || SUBGROUPS);
        var ss = 0.0;
        for (var l = s0; l < s0 + sq_sums; l++) { ss += lane_sq[l]; }
        a *= inverseSqrt(ss / f32(params.k) + params.eps);
      }
      var v = a.x;
      if (SWIGLU) { v = silu(a.x) * a.y; }
      emit(params.y_off + j * params.y_stride + params.y_row0 + r, v * out_scale(j));
    }
  }
}
