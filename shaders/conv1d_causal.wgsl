// conv1d_causal: depthwise causal conv1d over time, no bias, then SiLU (Qwen3_5GatedDeltaNet: `self.conv1d` over
//   `mixed_qkv` padded on the left by the cached conv_state, then F.silu; tap j = K-1 multiplies the current token).
//   y[t,c] = silu(Σ_{j<K} w[c*w_stride + j] * in[t-(K-1)+j, c]),  in[τ<0] = the raw input of position pos+τ from the ring,
//   in[τ≥0] = x[τ*x_stride + c]   (pos: step.pos, the absolute position of token 0)
//   x:     [T, x_stride] act, channel c in column c < C (the qkv columns of the fused projection)
//   w:     [C, w_stride] f32, taps in columns [0, K)
//   state: [K, C] act, a ring: slot p % K holds the raw input of position p (zeros before position 0). Afterwards it
//          holds positions pos+T-(K-1) .. pos+T-1, so calls over consecutive token ranges equal one call over all of
//          them; a decode step that writes only slot pos % K never overwrites what another workgroup still reads
//          (gated_delta_net_decode relies on this).
//   y:     [T, C] act (sums in f32)
//   grid: ceil(C / CH) workgroups (flat_id) of CH × SEG invocations; invocation (c, s) owns channel wg*CH + c and
//   tokens [s*seg_len, (s+1)*seg_len) ∩ [0, T). A channel lives in one workgroup, so its ring slots are read (before
//   the storageBarrier) and rewritten (after it) in the same dispatch without a race.
//   preconditions: 2 <= K <= 8; T >= 1; seg_len = ceil(T / SEG); x, w, state, y distinct buffers.
override CH: u32 = 64u;
override SEG: u32 = 4u;

// Ring slot of relative position tau (> -K) after token 0.
fn ring_slot(tau: i32) -> u32 { return (step.pos + u32(i32(params.k) + tau)) % params.k; }

fn conv_input(tau: i32, c: u32) -> f32 {
  if (tau < 0) { return f32(state[ring_slot(tau) * params.channels + c]); }
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
  if (live) {
    for (var j = 0; j < k; j++) { taps[8 - k + j] = w[c * params.w_stride + u32(j)]; }
    if (t0 < t1) {
      for (var s = 9 - k; s < 8; s++) { win[s] = conv_input(i32(t0) - 8 + s, c); }
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
  // The last K-1 tokens' raw inputs into their slots; slots of earlier positions (T < K-1) stay as they are.
  if (live && lid.y == 0u) {
    for (var r = 0; r < k - 1; r++) {
      let tau = i32(params.tokens) - (k - 1) + r;
      if (tau >= 0) { state[ring_slot(tau) * params.channels + c] = x[u32(tau) * params.x_stride + c]; }
    }
  }
}
