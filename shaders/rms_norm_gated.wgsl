// rms_norm_gated: y = x * inverseSqrt(mean(x²) + eps) * w * silu(z)    (Qwen3_5RMSNormGated: plain weight, not 1 + w;
//   norm before gate; all math in f32, no rounding in between)
//   x, y: [rows, dim] act, rows = T * heads, row r = (t = r / heads, h = r % heads)
//   z:    [T, z_token_stride] act; the gate of row r is z[t*z_token_stride + z_offset + h*dim ..][0, dim)
//   w:    [dim] f32, shared by all heads
//   grid: one workgroup per row (flat_id over a 2-D grid). x, z, w, y distinct buffers.
override WG: u32 = 64u;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        lanes: Lanes) {
  let li = lanes.li;
  let row = flat_id(wg, nwg);
  if (row >= params.rows) { return; }  // workgroup-uniform: workgroup_sum has barriers
  let base = row * params.dim;
  let zbase = (row / params.heads) * params.z_token_stride + params.z_offset + (row % params.heads) * params.dim;
  var ss = 0.0;
  for (var i = li; i < params.dim; i += WG) { let v = f32(x[base + i]); ss += v * v; }
  let inv = inverseSqrt(workgroup_sum(ss, lanes) / f32(params.dim) + params.eps);
  for (var i = li; i < params.dim; i += WG) { y[base + i] = act(f32(x[base + i]) * inv * w[i] * silu(f32(z[zbase + i]))); }
}
