// sample_uncount — takes back picks a verification did not keep (src/runtime/speculation.ts): counts[id] -= 1 for
//   each id of `dropped` that is not NONE, in order (an id may come twice), never below 0, so the penalties of the
//   next pick see only the tokens kept.
//   dropped: [SAMPLE_RESULT_ROWS] u32 · counts: [n] u32 (sample_pick's)
//   grid: one invocation.
@compute @workgroup_size(1)
fn main() {
  for (var i = 0u; i < arrayLength(&dropped); i++) {
    let id = dropped[i];
    if (id != 0xffffffffu && counts[id] > 0u) { counts[id] = counts[id] - 1u; }
  }
}
