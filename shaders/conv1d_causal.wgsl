// conv1d_causal: depthwise causal conv1d over time, no bias, then SiLU (Qwen3_5GatedDeltaNet: `self.conv1d` over
//   `mixed_qkv` padded on the left by the cached conv_state, then F.silu; tap j = K-1 multiplies the current token).
//   y[t,c] = silu(Σ_{j<K} w[c*w_stride + j] * in[t-(K-1)+j, c]),  in[τ<0] = state[(K-1+τ)*C + c],  in[τ≥0] = x[τ*x_stride + c]
//   x:     [T, x_stride] act, channel c in column c < C (the qkv columns of the fused projection)
//   w:     [C, w_stride] f32, taps in columns [0, K)
//   state: [K-1, C] act, the K-1 raw inputs before token 0 (oldest first); rewritten to the last K-1 raw inputs,
//          so calls over consecutive token ranges equal one call over all of them
//   y:     [T, C] act (sums in f32)
//   grid: ceil(C / CH) workgroups (flat_id) of CH × SEG invocations; invocation (c, s) owns channel wg*CH + c and
//   tokens [s*seg_len, (s+1)*seg_len) ∩ [0, T). A channel lives in one workgroup, so its old state is read (before the
//   storageBarrier) and rewritten (after it) in the same dispatch without a race.
//   preconditions: 2 <= K <= 8; T >= 1; seg_len = ceil(T / SEG); x, w, state, y distinct buffers.
override CH: u32 = 64u;
override SEG: u32 = 4u;

fn conv_input(tau: i32, c: u32) -> f32 {
  if (tau < 0) { return f32(state[u32(i32(params.k) - 1 + tau) * params.channels + c]); }
  return f32(x[u32(tau) * params.x_stride + c]);
}

@compute @workgroup_size(CH, SEG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_id) lid: vec3<u32>) {
  let c = flat_id(wg, nwg) * CH + lid.x;
  // No early return: every invocation must reach the barrier.
  let live = c < params.channels;
  let k = i32(params.k);
  let t0 = lid.y * params.seg_len;
  let t1 = min(params.tokens, t0 + params.seg_len);
  // Window of 8 slots aligned at the end so that every index is static: before token t, slot s holds in[t - 8 + s].
  var taps: array<f32, 8>;
  var win: array<f32, 8>;
  var old: array<f32, 7>;
  if (live) {
    for (var j = 0; j < k; j++) { taps[8 - k + j] = w[c * params.w_stride + u32(j)]; }
    if (t0 < t1) {
      for (var s = 9 - k; s < 8; s++) { win[s] = conv_input(i32(t0) - 8 + s, c); }
    }
    if (lid.y == 0u) {
      for (var r = 0; r < k - 1; r++) { old[r] = f32(state[u32(r) * params.channels + c]); }
    }
    for (var t = t0; t < t1; t++) {
      for (var s = 0u; s < 7u; s++) { win[s] = win[s + 1u]; }
      win[7] = f32(x[t * params.x_stride + c]);
      var acc = 0.0;
      for (var s = 0u; s < 8u; s++) { acc += taps[s] * win[s]; }
      y[t * params.channels + c] = act(silu(acc));
    }
  }
  storageBarrier();
  if (live && lid.y == 0u) {
    for (var r = 0; r < k - 1; r++) {
      let tau = i32(params.tokens) - (k - 1) + r;
      var v = 0.0;
      if (tau < 0) { v = old[k - 1 + tau]; } else { v = f32(x[u32(tau) * params.x_stride + c]); }
      state[u32(r) * params.channels + c] = act(v);
    }
  }
}
