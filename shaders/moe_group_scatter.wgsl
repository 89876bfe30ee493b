// moe_group_scatter — pass 3 of moe_group: write each pair into its expert's run of `order`.
//   ids:    [pairs] u32 expert of pair p = t*topk + j
//   cursor: [experts] atomic u32 (scratch): next free slot of each expert (moe_group_scan set it to the run's start)
//   order:  [pairs] u32: out: order[cursor[e]++] = p for every pair p of expert e
//   grid: one workgroup per WG pairs (flat_id). Pairs are ranked within the workgroup in workgroup memory, then one
//   global atomic per expert present reserves the workgroup's slots. Order within an expert is unspecified.
//   preconditions: experts ≤ MAX_E. Ids ≥ experts are skipped (moe_group_count did not count them).
override WG: u32 = 256u;
override MAX_E: u32 = 1024u;
var<workgroup> local_slot: array<atomic<u32>, MAX_E>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
  for (var e = li; e < params.experts; e += WG) { atomicStore(&local_slot[e], 0u); }
  workgroupBarrier();
  let p = flat_id(wg, nwg) * WG + li;
  var e = params.experts;
  var rank = 0u;
  if (p < params.pairs) {
    e = ids[p];
    if (e < params.experts) { rank = atomicAdd(&local_slot[e], 1u); }
  }
  workgroupBarrier();
  // Count → first reserved slot, in place.
  for (var x = li; x < params.experts; x += WG) {
    let c = atomicLoad(&local_slot[x]);
    if (c != 0u) { atomicStore(&local_slot[x], atomicAdd(&cursor[x], c)); }
  }
  workgroupBarrier();
  if (e < params.experts) { order[atomicLoad(&local_slot[e]) + rank] = p; }
}
