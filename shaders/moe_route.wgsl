// moe_route: router softmax, top-k, renormalisation, and the shared-expert gate
//   (Qwen3_5MoeSparseMoeBlock: p = softmax(router_logits, fp32); w, idx = topk(p, k); w /= Σw;
//    shared scale = sigmoid(shared_expert_gate(x)))
//   logits: [tokens, experts + 1] f32: the E expert logits of token t, then its shared-expert gate logit
//   ids:    [tokens, topk] u32: chosen experts by descending p; equal p → lower expert id first
//   gates:  [tokens, topk + 1] f32: w_j = p_j / Σ_top p (same order as ids), then sigmoid(shared gate logit)
//   grid: one workgroup per token (flat_id over a 2-D grid); invocation li holds experts e ≡ li (mod WG).
//   preconditions: WG a power of two; 1 ≤ topk ≤ min(experts, MAX_TOPK); experts ≤ 32 · WG (one taken bit each).
// The selection compares logits, not p: softmax is strictly increasing in the logit, so the order and the ties
// are those of the exact p, whatever exp rounds to. The softmax denominator cancels in the renormalisation:
// w_j = exp(l_j − l_1) / Σ_top exp(l_i − l_1), l_1 the top-1 (= largest) logit.
override WG: u32 = 64u;
const MAX_TOPK: u32 = 16u;
var<workgroup> chosen: array<u32, MAX_TOPK>;
// Ranking (ranks_before, workgroup_best: WORKGROUP_BEST in src/gpu/wgsl.ts): larger logit, then lower id. Any
// expert ranks before NONE, so a NaN logit still yields a valid id.

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        lanes: Lanes) {
  let li = lanes.li;
  let t = flat_id(wg, nwg);
  if (t >= params.tokens) { return; }
  let experts = params.experts;
  let topk = params.topk;
  let row = t * (experts + 1u);

  // Each invocation keeps the best of its own experts; only the owner of a winner rescans.
  var taken = 0u;
  var best_v = 0.0;
  var best_i = NONE;
  var stale = true;
  for (var j = 0u; j < topk; j++) {
    if (stale) {
      best_v = 0.0;
      best_i = NONE;
      var bit = 0u;
      for (var e = li; e < experts; e += WG) {
        let v = logits[row + e];
        if ((taken & (1u << bit)) == 0u && ranks_before(v, e, best_v, best_i)) { best_v = v; best_i = e; }
        bit++;
      }
      stale = false;
    }
    let win = workgroup_best(Ranked(best_v, best_i), lanes).i;
    if (li == 0u) { chosen[j] = win; }
    if (win != NONE && win == best_i) {
      taken |= 1u << ((win - li) / WG);
      stale = true;
    }
  }
  // chosen is read below.
  workgroupBarrier();

  if (li < topk) {
    // Every writer sums the same terms in the same order, so the k weights share one denominator.
    let top = f32(logits[row + chosen[0]]);
    var sum = 0.0;
    for (var i = 0u; i < topk; i++) { sum += exp(f32(logits[row + chosen[i]]) - top); }
    let id = chosen[li];
    ids[t * topk + li] = id;
    gates[t * (topk + 1u) + li] = exp(logits[row + id] - top) / sum;
  } else if (li == topk) {
    gates[t * (topk + 1u) + topk] = sigmoid(logits[row + experts]);
  }
}
