// attention: causal GQA softmax attention over the KV cache, times the sigmoid output gate
//   (Qwen3_5Attention: eager_attention_forward with scaling = D^-0.5 and softmax in f32, then o * sigmoid(gate)).
//   out[t, h*D + d] = (Σ_{p ≤ pos+t} softmax_p(q[t,h]·K[g,p] * scale) V[g,p,d]) * sigmoid(gate[t,h,d])
//   g = h / group (group = nq/nkv), gate[t,h,d] = proj[t*proj_stride + h*2*D + D + d]; pos + t = token_pos(t): step.pos + t for
//   the tokens of one sequence, or (rows: continuous batching) positions[t], token t's own sequence, whose cache is row t of
//   k_cache, v_cache [rows, nkv, capacity, D] (cache_keys0(t) = t * nkv * capacity; a SKIPPED_ROW row reads key 0)
//   q: [T, nq, D] · k_cache, v_cache: [nkv, capacity, D] · out: [T, nq*D] (all act, read as vec4; math in f32)
//   proj: [T, proj_stride] act · part: f32 scratch of the split stages (layout below)
//   A row is (t, h), row = t*nq + h. Its keys [0, min(pos+t+1, capacity)) are cut into `splits` chunks of
//   C = round_up(max(ceil(keys/splits), min_chunk), KB) keys; a chunk is read in blocks of KB keys with an
//   online (running max) softmax. Per block: KB keys x LANES lanes form the dot products (vec4 loads, lanes of a
//   key read adjacent vec4s), then each invocation updates the output vec4s it owns (c = li + i*WG).
//   STAGE 0 (single): grid rows (splits = 1); writes out directly.
//   STAGE 1 (partial): grid splits*rows (row innermost); writes unnormalised acc to part[(row*S + s)*D/4 + c]
//                      and (m, l) to part[rows*S*D/4 + row*S + s].xy; splits past the row's keys write nothing.
//   STAGE 2 (merge):   grid rows; out = Σ_s e^(m_s - M) acc_s / Σ_s e^(m_s - M) l_s over the splits used, times the gate.
//   preconditions: D % 4 == 0, D/4 <= 4*WG, WG % KB == 0, KB % 8 == 0, WG a power of two; every row has >= 1 key (token 0
//   of the call sits at pos < capacity).
override WG: u32 = 64u;
override KB: u32 = 16u;
override HD: u32 = 256u;
override STAGE: u32 = 0u;
// Output vec4s per invocation: ceil(HD / 4 / WG) <= 4.
override NACC: u32 = 1u;
const NEG = -1.0e30;

var<workgroup> q_s: array<vec4<f32>, 256>;
var<workgroup> red: array<f32, WG>;
var<workgroup> score: array<f32, KB>;
var<workgroup> prob: array<f32, KB>;

fn write_out(t: u32, h: u32, c: u32, o: vec4<f32>) {
  let gbase = t * params.proj_stride + h * 2u * HD + HD + 4u * c;
  let gate = vec4<f32>(f32(proj[gbase]), f32(proj[gbase + 1u]), f32(proj[gbase + 2u]), f32(proj[gbase + 3u]));
  out[(t * params.nq + h) * (HD / 4u) + c] = vec4<act>(o / (1.0 + exp(-gate)));
}

// The K and V loops issue eight loads before using any (two kdot4 calls; eight V rows): on NVIDIA (Vulkan) the
// loops were not unrolled by the driver, and one load per step cost a memory latency each (3x slower).
// Lanes past the head (when 4 * LANES does not divide D/4) read a clamped index and add 0.
fn kdot4(kbase: u32, c: u32, stride: u32) -> f32 {
  let HD4 = HD / 4u;
  let c1 = c + stride;
  let c2 = c1 + stride;
  let c3 = c2 + stride;
  let k0 = vec4<f32>(k_cache[kbase + min(c, HD4 - 1u)]);
  let k1 = vec4<f32>(k_cache[kbase + min(c1, HD4 - 1u)]);
  let k2 = vec4<f32>(k_cache[kbase + min(c2, HD4 - 1u)]);
  let k3 = vec4<f32>(k_cache[kbase + min(c3, HD4 - 1u)]);
  return select(0.0, dot(q_s[min(c, HD4 - 1u)], k0), c < HD4) + select(0.0, dot(q_s[min(c1, HD4 - 1u)], k1), c1 < HD4)
       + select(0.0, dot(q_s[min(c2, HD4 - 1u)], k2), c2 < HD4) + select(0.0, dot(q_s[min(c3, HD4 - 1u)], k3), c3 < HD4);
}

// Keys of a row and the chunk length of its splits: shared by the partial and merge stages.
fn row_keys(row: u32) -> u32 { return min(token_pos(row / params.nq) + 1u, params.capacity); }
fn chunk_len(keys: u32) -> u32 {
  let per = max((keys + params.splits - 1u) / params.splits, params.min_chunk);
  return (per + KB - 1u) / KB * KB;
}

