// matvec: y = W x for one token (decode) or a few, bandwidth-bound; dense layers, lm_head and MoE experts.
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
//   y: act or f32 (the variant's; logits are f32) [N] at y_off + y_row0 (y_row0: a dense part's first row); experts
//      'each': [topk][N], pick j at y_off + j * y_stride; dense over `tokens` tokens likewise token j
//   ids: u32 [topk] at ids_off (chosen expert ids) · slots: u32 [E] expert id -> slot · scales: f32, job j's at
//      scale_idx + j * scale_stride
//   grid: flat_id = g * jobs + j (j: the pick for 'each', dense tokens j * XR ..+XR, else 0; a row group's jobs run
//     side by side, so its weights are still in cache for the next job). XR (dense only): a workgroup serves XR
//     tokens, loading each weight unit once and dotting it with every token's x (token_dots), so a batch's rows or
//     a verification's read the weights once per XR tokens; each token's sums run in the order they would alone.
//     The WG invocations form WG / TPR sets of TPR lanes; set s of workgroup g owns rows (g * WG / TPR + s) * rps
//     ..+rps. The TPR lanes of a set share each row, every lane on its own columns: lane l holds units
//     t + c * TPR + l (c < XU) of x in registers (hold / held_dot: XU HeldUnits of XR tokens each, unrolled by
//     matvec.ts) and walks the set's rows with them (RU rows at a time, so that their weight loads are in flight
//     together: walk_rows, also unrolled), so x
//     is read once per set per K tile of TPR * XU units instead of once per row (on GPUs x from shared memory per
//     row costs more than the weights; on CPU adapters it is a gather per element). STAGE (CPU adapters): each
//     tile of x is first staged in workgroup memory as vec4s, so that a lane picks up a unit in 2 or 8 vector
//     loads rather than 8 or 32 bounds-checked scalar ones (lavapipe compiles those slowly: seconds a pipeline).
//     Each lane keeps its running sum of a row in its slot of `part`, adding one unit after another (so XU does not
//     change it); after one barrier each row's TPR partials are summed in lane order. SUBGROUPS (one set per
//     workgroup, WG == TPR; GPUs): each tile's row partials are summed across every subgroup in registers
//     (subgroup_sum2) and its first lane adds that sum to the subgroup's slot of the row; after the barrier a row's
//     slots (one per subgroup) are summed.
//     'sum' runs over the picks as one dot product of length topk * KU units (KU = K rounded up to a UNIT).
//   preconditions (matvec.ts): TPR a power of two dividing WG; PART_T >= WG / TPR * rps * ROW_SLOTS, PART = XR *
//     PART_T; XR <= 4; 'sum':
//     topk <= MAX_PICKS; rowStride, itemStride multiples of UNIT; x and y distinct; a pick whose slot is
//     outside this part contributes nothing here (another part's dispatch serves it).
override WG: u32 = 8u;
override TPR: u32 = 8u;
// Row partial sums: PART_T per token of a job, XR tokens.
override PART_T: u32 = 72u;
override PART: u32 = 72u;
// STAGE: vec4s of one K tile (TPR * XU * UNIT / 4) per token, XR tokens; else 1.
override XT4: u32 = 1u;
const MAX_PICKS = 32u;
const NONE = 0xffffffffu;

var<workgroup> part: array<vec2<f32>, PART>;
// SUBGROUPS: whether this lane stores its subgroup's sums.
var<private> subgroup_leader: bool;
var<workgroup> xs: array<vec4<f32>, XT4>;
// NORM: each lane's Σ x² over the x it loaded, token c of the job in component c.
var<workgroup> lane_sq: array<vec4<f32>, WG>;
// 'sum': each pick's item offset in this part (in UNITs; NONE if elsewhere) and its scale.
var<workgroup> pick_base: array<u32, MAX_PICKS>;
var<workgroup> pick_scale: array<f32, MAX_PICKS>;

// Token c of job j, the last token for the lanes of a job past the end (they compute and store nothing).
fn token_of(j: u32, c: u32) -> u32 { return min(j * XR + c, params.tokens - 1u); }

