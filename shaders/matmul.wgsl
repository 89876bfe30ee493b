// matmul: prefill linear layer, Y[t, n] (=|+=) epilogue(Σ_k X[t, k] · W[n, k]) · scale   (nn.Linear, y = x @ W^T;
//   swiglu as Qwen3_5MLP / the Qwen3_5MoeSparseMoeBlock experts: silu(x @ G^T) * (x @ U^T))
//   x: [rows, K] act, row r at x_offset + r * x_stride · y: [rows, N] act or f32 (variant; logits f32), Y[r, n] at y_offset + r * y_stride + col0 + n
//   w (one part of a GpuTensor, rows padded to a multiple of 8; f32, f16 or q4, read through w_load8 by logical index):
//     dense [N, K] or swiglu [I, 2, K] (gate row 0, up row 1): output column n = item n of the part
//     experts [E, N, K] or swiglu [E, 2I, K] (gate rows 0..I-1, up rows I..2I-1): item = expert slot
//   W row of (output column n < ncols of this dispatch, half h) starts at W8 index wbase + n * n_stride8 + h * h_stride8.
//   scales (scaled variants): row r's factor is scales[s_index + (r / s_div) * s_stride + r % s_div]
//     (dense: s_div = 1; grouped: pair p = t * topk + j → [T, topk + 1] row t, column j).
//   grid, dense: flat_id → (token tile, column tile), column tile fastest; tiles of TM tokens × TN columns.
//   grid, grouped (indirect): workgroup_id.x = tile (expertId, start, count, _) of `tiles`, its rows are the pairs
//     order[start .. start + count); workgroup_id.y = column tile. X row of pair p is p / x_div, Y row is p.
//     A tile whose expert's slot is outside [part_first, part_first + part_count) or whose count is 0 does nothing.
//   Invocation (x, y) accumulates tokens 4y .. 4y+3 × columns 4(g·wx + x) .. +3 (wx = TN / 4CG) for its CG column groups g
//   (× NW: gate and up for swiglu), so that one k step reads one vec4 of X and NW·CG vec4s of W from workgroup memory.
//   preconditions: TM % 4 == 0, TN % (4 CG) == 0, BK % 8 == 0; count ≤ TM; x and y are distinct buffers.
//   X is only read for k < K and W only for k < K rounded up to 8 (its zero padding past K is never relied on).
const INVALID = 0xffffffffu;
const NG = NW * CG;
override TM: u32 = 64u;
override TN: u32 = 64u;
override BK: u32 = 16u;

// Transposed ([k][token], [k][weight row]) so that the inner loop reads vec4s along the invocation grid.
var<workgroup> xs: array<vec4<f32>, TM / 4u * BK>;
var<workgroup> ws: array<vec4<f32>, NW * TN / 4u * BK>;
// Row (token or pair) of each tile position, INVALID past the tile's count.
var<workgroup> rows: array<u32, TM>;

struct Tile { live: bool, start: u32, count: u32, col: u32, wbase: u32 }

@compute @workgroup_size(TN / (4u * CG), TM / 4u)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_id) lid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let tile = locate(wg, nwg);
  if (!tile.live) { return; }
  let wx = TN / (4u * CG);
  let nt = wx * (TM / 4u);
  let tm4 = TM / 4u;
  let wr4 = NW * TN / 4u;
  let k8s = BK / 8u;
  for (var r = li; r < TM; r += nt) {
    rows[r] = select(INVALID, row_of(tile, r), r < tile.count);
  }
  workgroupBarrier();

  var acc: array<vec4<f32>, 4u * NG>;
  for (var k0 = 0u; k0 < params.k; k0 += BK) {
    // Consecutive invocations read consecutive k of one X row (coalesced).
    for (var e = li; e < TM * BK; e += nt) {
      let r = e / BK;
      let kk = e % BK;
      let row = rows[r];
      var v = 0.0;
      if (row != INVALID && k0 + kk < params.k) { v = f32(x[params.x_offset + (row / params.x_div) * params.x_stride + k0 + kk]); }
      xs[kk * tm4 + r / 4u][r % 4u] = v;
    }
    for (var e = li; e < NW * TN * k8s; e += nt) {
      let wr = e / k8s;
      let j = e % k8s;
      let n = tile.col + wr % TN;
      var v = W8(vec4<f32>(0.0), vec4<f32>(0.0));
      if (n < params.ncols && k0 + j * 8u < params.k) {
        v = w_load8(tile.wbase + n * params.n_stride8 + (wr / TN) * params.h_stride8 + k0 / 8u + j);
      }
      let b = j * 8u * wr4 + wr / 4u;
      let q = wr % 4u;
      ws[b][q] = v.lo.x; ws[b + wr4][q] = v.lo.y; ws[b + 2u * wr4][q] = v.lo.z; ws[b + 3u * wr4][q] = v.lo.w;
      ws[b + 4u * wr4][q] = v.hi.x; ws[b + 5u * wr4][q] = v.hi.y; ws[b + 6u * wr4][q] = v.hi.z; ws[b + 7u * wr4][q] = v.hi.w;
    }
    workgroupBarrier();
    for (var kk = 0u; kk < BK; kk++) {
      let a = xs[kk * tm4 + lid.y];
      var b: array<vec4<f32>, NG>;
      for (var g = 0u; g < NG; g++) { b[g] = ws[kk * wr4 + g * wx + lid.x]; }
      for (var i = 0u; i < 4u; i++) {
        for (var g = 0u; g < NG; g++) { acc[i * NG + g] += a[i] * b[g]; }
      }
    }
    workgroupBarrier();
  }

  for (var i = 0u; i < 4u; i++) {
    let row = rows[lid.y * 4u + i];
    if (row == INVALID) { continue; }
    let s = row_scale(row);
    let yb = params.y_offset + row * params.y_stride + params.col0;
    for (var g = 0u; g < CG; g++) {
      let g4 = acc[i * NG + g];
      let u4 = acc[i * NG + (NW - 1u) * CG + g];
      let n0 = tile.col + (g * wx + lid.x) * 4u;
      for (var c = 0u; c < 4u; c++) {
        if (n0 + c < params.ncols) { emit(yb + n0 + c, finish(g4[c], u4[c]) * s); }
      }
    }
  }
}
