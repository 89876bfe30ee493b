// log_softmax: y[r, c] = x[r, c] - m_r - log Σ_c exp(x[r, c] - m_r),  m_r = max_c x[r, c]   (torch.log_softmax, f32)
//   x, y: [rows, cols] f32 (row r at r * cols); in the in-place variant x is y (one read_write binding).
//   grid: one workgroup per row (flat_id over a 2-D grid). Each invocation keeps an online (max, Σ exp) over its
//   columns (c = li, li + WG, …, U at a time); workgroup_merge (a tree) merges the pairs, then the row is written in a second pass.
//   preconditions: rows >= 1, cols >= 1; finite inputs.
override WG: u32 = 256u;
const U = 8u;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        lanes: Lanes) {
  let li = lanes.li;
  let row = flat_id(wg, nwg);
  if (row >= params.rows) { return; }  // workgroup-uniform: workgroup_merge has barriers
  let base = row * params.cols;
  var m = -3.0e38;
  var s = 0.0;
  // U columns per step: their loads are issued together and their exps do not wait on each other.
  for (var c0 = 0u; c0 < params.cols; c0 += WG * U) {
    var xs = array<f32, U>();
    for (var u = 0u; u < U; u++) { xs[u] = load_x(base + min(c0 + u * WG + li, params.cols - 1u)); }
    var bm = m;
    for (var u = 0u; u < U; u++) { if (c0 + u * WG + li < params.cols) { bm = max(bm, xs[u]); } }
    s *= exp(m - bm);
    m = bm;
    for (var u = 0u; u < U; u++) { if (c0 + u * WG + li < params.cols) { s += exp(xs[u] - m); } }
  }
  let ms = workgroup_merge(vec2<f32>(m, s), lanes);
  let shift = ms.x + log(ms.y);
  for (var c0 = 0u; c0 < params.cols; c0 += WG * U) {
    var xs = array<f32, U>();
    for (var u = 0u; u < U; u++) { xs[u] = load_x(base + min(c0 + u * WG + li, params.cols - 1u)); }
    for (var u = 0u; u < U; u++) {
      let c = c0 + u * WG + li;
      if (c < params.cols) { y[base + c] = xs[u] - shift; }
    }
  }
}
