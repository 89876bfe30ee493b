// embedding: out[t, c] = table[ids[ids_offset + t], c]                 (nn.Embedding, embed_tokens)
//   table: one part of a [V, H] weight (rows first..first+count, row r of the part at r * row_stride), f32,
//          f16 or q4, read 8 logical elements at a time through table_load8
//   ids: [ids_offset + T] u32 · out: [T, H] f32 (the residual stream)
//   grid: one workgroup per token (flat_id over a 2-D grid); a token whose id is outside this part's rows is
//   left to the dispatch of the part that holds it (ids ≥ V are written by none).
//   preconditions: row_stride is a multiple of 8 (GpuTensor rows are padded to 8, q4 rows to 64).
override WG: u32 = 64u;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
  let t = flat_id(wg, nwg);
  if (t >= params.tokens) { return; }
  let id = ids[params.ids_offset + t];
  if (id < params.first || id - params.first >= params.count) { return; }
  let src8 = (id - params.first) * (params.row_stride / 8u);
  let dst = t * params.cols;
  for (var i = li; i * 8u < params.cols; i += WG) {
    let w = table_load8(src8 + i);
    let v = array<f32, 8>(w.lo.x, w.lo.y, w.lo.z, w.lo.w, w.hi.x, w.hi.y, w.hi.z, w.hi.w);
    let c0 = i * 8u;
    for (var j = 0u; j < 8u; j++) {
      if (c0 + j < params.cols) { out[dst + c0 + j] = v[j]; }
    }
  }
}
