// quantize_q4: raw checkpoint rows (bf16, f16 or f32, little-endian) -> the q4 blocks of a GpuTensor part (the
//   loader's path for q4 weights). The format and the quantiser are src/numeric/q4.ts, which this repeats bit for
//   bit: per group of 32, x clamped to ±MAX_IN, m = max |x|; candidate f16 scales m/7, m/7.5, m/8, m/8.5 and
//   REFITS least-squares refits of the best; nearest levels q in [-8, 7]; least Σ (x - q·scale)² wins (the first on
//   a tie). f16 rounding is exact (neighbour check on exact distances), q and the errors are integers on x fixed
//   to a grid of 2^(e - FIX) (2^e <= m < 2^(e+1)): nothing depends on an adapter's division or rounding.
//   src: u32 words holding rows x cols source elements, row-major from element 0
//   dst: u32 words of one q4 part: items of item_words = item_stride * 9 / 64 words back to back, each its
//        item_stride / 8 nibble words, then item_stride / 64 scale words. Source row r is the LOGICAL elements
//        L = dst_off + r * dst_row_stride + [0, row_stride) of the part (columns past cols are 0): item
//        L / item_stride, element L % item_stride of it. Words of other rows are untouched.
//   grid: one invocation per pair of groups (64 elements: 8 nibble words and 1 scale word, so no two invocations
//     share a word), rows x row_stride / 64 of them, WG per workgroup, flat_id over a 2-D grid
//   preconditions (quantize.ts): row_stride a multiple of 64, >= cols; item_stride, dst_off and dst_row_stride
//     multiples of row_stride (a row never leaves its item); src and dst distinct.
override WG: u32 = 64u;
const MAX_IN = 458528.0;   // 65504 * 7: every candidate scale is a finite f16
const MAX_F16 = 0x7bffu;
const FIX = 16i;
const REFITS = 2u;
const SATURATED = 0xffffffffu;
const MAX_FIXED_SCALE = 524288i; // 2^19: keeps every integer product below 2^31

var<private> gv: array<f32, 32>;   // the group's values
var<private> gx: array<i32, 32>;   // ... in fixed point
var<private> cand: array<u32, 4>;  // nibble words of the candidate being tried
var<private> best: array<u32, 4>;  // ... of the best so far
var<private> best_h = 0u;
var<private> best_err = 0u;
var<private> have = false;

fn f16_value(h: u32) -> f32 { return bitcast<f32>(f16_bits_to_f32_bits(h)); }

// f16 bits nearest to t / d (t >= 0; d · f16 exact in f32), ties to even, at most 65504. The quotient is only a
// first guess (WGSL division is not correctly rounded); the exact distances of its neighbours decide.
fn f16_nearest(t: f32, d: f32) -> u32 {
  let h0 = min(f32_bits_to_f16_bits(bitcast<u32>(t / d)), MAX_F16);
  var pick = 0u;
  var pick_dist = 0.0;
  var found = false;
  for (var h = max(h0, 1u) - 1u; h <= min(h0 + 1u, MAX_F16); h++) {
    let dist = abs(t - d * f16_value(h));
    if (!found || dist < pick_dist || (dist == pick_dist && (h & 1u) == 0u)) {
      pick = h;
      pick_dist = dist;
      found = true;
    }
  }
  return pick;
}

// The scale h in fixed-point units, or 0 when that is not an integer in [1, MAX_FIXED_SCALE).
fn fixed_scale(h: u32, e: i32) -> i32 {
  let s = ldexp(f16_value(h), FIX - e);
  if (s < 1.0 || s >= f32(MAX_FIXED_SCALE) || s != floor(s)) { return 0i; }
  return i32(s);
}