// One token's unit of x: its values (times 1 + the norm weights with NORM), and Σ x² of its raw values (NORM
// without STAGE; staging sums the squares itself).
struct TokenUnit { x: XUnit, sq: f32 }

// Token c's unit u of x (pick p's for 'sum'), at q in the tile being held (its first unit 0).
fn token_unit(q: u32, p: u32, u: u32, c: u32, j: u32) -> TokenUnit {
  if (STAGE) { return TokenUnit(x_staged(c * (XT4 / XR) + q * (UNIT / 4u)), 0.0); }
  var x = x_unit(params.x_off + (token_of(j, c) + p) * params.x_stride, u);
  var sq = 0.0;
  if (NORM) {
    sq = unit_sq(x);
    x = norm_unit(u, x);
  }
  return TokenUnit(x, sq);
}

// One unit of x that a lane holds for the XR tokens of its job (hold_tokens), its UNIT offset within a row's units
// (SUM: plus its pick's item; NONE past the end) and its weight in the sum.
struct HeldUnit { x: Tokens, at: u32, term: f32 }

// Virtual unit q of x (q < len; 'sum': pick q / ku's unit q % ku), in the tile that starts at unit t.
fn hold_unit(q: u32, t: u32, ku: u32, len: u32, j: u32) -> HeldUnit {
  let p = select(0u, min(q / ku, params.topk - 1u), SUM);
  let u = q - p * ku;
  let x = hold_tokens(q - t, p, u, j);
  if (SUM) {
    return HeldUnit(x, select(NONE, pick_base[p] + u, q < len && pick_base[p] != NONE), pick_scale[p]);
  }
  return HeldUnit(x, select(NONE, u, q < len), 1.0);
}

// (gate or plain, up) partial dot products of one token's unit with the weights of a row (up: its up row). A unit
// past the end still reads (robust access keeps the index in bounds) and is then dropped: a select rather than a
// branch keeps every lane on one path.
fn token_dot(w: WUnit, up_w: WUnit, h: HeldUnit, x: XUnit) -> vec2<f32> {
  let gate = h.term * w_unit_dot(w, x);
  var up = 0.0;
  if (SWIGLU) { up = w_unit_dot(up_w, x); }
  return select(vec2<f32>(0.0), vec2<f32>(gate, up), h.at != NONE);
}

// The partial dot products of one held unit with the row at UNIT offset rowu, for every token: the row's weights
// are loaded once for all of them.
fn unit_dot(rowu: u32, h: HeldUnit) -> Acc {
  let w = w_unit(rowu + h.at);
  var up_w: WUnit;
  if (SWIGLU) { up_w = w_unit(rowu + params.up_u + h.at); }
  return token_dots(w, up_w, h);
}

// STAGE: vec4s [0, n4) of the tile at unit t, for each token of job j, into xs (normed with NORM); returns this
// lane's Σ x² of the raw values so far, token c in component c (added one vec4 after another, whatever the tile).
fn stage_tile(t: u32, ku: u32, n4: u32, li: u32, j: u32, sq_so_far: vec4<f32>) -> vec4<f32> {
  var sq = sq_so_far;
  for (var c = 0u; c < XR; c++) {
    for (var v = li; v < n4; v += WG) {
      let e = t * UNIT + 4u * v;  // virtual element
      let p = select(0u, e / (UNIT * ku), SUM);
      let k = e - p * UNIT * ku;
      let i = params.x_off + (token_of(j, c) + p) * params.x_stride + k;
      let raw = vec4<f32>(select(0.0, f32(x[i]), k < params.k), select(0.0, f32(x[i + 1u]), k + 1u < params.k),
                          select(0.0, f32(x[i + 2u]), k + 2u < params.k), select(0.0, f32(x[i + 3u]), k + 3u < params.k));
      if (NORM) {
        sq[c] += dot(raw, raw);
        xs[c * (XT4 / XR) + v] = raw * norm4(k);
      } else {
        xs[c * (XT4 / XR) + v] = raw;
      }
    }
  }
  return sq;
}

