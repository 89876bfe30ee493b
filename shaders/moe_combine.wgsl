// moe_combine: h[t*hidden + c] += Σ_{j<topk} out[(t*topk + j)*hidden + c]
//   (Qwen3_5MoeSparseMoeBlock's Σ_j w_j · Expert_j(x) folded into the residual add; the weights w_j were applied
//    by the down projection, which wrote one row per (token, expert) pair)
//   h:   [tokens, hidden] f32 (the residual stream), updated in place · out: [tokens, topk, hidden] f32 (pair p = t*topk + j at row p); sums in f32
//   grid: one invocation per element of h, WG per workgroup (flat_id over a 2-D grid).
//   preconditions: h and out are distinct buffers; tokens · topk · hidden < 2^32.
override WG: u32 = 256u;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
  let i = flat_id(wg, nwg) * WG + li;
  let hidden = params.hidden;
  if (i >= params.tokens * hidden) { return; }
  let t = i / hidden;
  let c = i - t * hidden;
  let base = t * params.topk * hidden + c;
  // Experts first, then the residual: h + Σ_j, as HF adds the summed experts to the stream.
  var s = 0.0;
  for (var j = 0u; j < params.topk; j++) { s += out[base + j * hidden]; }
  h[i] = h[i] + s;
}
