// attention_prepare: per-head q/k RMSNorm1p + partial RoPE, and the KV cache write
//   (Qwen3_5Attention.forward up to the cache update: q_norm/k_norm = Qwen3_5RMSNorm over head_dim, then
//    apply_rotary_pos_emb on the first rotary_dim dims with rotate_half pairing (i, i + rotary_dim/2)).
//   q_h  = proj[t, h*2*D .. h*2*D + D)            y = x * rsqrt(mean(x^2) + eps) * (1 + w)
//   k_g  = proj[t, k_offset + g*D ..)             y[i] = y[i]*cos + rot[i]*sin for i < R,  rot = cat(-y[R/2..R), y[0..R/2))
//   v_g  = proj[t, v_offset + g*D ..)             (raw copy)
//   proj: [T, proj_stride] act (per row: [q_0 | gate_0 | ... | q_{nq-1} | gate_{nq-1}], k at k_offset, v at v_offset)
//   q_norm, k_norm: [D] f32 · rope: [capacity, R/2] vec2 (cos, sin) at position p = token_pos(t): step.pos + t for the
//   tokens of one sequence, or (rows: continuous batching) positions[t], token t's own sequence, whose cache is row t of
//   k_cache, v_cache [rows, nkv, capacity, D] (cache_keys0(t) = t * nkv * capacity; a SKIPPED_ROW row writes nothing)
//   q: [T, nq, D] act · k_cache, v_cache: [nkv, capacity, D] act (position p of kv head g at (g*capacity + p)*D)
//   grid: one workgroup per (t, head) with head in [0, nq + nkv): heads < nq are q heads, the rest k/v heads
//         (flat_id over a 2-D grid, t outermost).
//   preconditions: R even, R <= D. Tokens whose position reaches capacity are dropped (nothing written).
override WG: u32 = 64u;

fn norm_w(is_q: bool, d: u32) -> f32 {
  if (is_q) { return q_norm[d]; }
  return k_norm[d];
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        lanes: Lanes) {
  let li = lanes.li;
  let heads = params.nq + params.nkv;
  let id = flat_id(wg, nwg);
  // Both returns are workgroup-uniform: workgroup_sum below has barriers.
  if (id >= params.tokens * heads) { return; }
  let t = id / heads;
  let hh = id % heads;
  let pos = token_pos(t);
  if (pos >= params.capacity) { return; }
  let D = params.head_dim;
  let is_q = hh < params.nq;
  let g = hh - params.nq;
  let row = t * params.proj_stride;
  let src = select(row + params.k_offset + g * D, row + hh * 2u * D, is_q);

  var ss = 0.0;
  for (var d = li; d < D; d += WG) { let x = f32(proj[src + d]); ss += x * x; }
  let inv = inverseSqrt(workgroup_sum(ss, lanes) / f32(D) + params.eps);

  let half = params.rotary_dim / 2u;
  let dst = select((cache_keys0(t) + g * params.capacity + pos) * D, (t * params.nq + hh) * D, is_q);
  for (var d = li; d < D; d += WG) {
    var y = f32(proj[src + d]) * inv * (1.0 + norm_w(is_q, d));
    if (d < params.rotary_dim) {
      let lo = d < half;
      let j = select(d - half, d + half, lo);
      let partner = f32(proj[src + j]) * inv * (1.0 + norm_w(is_q, j));
      let cs = rope[pos * half + select(d - half, d, lo)];
      y = y * cs.x + select(partner, -partner, lo) * cs.y;
    }
    if (is_q) {
      q[dst + d] = act(y);
    } else {
      k_cache[dst + d] = act(y);
      v_cache[dst + d] = proj[row + params.v_offset + g * D + d];
    }
  }
}
