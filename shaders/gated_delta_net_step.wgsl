// gated_delta_net_step: the recurrent Gated DeltaNet core, token after token (HF torch_recurrent_gated_delta_rule; FLA
//   fused_recurrent_gated_delta_rule). Per token t and value head h (key head j = h / ratio):
//     beta = sigmoid(b[t,h]);  g = -exp(A_log[h]) * softplus(a[t,h] + dt_bias[h])
//     S = e^g S;  u = beta (v - S^T k);  S += k u^T;  o = S^T q            (o reads the updated state)
//   Written per column c of S with a = Σ_d S[d,c] k[d], b = Σ_d S[d,c] q[d] over the state before the token, so the
//   state is read once: u[c] = beta (v[c] - e^g a);  o[c] = e^g b + u[c] (k·q);  S[d,c] = e^g S[d,c] + k[d] u[c].
//   qkv:   [T, qkv_stride] act; q of key head j at t*qkv_stride + j*DK, k at + nk*DK + j*DK, v of value head h at
//          + 2*nk*DK + h*dv (q, k already l2-normed, q scaled by DK^-0.5)
//   ba:    [T, ba_stride] act; b[t,h] at t*ba_stride + b_off + h, a[t,h] at t*ba_stride + a_off + h
//   decay_params: [2, nv] f32 (A_log, then dt_bias) · state: [nv, DK, dv] f32, read and updated · out: [T, nv, dv] act
//   grid: nv * ceil(dv / DVT) workgroups (flat_id) of DVT × KSPLIT invocations; workgroup (h, tile) owns columns
//   tile*DVT + x of head h; invocation (x, y) keeps rows d = y + KSPLIT*r (r < RPT) of its column in registers for all
//   T tokens (the state is read and written once per call), and the KSPLIT partial sums of a column meet in `red`.
//   DK and KSPLIT are constants of the variant (they size the register array).
//   preconditions: nv % nk == 0, ratio = nv / nk; tokens >= 1; DK <= DVT * KSPLIT; state and out distinct from the inputs.
const RPT: u32 = (DK + KSPLIT - 1u) / KSPLIT;
override DVT: u32 = 32u;
var<workgroup> qk: array<f32, 2u * DK>;       // q then k of the current token's key head
var<workgroup> red: array<vec3<f32>, DVT * KSPLIT>;

@compute @workgroup_size(DVT, KSPLIT)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_id) lid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let tiles = (params.dv + DVT - 1u) / DVT;
  let id = flat_id(wg, nwg);
  if (id >= params.nv * tiles) { return; }
  let h = id / tiles;
  let col = (id % tiles) * DVT + lid.x;
  let live = col < params.dv;
  let j = h / params.ratio;
  let sbase = h * DK * params.dv + col;

  var s: array<f32, RPT>;
  for (var r = 0u; r < RPT; r++) {
    let d = lid.y + KSPLIT * r;
    if (live && d < DK) { s[r] = state[sbase + d * params.dv]; }
  }
  let neg_a = -exp(decay_params[h]);
  let dtb = decay_params[params.nv + h];
  let qoff = j * DK;
  let koff = params.nk * DK + j * DK;
  let voff = 2u * params.nk * DK + h * params.dv + col;

  // Token t+1's inputs are loaded into registers while token t is computed, hiding the global-memory latency of the
  // token loop (prefill through this kernel). Invocation li < DK carries q[li] and k[li].
  var pq = 0.0;
  var pk = 0.0;
  var pv = 0.0;
  var pb = 0.0;
  var pa = 0.0;
  {
    if (li < DK) { pq = f32(qkv[qoff + li]); pk = f32(qkv[koff + li]); }
    if (live) { pv = f32(qkv[voff]); }
    pb = f32(ba[params.b_off + h]);
    pa = f32(ba[params.a_off + h]);
  }
  for (var t = 0u; t < params.tokens; t++) {
    if (li < DK) {
      qk[li] = pq;
      qk[DK + li] = pk;
    }
    let beta = sigmoid(pb);
    let decay = exp(neg_a * softplus(pa + dtb));
    let v = pv;
    if (t + 1u < params.tokens) {
      let row = (t + 1u) * params.qkv_stride;
      if (li < DK) { pq = f32(qkv[row + qoff + li]); pk = f32(qkv[row + koff + li]); }
      if (live) { pv = f32(qkv[row + voff]); }
      let gb = (t + 1u) * params.ba_stride;
      pb = f32(ba[gb + params.b_off + h]);
      pa = f32(ba[gb + params.a_off + h]);
    }
    workgroupBarrier();

    var p = vec3<f32>(0.0);
    for (var r = 0u; r < RPT; r++) {
      let d = lid.y + KSPLIT * r;
      if (d < DK) {
        let kd = qk[DK + d];
        p += vec3<f32>(s[r] * kd, s[r] * qk[d], kd * qk[d]);
      }
    }
    red[li] = p;
    workgroupBarrier();

    var tot = vec3<f32>(0.0);
    for (var m = 0u; m < KSPLIT; m++) { tot += red[lid.x + DVT * m]; }
    let u = beta * (v - decay * tot.x);
    if (live && lid.y == 0u) { out[(t * params.nv + h) * params.dv + col] = act(decay * tot.y + u * tot.z); }
    for (var r = 0u; r < RPT; r++) {
      let d = lid.y + KSPLIT * r;
      if (d < DK) { s[r] = decay * s[r] + qk[DK + d] * u; }
    }
    // qk and red are rewritten by the next token.
    workgroupBarrier();
  }

  for (var r = 0u; r < RPT; r++) {
    let d = lid.y + KSPLIT * r;
    if (live && d < DK) { state[sbase + d * params.dv] = s[r]; }
  }
}