fn attend(row: u32, s: u32, li: u32) {
  let HD4 = HD / 4u;
  let LANES = WG / KB;
  let NK = (HD4 + LANES - 1u) / LANES;
  let t = row / params.nq;
  let h = row % params.nq;
  let keys = row_keys(row);
  let chunk = chunk_len(keys);
  let k0 = s * chunk;
  // Splits past the last key write nothing: the merge only reads ceil(keys / chunk) of them.
  if (k0 >= keys) { return; }
  let k1 = min(k0 + chunk, keys);

  let qbase = row * HD4;
  for (var c = li; c < HD4; c += WG) { q_s[c] = vec4<f32>(q[qbase + c]) * params.scale; }
  workgroupBarrier();

  var m = NEG;
  var l = 0.0;
  var acc: array<vec4<f32>, 4>;
  let kv0 = cache_keys0(t) + (h / params.group) * params.capacity;
  let key_of = li / LANES;
  let lane = li % LANES;
  for (var kb = k0; kb < k1; kb += KB) {
    // Keys past k1 load the last valid row (always in bounds, never NaN) and are masked from the softmax.
    let kbase = (kv0 + min(kb + key_of, k1 - 1u)) * HD4;
    var part_dot = 0.0;
    for (var k = 0u; k < NK; k += 8u) {
      part_dot += kdot4(kbase, lane + k * LANES, LANES) + kdot4(kbase, lane + (k + 4u) * LANES, LANES);
    }
    red[li] = part_dot;
    workgroupBarrier();
    if (li < KB) {
      var sc = NEG;
      if (kb + li < k1) {
        sc = 0.0;
        for (var j = 0u; j < LANES; j++) { sc += red[li * LANES + j]; }
      }
      score[li] = sc;
    }
    workgroupBarrier();
    var mb = NEG;
    for (var b = 0u; b < KB; b++) { mb = max(mb, score[b]); }
    let mn = max(m, mb);
    if (li < KB) { prob[li] = exp(score[li] - mn); }
    workgroupBarrier();
    let corr = exp(m - mn);
    m = mn;
    l *= corr;
    for (var i = 0u; i < NACC; i++) { acc[i] *= corr; }
    // Eight keys per step: eight V loads in flight per invocation.
    let last = vec4<u32>(k1 - 1u);
    for (var b = 0u; b < KB; b += 8u) {
      let p0 = vec4<f32>(prob[b], prob[b + 1u], prob[b + 2u], prob[b + 3u]);
      let p1 = vec4<f32>(prob[b + 4u], prob[b + 5u], prob[b + 6u], prob[b + 7u]);
      l += dot(p0 + p1, vec4<f32>(1.0));
      let r0 = (vec4<u32>(kv0) + min(vec4<u32>(kb + b) + vec4<u32>(0u, 1u, 2u, 3u), last)) * HD4;
      let r1 = (vec4<u32>(kv0) + min(vec4<u32>(kb + b) + vec4<u32>(4u, 5u, 6u, 7u), last)) * HD4;
      for (var i = 0u; i < NACC; i++) {
        let c = li + i * WG;
        if (HD4 % WG == 0u || c < HD4) {
          let v0 = vec4<f32>(v_cache[r0.x + c]);
          let v1 = vec4<f32>(v_cache[r0.y + c]);
          let v2 = vec4<f32>(v_cache[r0.z + c]);
          let v3 = vec4<f32>(v_cache[r0.w + c]);
          let v4 = vec4<f32>(v_cache[r1.x + c]);
          let v5 = vec4<f32>(v_cache[r1.y + c]);
          let v6 = vec4<f32>(v_cache[r1.z + c]);
          let v7 = vec4<f32>(v_cache[r1.w + c]);
          acc[i] += p0.x * v0 + p0.y * v1 + p0.z * v2 + p0.w * v3 + p1.x * v4 + p1.y * v5 + p1.z * v6 + p1.w * v7;
        }
      }
    }
  }

  for (var i = 0u; i < NACC; i++) {
    let c = li + i * WG;
    if (c < HD4) {
      if (STAGE == 0u) { write_out(t, h, c, acc[i] / l); }
      else { part[(row * params.splits + s) * HD4 + c] = acc[i]; }
    }
  }
  if (STAGE == 1u && li == 0u) {
    part[params.tokens * params.nq * params.splits * HD4 + row * params.splits + s] = vec4<f32>(m, l, 0.0, 0.0);
  }
}

fn merge(row: u32, li: u32) {
  let HD4 = HD / 4u;
  let S = params.splits;
  let keys = row_keys(row);
  let chunk = chunk_len(keys);
  let used = (keys + chunk - 1u) / chunk;
  let mlbase = params.tokens * params.nq * S * HD4 + row * S;
  var mx = NEG;
  for (var s = 0u; s < used; s++) { mx = max(mx, part[mlbase + s].x); }
  var den = 0.0;
  for (var s = 0u; s < used; s++) { let ml = part[mlbase + s]; den += exp(ml.x - mx) * ml.y; }
  for (var c = li; c < HD4; c += WG) {
    var o = vec4<f32>(0.0);
    let base = row * S * HD4 + c;
    // Four splits per step, so that four loads are in flight at once.
    var s = 0u;
    for (; s + 4u <= used; s += 4u) {
      let a0 = part[base + s * HD4];
      let a1 = part[base + (s + 1u) * HD4];
      let a2 = part[base + (s + 2u) * HD4];
      let a3 = part[base + (s + 3u) * HD4];
      o += exp(part[mlbase + s].x - mx) * a0 + exp(part[mlbase + s + 1u].x - mx) * a1
         + exp(part[mlbase + s + 2u].x - mx) * a2 + exp(part[mlbase + s + 3u].x - mx) * a3;
    }
    for (; s < used; s++) { o += exp(part[mlbase + s].x - mx) * part[base + s * HD4]; }
    write_out(row / params.nq, row % params.nq, c, o / den);
  }
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
  let id = flat_id(wg, nwg);
  let rows = params.tokens * params.nq;
  if (STAGE == 2u) {
    if (id < rows) { merge(id, li); }
    return;
  }
  // Split-major order: workgroups in flight together read the same key range for every head of a kv group,
  // so a group's q heads share K/V through the L2 cache.
  if (id >= rows * params.splits) { return; }
  attend(id % rows, id / rows, li);
}
