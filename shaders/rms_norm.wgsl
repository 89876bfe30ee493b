// rms_norm: y = x * rsqrt(mean(x^2) + eps) * (1 + w)          (Qwen3_5RMSNorm: zero-centred weight, fp32 math)
//   x: [rows, cols] f32 (the residual stream; row r at x_off + r * cols) · y: its norm, row r at y_off + r * y_stride (y_stride ≥ cols)
//   w: [cols] f32; sums in f32
//   grid: one workgroup per row (flat_id over a 2-D grid). y may alias nothing; x and y are distinct buffers.
override WG: u32 = 256u;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        lanes: Lanes) {
  let li = lanes.li;
  let row = flat_id(wg, nwg);
  if (row >= params.rows) { return; }  // workgroup-uniform: workgroup_sum has barriers
  let base = params.x_off + row * params.cols;
  var ss = 0.0;
  for (var i = li; i < params.cols; i += WG) { let v = x[base + i]; ss += v * v; }
  let inv = inverseSqrt(workgroup_sum(ss, lanes) / f32(params.cols) + params.eps);
  let out = params.y_off + row * params.y_stride;
  for (var i = li; i < params.cols; i += WG) { y[out + i] = x[base + i] * inv * (1.0 + w[i]); }
}
