// sample_search — up to 17 passes of sampling (src/kernels/sample.ts): the top-k and top-p thresholds, exactly, with
// no sort. Thresholds are searched on key = sample_key(z) (order-preserving u32); a survivor is an id with
// key ≥ threshold, so everything equal to a threshold is kept.
//   F_k(t) = #{i : key_i ≥ t};  t_k = the largest t with F_k(t) ≥ top_k      (HF TopKLogitsWarper: z ≥ k-th largest)
//   F_p(t) = Σ {e_i : key_i ≥ max(t, t_k)}, e_i = exp(z_i - max z);  t_p = the largest t with F_p(t) ≥ top_p · F_p(0)
//            (HF TopPLogitsWarper on the distribution renormalised after top-k: an id survives when the survivors
//            strictly above it hold less than top_p of the mass)
//   Each search finds its 32-bit key 4 bits per level, most significant first: level l tests the 16 candidates
//   c_j = prefix + j·2^(28-4l), j < 16. Each workgroup sums its block's weights (1 or e_i) into 16 buckets by
//   digit d = min((key - prefix) >> (28-4l), 15) for key ≥ prefix, into part; the next level's workgroups each sum
//   part over all blocks (the same order everywhere, so all agree), take F(c_j) = Σ_{d ≥ j} bucket_d and keep the
//   largest j with F(c_j) ≥ goal.
//   params.level: 0..7 top-k (counts), 8..15 top-p (masses), 16: decides the last top-p digit and writes each
//   block's surviving mass Σ {e_i : key_i ≥ max(t_k, t_p), e_i ≥ min_p} (MinPLogitsWarper) to part[0][g][0].
//   A filter that is off keeps its threshold at key 0 (below every z) and its levels do nothing (the sampler leaves
//   them out); with opts.greedy every level does nothing.
//   z: [n] f32 · stats: [G, 4] u32 (sample_prepare) · part: [2, G, SAMPLE_NC] f32, level L writes parity L % 2
//   and reads that of the previous level that ran (L - 1; for 8 and 16 possibly 7, whose parity is 15's)
//   state: u32, written by workgroup 0: [1] = bits of max z (by the first level that runs), words
//   4 + 4p .. 6 + 4p = (t_k, t_p, bits of the top-p goal) after a level of parity p
//   grid: G workgroups (flat_id); block g = ids [g·WG·SAMPLE_U, (g+1)·WG·SAMPLE_U), invocation li those ≡ li (mod WG).
//   Reductions go WG values → SAMPLE_NC lanes → one (two barrier sites, not a log2(WG) tree: each barrier site
//   costs lavapipe seconds of cold compile).
//   preconditions: at least the levels of the enabled filters and level 16 run, in order, after sample_prepare;
//   top_k < n (0 = off); 0 < top_p ≤ 1 (1 = off); WG a multiple of SAMPLE_NC.
override WG: u32 = 32u;
var<workgroup> sums: array<array<f32, SAMPLE_NC>, WG>;
var<workgroup> red: array<f32, WG>;
var<workgroup> lane: array<f32, SAMPLE_NC>;

