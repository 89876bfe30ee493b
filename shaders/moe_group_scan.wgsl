// moe_group_scan — pass 2 of moe_group (one workgroup): expert offsets, tiles and the indirect dispatch size.
//   counts: [experts] atomic u32 (scratch): pairs per expert from moe_group_count; read, then reset to 0
//   cursor: [experts] atomic u32 (scratch): out: first slot of expert e in `order` (Σ counts of experts < e)
//   tiles:  [≥ total] vec4<u32>: tile i = (expert, start, count, 0), pairs order[start .. start + count);
//           experts ascending, each expert's run cut into ceil(count / tile_tokens) tiles of ≤ tile_tokens
//   args:   [6] u32: args[0] = args[3] = total tiles (two indirect-dispatch x counts); y and z untouched
//   grid: one workgroup. Invocation li owns a contiguous run of ceil(experts / WG) experts for the scan; then
//   invocations take tiles i ≡ li (mod WG) and find their expert by binary search.
//   preconditions: 1 ≤ experts ≤ MAX_E; tile_tokens ≥ 1; WG a power of two.
override WG: u32 = 256u;
override MAX_E: u32 = 1024u;
var<workgroup> pair_end: array<u32, MAX_E>;  // inclusive prefix sum of counts
var<workgroup> tile_end: array<u32, MAX_E>;  // inclusive prefix sum of tiles per expert
var<workgroup> scan: array<vec2<u32>, WG>;   // (pairs, tiles) per invocation's run

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) li: u32) {
  let experts = params.experts;
  let tt = params.tile_tokens;
  let per = (experts + WG - 1u) / WG;
  let first = min(li * per, experts);
  let last = min(first + per, experts);
  var own = vec2<u32>(0u);
  for (var e = first; e < last; e++) {
    // Re-zeroing here is what makes the next moe_group on this scratch start clean.
    let c = atomicExchange(&counts[e], 0u);
    pair_end[e] = c;
    tile_end[e] = (c + tt - 1u) / tt;
    own += vec2<u32>(c, tile_end[e]);
  }
  scan[li] = own;
  workgroupBarrier();
  for (var s = 1u; s < WG; s <<= 1u) {
    var v = scan[li];
    if (li >= s) { v += scan[li - s]; }
    workgroupBarrier();
    scan[li] = v;
    workgroupBarrier();
  }
  var acc = vec2<u32>(0u);
  if (li > 0u) { acc = scan[li - 1u]; }
  for (var e = first; e < last; e++) {
    atomicStore(&cursor[e], acc.x);
    acc += vec2<u32>(pair_end[e], tile_end[e]);
    pair_end[e] = acc.x;
    tile_end[e] = acc.y;
  }
  let total = scan[WG - 1u].y;
  if (li == 0u) {
    args[0] = total;
    args[3] = total;
  }
  workgroupBarrier();
  for (var i = li; i < total; i += WG) {
    // The expert of tile i: the first e with tile_end[e] > i (experts without pairs have no tiles).
    var lo = 0u;
    var hi = experts - 1u;
    while (lo < hi) {
      let mid = (lo + hi) / 2u;
      if (tile_end[mid] > i) { hi = mid; } else { lo = mid + 1u; }
    }
    var t0 = 0u;
    var p0 = 0u;
    if (lo > 0u) {
      t0 = tile_end[lo - 1u];
      p0 = pair_end[lo - 1u];
    }
    let start = p0 + (i - t0) * tt;
    tiles[i] = vec4<u32>(lo, start, min(tt, pair_end[lo] - start), 0u);
  }
}
