// sample_prepare — pass 1 of sampling (src/kernels/sample.ts): penalties, temperature, block statistics.
//   math, in HF's logits-processor order, over ids i < n:
//     l = logits[i]; c = (seen[i] & 0x7fffffff) + counts[i]; seen = seen[i] != 0 || c != 0
//     l = seen ? (l > 0 ? l / rep : l * rep) : l        (RepetitionPenaltyLogitsProcessor, prompt + generated)
//     l -= presence * [c > 0] + frequency * c           (OpenAI presence/frequency, generated ids only)
//     z[i] = greedy ? l : l / temperature               (TemperatureLogitsWarper)
//   NaN becomes -3e38 and ±inf (from tiny temperatures) is clamped to ±3e38, so z - max z is never NaN.
//   logits: [≥ n] f32 (rows ≥ n are the vocabulary's padding: never read)
//   seen: [n] u32, bit 31 = in the prompt, bits 0..30 = times forced · counts: [n] u32, times sampled
//   z: [n] f32 out
//   stats: [G, 4] u32 out: block g = (bits of max z, lowest id of the max, bits of Σ exp(z - max), 0)
//   cand: [G, SAMPLE_MAX_LP, 2] u32 out, only when opts.logprobs > 0: block g's opts.logprobs first ids by
//         (z desc, id asc) as (bits of z, id); id NONE when the block has fewer ids
//   grid: G = ceil(n / (WG·SAMPLE_U)) workgroups (flat_id); block g holds ids [g·WG·SAMPLE_U, (g+1)·WG·SAMPLE_U),
//         invocation li those ≡ li (mod WG). Reductions: WG values → SAMPLE_NC lanes → one (two barrier sites,
//         not a log2(WG) tree: each barrier site costs lavapipe seconds of cold compile).
//   preconditions: 1 ≤ n; opts.temperature > 0 unless opts.greedy; opts.logprobs ≤ min(SAMPLE_MAX_LP, n);
//   WG a multiple of SAMPLE_NC.
override WG: u32 = 32u;
var<workgroup> red_m: array<f32, WG>;
var<workgroup> red_s: array<f32, WG>;
var<workgroup> red_i: array<u32, WG>;
var<workgroup> lane_m: array<f32, SAMPLE_NC>;
var<workgroup> lane_s: array<f32, SAMPLE_NC>;
var<workgroup> lane_i: array<u32, SAMPLE_NC>;

fn penalised(i: u32) -> f32 {
  var l = logits[params.row * params.row_stride + i];
  let s = seen[i];
  let c = (s & 0x7fffffffu) + counts[i];
  if ((s != 0u || c != 0u) && opts.repetition != 1.0) { l = select(l * opts.repetition, l / opts.repetition, l > 0.0); }
  if (c > 0u) { l -= opts.presence + opts.frequency * f32(c); }
  if (opts.greedy == 0u) { l = l / opts.temperature; }
  return select(clamp(l, -3.0e38, 3.0e38), -3.0e38, l != l);
}

struct Acc { m: f32, s: f32, i: u32 }
// Online softmax merge; equal maxima keep the lower id.
fn merge(a: Acc, b: Acc) -> Acc {
  let m = max(a.m, b.m);
  var i = select(a.i, b.i, b.m > a.m);
  if (a.m == b.m) { i = min(a.i, b.i); }
  return Acc(m, a.s * exp(a.m - m) + b.s * exp(b.m - m), i);
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
  let g = flat_id(wg, nwg);
  if (g >= params.blocks) { return; }
  let base = g * WG * SAMPLE_U;
  let end = min(base + WG * SAMPLE_U, params.n);
  let per = WG / SAMPLE_NC;
  // Loops run to runtime bounds: unrolled constant loops also made lavapipe's cold compile slow.
  var a = Acc(SAMPLE_LOW, 0.0, NONE);
  for (var i = base + li; i < end; i += WG) {
    let v = penalised(i);
    z[i] = v;
    // Ids rise along the loop, so a strict > keeps the lowest id of equal values; one exp per id.
    if (v > a.m) {
      a = Acc(v, a.s * exp(a.m - v) + 1.0, i);
    } else {
      a.s += exp(v - a.m);
    }
  }
  red_m[li] = a.m;
  red_s[li] = a.s;
  red_i[li] = a.i;
  workgroupBarrier();
  if (li < SAMPLE_NC) {
    var b = Acc(SAMPLE_LOW, 0.0, NONE);
    for (var k = li * per; k < li * per + per; k++) { b = merge(b, Acc(red_m[k], red_s[k], red_i[k])); }
    lane_m[li] = b.m;
    lane_s[li] = b.s;
    lane_i[li] = b.i;
  }
  workgroupBarrier();
  if (li == 0u) {
    var b = Acc(SAMPLE_LOW, 0.0, NONE);
    for (var k = 0u; k < SAMPLE_NC; k++) { b = merge(b, Acc(lane_m[k], lane_s[k], lane_i[k])); }
    stats[4u * g] = bitcast<u32>(b.m);
    stats[4u * g + 1u] = b.i;
    stats[4u * g + 2u] = bitcast<u32>(b.s);
    stats[4u * g + 3u] = 0u;
  }
  // Logprobs: the block's first opts.logprobs ids by (z desc, id asc), one selection round each; each invocation
  // reads back only the z it wrote. Every invocation finishes the reduction itself, so all hold the winner.
  var pv = 0.0;
  var pi = NONE;
  for (var r = 0u; r < opts.logprobs; r++) {
    var bv = SAMPLE_LOW;
    var bi = NONE;
    for (var i = base + li; i < end; i += WG) {
      let v = z[i];
      let after = r == 0u || (pi != NONE && (v < pv || (v == pv && i > pi)));
      if (after && ranks_before(v, i, bv, bi)) { bv = v; bi = i; }
    }
    workgroupBarrier();
    red_m[li] = bv;
    red_i[li] = bi;
    workgroupBarrier();
    if (li < SAMPLE_NC) {
      var cv = SAMPLE_LOW;
      var ci = NONE;
      for (var k = li * per; k < li * per + per; k++) {
        if (ranks_before(red_m[k], red_i[k], cv, ci)) { cv = red_m[k]; ci = red_i[k]; }
      }
      lane_m[li] = cv;
      lane_i[li] = ci;
    }
    workgroupBarrier();
    var wv = SAMPLE_LOW;
    var wi = NONE;
    for (var k = 0u; k < SAMPLE_NC; k++) {
      if (ranks_before(lane_m[k], lane_i[k], wv, wi)) { wv = lane_m[k]; wi = lane_i[k]; }
    }
    pv = wv;
    pi = wi;
    if (li == 0u) {
      cand[2u * (g * SAMPLE_MAX_LP + r)] = bitcast<u32>(pv);
      cand[2u * (g * SAMPLE_MAX_LP + r) + 1u] = pi;
    }
  }
}