// F at the 16 candidates of the previous level: part[parity] summed over blocks (invocation (j, q) takes bucket
// j of blocks q, q + WG/NC, …; lane j adds the groups), then suffix sums. Holds barriers.
fn candidate_totals(parity: u32, li: u32) -> array<f32, SAMPLE_NC> {
  let groups = WG / SAMPLE_NC;
  var t = 0.0;
  for (var g = li / SAMPLE_NC; g < params.blocks; g += groups) { t += part[(parity * params.blocks + g) * SAMPLE_NC + li % SAMPLE_NC]; }
  red[li] = t;
  workgroupBarrier();
  if (li < SAMPLE_NC) {
    var b = 0.0;
    for (var q = 0u; q < groups; q++) { b += red[q * SAMPLE_NC + li]; }
    lane[li] = b;
  }
  workgroupBarrier();
  var f: array<f32, SAMPLE_NC>;
  var above = 0.0;
  for (var k = SAMPLE_NC; k > 0u; k--) {
    above += lane[k - 1u];
    f[k - 1u] = above;
  }
  return f;
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
  let g = flat_id(wg, nwg);
  let level = params.level;
  let topk_on = opts.top_k != 0u;
  let topp_on = opts.top_p < 1.0;
  let counting = level < SAMPLE_LEVELS;
  let last = 2u * SAMPLE_LEVELS;
  // Levels of a filter that is off do nothing (the sampler does not even dispatch them), so each level takes its
  // state from the previous level that ran: 7 and 15 share a parity, and so do 8 and 16.
  if (opts.greedy != 0u || g >= params.blocks || (counting && !topk_on) || (!counting && level < last && !topp_on)) { return; }
  var prev = NONE;
  if (level != 0u && level != SAMPLE_LEVELS && level != last) { prev = level - 1u; }
  if (level == SAMPLE_LEVELS && topk_on) { prev = SAMPLE_LEVELS - 1u; }
  if (level == last) { prev = select(select(NONE, SAMPLE_LEVELS - 1u, topk_on), last - 1u, topp_on); }

  // max z: the first level that runs reduces the block stats (every workgroup, identically) and leaves it in
  // state[1] for the rest.
  var m = 0.0;
  if (prev == NONE) {
    m = sample_stats().m;
    if (g == 0u && li == 0u) { state[1] = bitcast<u32>(m); }
  } else {
    m = bitcast<f32>(state[1]);
  }

  var tk = 0u;
  var tp = 0u;
  var goal = 0.0;
  if (prev != NONE) {
    let at = 4u + 4u * (prev % 2u);
    tk = state[at];
    tp = state[at + 1u];
    goal = bitcast<f32>(state[at + 2u]);
    let was_counting = prev < SAMPLE_LEVELS;
    let f = candidate_totals(prev % 2u, li);
    if (prev == SAMPLE_LEVELS) { goal = opts.top_p * f[0]; }
    let want = select(goal, f32(opts.top_k), was_counting);
    var d = 0u;
    for (var j = 1u; j < SAMPLE_NC; j++) { if (f[j] >= want) { d = j; } }
    let bump = d << (28u - 4u * (prev % SAMPLE_LEVELS));
    if (was_counting) { tk += bump; } else { tp += bump; }
  }
  if (g == 0u && li == 0u) {
    let at = 4u + 4u * (level % 2u);
    state[at] = tk;
    state[at + 1u] = tp;
    state[at + 2u] = bitcast<u32>(goal);
  }

  let base = g * WG * SAMPLE_U;
  let end = min(base + WG * SAMPLE_U, params.n);
  let slot = (level % 2u) * params.blocks + g;
  let per = WG / SAMPLE_NC;
  if (level == 2u * SAMPLE_LEVELS) {
    let t = max(tk, tp);
    var s = 0.0;
    for (var i = base + li; i < end; i += WG) {
      let v = z[i];
      let e = exp(v - m);
      if (sample_key(v) >= t && e >= opts.min_p) { s += e; }
    }
    red[li] = s;
    workgroupBarrier();
    if (li < SAMPLE_NC) {
      var b = 0.0;
      for (var k = li * per; k < li * per + per; k++) { b += red[k]; }
      lane[li] = b;
    }
    workgroupBarrier();
    if (li == 0u) {
      var b = 0.0;
      for (var k = 0u; k < SAMPLE_NC; k++) { b += lane[k]; }
      part[slot * SAMPLE_NC] = b;
    }
    return;
  }

  let massing = !counting;
  let shift = 28u - 4u * (level % SAMPLE_LEVELS);
  let prefix = select(tk, tp, massing);
  // Top-p weighs only the survivors of top-k.
  let lowest = max(prefix, select(0u, tk, massing));
  for (var j = 0u; j < SAMPLE_NC; j++) { sums[li][j] = 0.0; }
  for (var i = base + li; i < end; i += WG) {
    let v = z[i];
    let key = sample_key(v);
    if (key >= lowest) {
      let d = min((key - prefix) >> shift, SAMPLE_NC - 1u);
      sums[li][d] += select(1.0, exp(v - m), massing);
    }
  }
  workgroupBarrier();
  // Bucket j: invocation (j, q) adds rows q·NC .. q·NC + NC - 1, then lane j adds the WG / NC groups.
  let j = li % SAMPLE_NC;
  let q = li / SAMPLE_NC;
  var t = 0.0;
  for (var r = q * SAMPLE_NC; r < q * SAMPLE_NC + SAMPLE_NC; r++) { t += sums[r][j]; }
  red[li] = t;
  workgroupBarrier();
  if (li < SAMPLE_NC) {
    var b = 0.0;
    for (var k = 0u; k < WG / SAMPLE_NC; k++) { b += red[k * SAMPLE_NC + li]; }
    part[slot * SAMPLE_NC + li] = b;
  }
}
