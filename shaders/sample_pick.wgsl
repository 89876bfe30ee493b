// sample_pick — last pass of sampling (src/kernels/sample.ts): draws the token, reports it, counts it.
//   greedy: id = the lowest id with z = max z (torch.argmax of the penalised logits).
//   otherwise: u = sample_uniform(opts.seed, rng_step), w_i = e_i = exp(z_i - max z) for survivors (key_i ≥ max(t_k, t_p),
//     e_i ≥ min_p; see sample_search) and 0 for the rest; id = the first i with Σ_{j ≤ i} w_j > u · Σ w (inverse
//     CDF in id order: torch.multinomial's distribution over the renormalised survivors). Blocked: the block is
//     found from sample_search's per-block masses, then the id by a prefix sum inside that block; if rounding
//     leaves u · Σ w past every prefix, the last survivor with w > 0 is taken.
//   logprobs (opts.logprobs = N > 0): log_softmax over ids < n of z (penalised, temperature-scaled, before any
//     filter) of the chosen id, and of the N first ids by (z desc, id asc) merged from the blocks' candidates.
//   z: [n] f32 · stats: [G, 4] u32 · cand: [G, SAMPLE_MAX_LP, 2] u32 · part: [2, G, SAMPLE_NC] f32 (block g's
//   survivor mass at part[0][g][0]) · state: u32 ([0] = RNG step, += 1 here unless greedy; [4], [5] = t_k, t_p)
//   counts: [n] u32 (+1 at id) · out: [row + 1] u32, out[params.row] = id · result: [rows, SAMPLE_RESULT_WORDS] u32,
//   row params.result_row = [id, bits of logprob, (id, bits of logprob) × N]
//   grid: one workgroup. Blocks are split into runs of ceil(G / WG) per invocation, the chosen block into runs of
//   SAMPLE_U ids, both scanned in id order. Scans and reductions go WG values → SAMPLE_NC lanes → all (few barrier
//   sites, not log2(WG) trees: each barrier site costs lavapipe seconds of cold compile).
//   preconditions: sample_prepare and sample_search (the levels sampleLevels names) ran on this step's logits;
//   WG a multiple of SAMPLE_NC.
override WG: u32 = 32u;
var<workgroup> scan: array<f32, WG>;
var<workgroup> lane: array<f32, SAMPLE_NC>;
var<workgroup> first_block: atomic<u32>;
var<workgroup> last_block: atomic<u32>;
var<workgroup> first_id: atomic<u32>;
var<workgroup> last_id: atomic<u32>;
var<workgroup> chosen_block: u32;
var<workgroup> remainder: f32;
var<workgroup> best_v: array<f32, WG>;
var<workgroup> best_i: array<u32, WG>;
var<workgroup> lane_v: array<f32, SAMPLE_NC>;
var<workgroup> lane_i: array<u32, SAMPLE_NC>;
var<workgroup> rng_step: u32;

// (Σ of `own` over invocations before li, Σ over all), both summed in id order. Holds barriers; the caller
// must not write scan or lane again before a barrier.
fn prefix_and_total(own: f32, li: u32) -> vec2<f32> {
  let per = WG / SAMPLE_NC;
  scan[li] = own;
  workgroupBarrier();
  if (li < SAMPLE_NC) {
    var b = 0.0;
    for (var k = li * per; k < li * per + per; k++) { b += scan[k]; }
    lane[li] = b;
  }
  workgroupBarrier();
  var before = 0.0;
  var total = 0.0;
  for (var k = 0u; k < SAMPLE_NC; k++) {
    if (k < li / per) { before += lane[k]; }
    total += lane[k];
  }
  for (var k = (li / per) * per; k < li; k++) { before += scan[k]; }
  return vec2<f32>(before, total);
}