// Where one token's partial dot products of a row start in a tile: the lane's sum so far (its own slot), so that it
// runs on unit after unit whatever the tile's width; with SUBGROUPS zero, the tile's sum meeting the others' first.
fn part_from(slot: u32, first_tile: bool) -> vec2<f32> {
  if (first_tile || SUBGROUPS) { return vec2<f32>(0.0); }
  return part[slot];
}

// One token's partial dot products of a row into its slot of `part`. With SUBGROUPS every lane takes part in the
// tile's sum; its leader stores it (the first tile) or adds it.
fn keep_part(acc: vec2<f32>, slot: u32, live: bool, first_tile: bool) {
  if (SUBGROUPS) {
    let a = subgroup_sum2(acc);
    if (live && subgroup_leader) { part[slot] = select(part[slot] + a, a, first_tile); }
  } else if (live) {
    part[slot] = acc;
  }
}

// Row r's partial dot products, for every token. A row past the set's (rr >= rps) or the tensor's end reads the
// last row instead and stores nothing, so the RU rows of walk_rows are straight-line code whose loads all issue
// together.
fn row_part(r: u32, rr: u32, slot: u32, itemu: u32, first_tile: bool, held: Held) {
  let live = rr < params.rps && r < params.rows;
  let rc = min(r, params.rows - 1u);
  let rowu = select(rc * params.row_stride_u + itemu, rc * params.item_stride_u, DENSE);
  keep_parts(held_dot(rowu, held, parts_from(slot, first_tile)), slot, live, first_tile);
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
  var sq = vec4<f32>(0.0);
  // Row rr's slots start at rr * ROW_SLOTS (token c's at c * PART_T beyond): a lane's own slot, or with SUBGROUPS
  // its subgroup's.
  let slot = select(((li / TPR) * params.rps) * ROW_SLOTS + lane, subgroup_index(lanes), SUBGROUPS);
  for (var t = 0u; t < len; t += TPR * XU) {
    if (STAGE) {
      workgroupBarrier();  // the previous tile's readers are done
      sq = stage_tile(t, ku, min(XT4 / XR, (len - t) * (UNIT / 4u)), li, j, sq);
      workgroupBarrier();
    }
    let held = hold(t, lane, ku, len, j);
    if (NORM && !STAGE) { sq = held_sq(held, sq); }
    for (var rr = 0u; rr < params.rps; rr += RU) {
      walk_rows(first, rr, slot + rr * ROW_SLOTS, itemu, t == 0u, held);
    }
  }
  if (NORM) {
    if (SUBGROUPS) {
      sq = subgroup_sum4(sq);
      if (subgroup_leader) { lane_sq[subgroup_index(lanes)] = sq; }
    } else {
      lane_sq[li] = sq;
    }
  }
  workgroupBarrier();
  // Partial sums per row and token: one per lane, or per subgroup. Σ x² likewise, over the set's lanes (staged,
  // the workgroup loaded x once between all its lanes; else every set held all of x).
  let sums = select(TPR, subgroup_count(lanes), SUBGROUPS);
  let sq_sums = select(select(TPR, WG, STAGE), subgroup_count(lanes), SUBGROUPS);
  let group_rows = sets * params.rps;
  for (var i = li; i < XR * group_rows; i += WG) {
    let c = i / group_rows;
    let ri = i - c * group_rows;
    let r = g * group_rows + ri;
    let token = j * XR + c;
    if (r < params.rows && token < params.tokens) {
      var a = vec2<f32>(0.0);
      for (var l = 0u; l < sums; l++) { a += part[c * PART_T + ri * ROW_SLOTS + l]; }
      if (NORM) {
        let s0 = select((ri / params.rps) * TPR, 0u, STAGE || SUBGROUPS);
        var ss = 0.0;
        for (var l = s0; l < s0 + sq_sums; l++) { ss += lane_sq[l][c]; }
        a *= inverseSqrt(ss / f32(params.k) + params.eps);
      }
      var v = a.x;
      if (SWIGLU) { v = silu(a.x) * a.y; }
      emit(params.y_off + token * params.y_stride + params.y_row0 + r, v * out_scale(token));
    }
  }
}
