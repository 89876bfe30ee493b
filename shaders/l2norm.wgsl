// l2norm: in place, v = v * inverseSqrt(Σ v² + 1e-6) * (h < scaled_heads ? scale : 1)
//   (HF `l2norm` in torch_{chunk,recurrent}_gated_delta_rule, with q's extra scale Dk^-0.5 folded in)
//   x: [T, token_stride] act (math in f32); the vector of token t, head h is x[t*token_stride + h*dim ..][0, dim), h < heads
//   grid: one workgroup per (t, h), row = t*heads + h (flat_id over a 2-D grid)
//   preconditions: heads*dim <= token_stride (vectors do not overlap); every invocation writes only what it read.
override WG: u32 = 64u;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        lanes: Lanes) {
  let li = lanes.li;
  let row = flat_id(wg, nwg);
  if (row >= params.tokens * params.heads) { return; }  // workgroup-uniform: workgroup_sum has barriers
  let h = row % params.heads;
  let base = (row / params.heads) * params.token_stride + h * params.dim;
  var ss = 0.0;
  for (var i = li; i < params.dim; i += WG) { let v = f32(x[base + i]); ss += v * v; }
  let f = inverseSqrt(workgroup_sum(ss, lanes) + 1e-6) * select(1.0, params.scale, h < params.scaled_heads);
  for (var i = li; i < params.dim; i += WG) { x[base + i] = act(f32(x[base + i]) * f); }
}