fn weight(i: u32, t: u32, m: f32) -> f32 {
  let v = z[i];
  let e = exp(v - m);
  return select(0.0, e, sample_key(v) >= t && e >= opts.min_p);
}

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) li: u32) {
  let st = sample_stats();
  var id = st.i;
  if (opts.greedy == 0u) {
    if (li == 0u) {
      // Only invocation 0 touches state[0]; the barriers below publish it.
      rng_step = state[0];
      atomicStore(&first_block, NONE);
      atomicStore(&last_block, 0u);
      atomicStore(&first_id, NONE);
      atomicStore(&last_id, 0u);
    }
    let t = max(state[4], state[5]);
    // The block: runs of `per` blocks per invocation.
    let per = (params.blocks + WG - 1u) / WG;
    let b0 = min(li * per, params.blocks);
    let b1 = min(b0 + per, params.blocks);
    var own = 0.0;
    for (var g = b0; g < b1; g++) { own += part[g * SAMPLE_NC]; }
    let pt = prefix_and_total(own, li);
    let r = sample_uniform(opts.seed, rng_step) * pt.y;
    var c = pt.x;
    for (var g = b0; g < b1; g++) {
      let w = part[g * SAMPLE_NC];
      if (w > 0.0) {
        atomicMax(&last_block, g + 1u);
        if (c + w > r) { atomicMin(&first_block, g); break; }
      }
      c += w;
    }
    workgroupBarrier();
    let fb = atomicLoad(&first_block);
    if (fb == NONE) {
      // Rounding put r past the total: the last block with mass, and past its end.
      if (li == 0u) { chosen_block = atomicLoad(&last_block) - 1u; remainder = 3.0e38; }
    } else if (fb >= b0 && fb < b1) {
      chosen_block = fb;
      remainder = r - c;
    }
    workgroupBarrier();
    // The id: runs of SAMPLE_U ids of the chosen block per invocation (weights recomputed: no private array).
    let i0 = chosen_block * WG * SAMPLE_U + li * SAMPLE_U;
    let i1 = min(i0 + SAMPLE_U, params.n);
    let rem = remainder;
    var mine = 0.0;
    for (var i = i0; i < i1; i++) { mine += weight(i, t, st.m); }
    var ci = prefix_and_total(mine, li).x;
    for (var i = i0; i < i1; i++) {
      let w = weight(i, t, st.m);
      if (w > 0.0) {
        atomicMax(&last_id, i + 1u);
        if (ci + w > rem) { atomicMin(&first_id, i); break; }
      }
      ci += w;
    }
    workgroupBarrier();
    let fi = atomicLoad(&first_id);
    id = select(fi, atomicLoad(&last_id) - 1u, fi == NONE);
  }
  if (li == 0u) {
    out[params.row] = id;
    result[params.result_row * SAMPLE_RESULT_WORDS] = id;
    counts[id] = counts[id] + 1u;
    if (opts.greedy == 0u) { state[0] = rng_step + 1u; }
  }
  if (opts.logprobs == 0u) { return; }
  let log_s = st.m + log(st.s);
  let rb = params.result_row * SAMPLE_RESULT_WORDS;
  if (li == 0u) { result[rb + 1u] = bitcast<u32>(z[id] - log_s); }
  // The N first ids over all blocks' candidates, one selection round each; every invocation finishes the
  // reduction itself, so all hold the winner.
  let nlp = opts.logprobs;
  let total = params.blocks * nlp;
  let per = WG / SAMPLE_NC;
  var pv = 0.0;
  var pi = NONE;
  for (var r = 0u; r < nlp; r++) {
    var bv = SAMPLE_LOW;
    var bi = NONE;
    for (var k = li; k < total; k += WG) {
      let at = 2u * ((k / nlp) * SAMPLE_MAX_LP + k % nlp);
      let v = bitcast<f32>(cand[at]);
      let i = cand[at + 1u];
      let after = r == 0u || (pi != NONE && (v < pv || (v == pv && i > pi)));
      if (after && ranks_before(v, i, bv, bi)) { bv = v; bi = i; }
    }
    workgroupBarrier();
    best_v[li] = bv;
    best_i[li] = bi;
    workgroupBarrier();
    if (li < SAMPLE_NC) {
      var cv = SAMPLE_LOW;
      var cx = NONE;
      for (var k = li * per; k < li * per + per; k++) {
        if (ranks_before(best_v[k], best_i[k], cv, cx)) { cv = best_v[k]; cx = best_i[k]; }
      }
      lane_v[li] = cv;
      lane_i[li] = cx;
    }
    workgroupBarrier();
    var wv = SAMPLE_LOW;
    var wx = NONE;
    for (var k = 0u; k < SAMPLE_NC; k++) {
      if (ranks_before(lane_v[k], lane_i[k], wv, wx)) { wv = lane_v[k]; wx = lane_i[k]; }
    }
    pv = wv;
    pi = wx;
    if (li == 0u) {
      result[rb + 2u + 2u * r] = pi;
      result[rb + 3u + 2u * r] = bitcast<u32>(pv - log_s);
    }
  }
}
