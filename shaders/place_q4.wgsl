// place_q4: rows already in the q4 format (a GGUF Q4_0 tensor holds exactly its values: same groups of 32, one f16
//   scale each, x = (n - 8) · scale) -> their place in a q4 GpuTensor part, nothing re-quantised. Addressing as
//   quantize_q4.
//   src: rows of row_pairs * 9 u32 words each: row_pairs * 8 nibble words, then row_pairs scale words (the
//        item layout of src/numeric/q4.ts for a row on its own)
//   dst: as quantize_q4: source row r goes to LOGICAL elements dst_off + r * dst_row_stride + [0, 64 * row_pairs)
//   grid: one invocation per pair of groups (8 nibble words and 1 scale word), rows x row_pairs of them, WG per
//     workgroup, flat_id over a 2-D grid
//   preconditions (quantize.ts): as quantize_q4
override WG: u32 = 64u;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
  let p = flat_id(wg, nwg) * WG + li;
  if (p >= params.pairs) { return; }
  let row = p / params.row_pairs;
  let pr = p % params.row_pairs;
  let l = params.dst_off + row * params.dst_row_stride + 64u * pr; // logical element
  let item = l / params.item_stride;
  let r = l - item * params.item_stride;
  let block = item * params.item_words;
  let s = row * params.row_pairs * 9u;
  for (var k = 0u; k < 8u; k++) { dst[block + r / 8u + k] = src[s + 8u * pr + k]; }
  dst[block + params.item_stride / 8u + r / 64u] = src[s + 8u * params.row_pairs + pr];
}