// Nearest levels of gx for the fixed-point scale s into cand; returns Σ (X - q·s)², saturated.
fn assign(s: i32) -> u32 {
  var err = 0u;
  for (var w = 0u; w < 4u; w++) {
    var word = 0u;
    for (var k = 0u; k < 8u; k++) {
      let x = gx[8u * w + k];
      let num = 2i * x + 17i * s;  // n = floor((x / s + 0.5) + 8)
      var n = 0i;
      if (num >= 0i) { n = min(15i, num / (2i * s)); }
      word |= u32(n) << (4u * k);
      let d = abs(x - (n - 8i) * s);
      if (d >= 65536i) {
        err = SATURATED;
      } else {
        let sum = err + u32(d) * u32(d);
        err = select(sum, SATURATED, sum < err); // wrapped
      }
    }
    cand[w] = word;
  }
  return err;
}

fn consider(h: u32, e: i32) {
  if (h == 0u) { return; }
  let s = fixed_scale(h, e);
  if (s == 0i) { return; }
  let err = assign(s);
  if (!have || err < best_err) {
    have = true;
    best_err = err;
    best_h = h;
    best = cand;
  }
}

// f16 bits nearest to the least-squares scale Σ q·X / Σ q² of the best nibbles so far, or 0.
fn refit(e: i32) -> u32 {
  var num = 0i;
  var den = 0i;
  for (var i = 0u; i < 32u; i++) {
    let q = i32((best[i / 8u] >> (4u * (i % 8u))) & 15u) - 8i;
    num += q * gx[i];
    den += q * q;
  }
  if (num <= 0i || den == 0i) { return 0u; }
  let h0 = min(f32_bits_to_f16_bits(bitcast<u32>(ldexp(f32(num) / f32(den), e - FIX))), MAX_F16);
  var pick = 0u;
  var pick_dist = 0i;
  for (var h = max(h0, 2u) - 1u; h <= min(h0 + 1u, MAX_F16); h++) {
    let s = fixed_scale(h, e);
    if (s == 0i) { continue; }
    let dist = abs(num - den * s);
    if (pick == 0u || dist < pick_dist || (dist == pick_dist && (h & 1u) == 0u)) {
      pick = h;
      pick_dist = dist;
    }
  }
  return pick;
}

// Source element (row, col) as f32, clamped; 0 in the row padding.
fn value(row: u32, col: u32) -> f32 {
  if (col >= params.cols) { return 0.0; }
  return clamp(bitcast<f32>(src_f32_bits(row * params.cols + col)), -MAX_IN, MAX_IN);
}

// Quantises columns col0 .. col0 + 31 of source row `row` into best; returns the f16 scale bits.
fn quantize_group(row: u32, col0: u32) -> u32 {
  var m = 0.0;
  for (var i = 0u; i < 32u; i++) {
    let x = value(row, col0 + i);
    gv[i] = x;
    m = max(m, abs(x));
  }
  let base = f16_nearest(m, 7.0);
  if (base == 0u || !(m > 0.0)) {
    best = array<u32, 4>(0x88888888u, 0x88888888u, 0x88888888u, 0x88888888u);
    return 0u;
  }
  let e = i32((bitcast<u32>(m) >> 23u) & 0xffu) - 127i;
  for (var i = 0u; i < 32u; i++) { gx[i] = i32(round(ldexp(gv[i], FIX - e))); }
  have = false;
  consider(base, e);
  consider(f16_nearest(m * 2.0, 15.0), e);
  consider(f16_nearest(m, 8.0), e);
  consider(f16_nearest(m * 2.0, 17.0), e);
  for (var r = 0u; r < REFITS; r++) { consider(refit(e), e); }
  return best_h;
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
  let p = flat_id(wg, nwg) * WG + li;
  if (p >= params.pairs) { return; }
  let row = p / params.row_pairs;
  let pr = p % params.row_pairs;
  let l = params.dst_off + row * params.dst_row_stride + 64u * pr; // logical element
  let item = l / params.item_stride;
  let r = l - item * params.item_stride;
  let block = item * params.item_words;
  var scales = 0u;
  for (var g = 0u; g < 2u; g++) {
    let h = quantize_group(row, 64u * pr + 32u * g);
    for (var k = 0u; k < 4u; k++) { dst[block + r / 8u + 4u * g + k] = best[k]; }
    scales |= h << (16u * g);
  }
  dst[block + params.item_stride / 8u + r / 64u] = scales;
}
