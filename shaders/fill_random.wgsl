// fill_random: benchmark weights made on the GPU (no download). Word i of y gets uniform values in
// [-scale, scale) from a hash of (seed, i): mode 0 one f32, mode 1 two f16 halves packed low-first; mode 2 (q4:
// items of item_words words, nib_words nibble words then scale words) random nibbles, and scales of scale / 8.
//   y: [words] u32 · grid: one invocation per word, 256 per workgroup (flat_id over a 2-D grid)
override WG: u32 = 256u;

fn hash(x: u32) -> u32 {
  var h = x * 747796405u + 2891336453u;
  h = ((h >> ((h >> 28u) + 4u)) ^ h) * 277803737u;
  return (h >> 22u) ^ h;
}

fn uniform_at(i: u32) -> f32 {
  return (f32(hash(i ^ hash(params.seed)) >> 8u) / 16777216.0 * 2.0 - 1.0) * params.scale;
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
  let i = flat_id(wg, nwg) * WG + li;
  if (i >= params.words) { return; }
  if (params.mode == 2u) {
    if (i % params.item_words < params.nib_words) {
      y[i] = hash(i ^ hash(params.seed));
    } else {
      y[i] = pack2x16float(vec2<f32>(params.scale / 8.0));
    }
  } else if (params.mode == 1u) {
    y[i] = pack2x16float(vec2<f32>(uniform_at(2u * i), uniform_at(2u * i + 1u)));
  } else {
    y[i] = bitcast<u32>(uniform_at(i));
  }
}
