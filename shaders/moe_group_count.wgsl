// moe_group_count — pass 1 of moe_group: how many (token, expert) pairs each expert received.
//   ids:    [pairs] u32, pairs = tokens · topk: the expert of pair p = t*topk + j (moe_route's ids)
//   counts: [experts] atomic u32 (scratch): += this grid's histogram; zero on entry (moe_group_scan re-zeroes it)
//   grid: one workgroup per WG pairs (flat_id); each adds its local histogram with one atomic per expert present,
//   so a popular expert sees pairs / WG global atomics, not pairs.
//   preconditions: experts ≤ MAX_E. Ids ≥ experts are ignored (here and in the other passes).
override WG: u32 = 256u;
override MAX_E: u32 = 1024u;
var<workgroup> local_count: array<atomic<u32>, MAX_E>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
  for (var e = li; e < params.experts; e += WG) { atomicStore(&local_count[e], 0u); }
  workgroupBarrier();
  let p = flat_id(wg, nwg) * WG + li;
  if (p < params.pairs) {
    let e = ids[p];
    if (e < params.experts) { atomicAdd(&local_count[e], 1u); }
  }
  workgroupBarrier();
  for (var e = li; e < params.experts; e += WG) {
    let c = atomicLoad(&local_count[e]);
    if (c != 0u) { atomicAdd(&counts[e], c); }
  }
}
