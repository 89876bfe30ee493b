// cast: raw checkpoint bytes -> GPU weight storage (the loader runs it for every tensor piece).
//   y = x (or x * scale + bias in f32 when AFFINE; GGUF stores norms as 1 + w) converted from the source
//   dtype (bf16, f16 or f32, little-endian) to the weight dtype (f32, or f16 packed two per u32, lower half
//   = even element). Conversions are done on the bits, so they are exact where the value is representable
//   (bf16 -> f32, f16 -> f32, f32 -> f32 copy, denormals included) and round to nearest even into f16 (as
//   torch's .to(float16) and src/numeric/half.ts): no dependence on an adapter's denormal or overflow
//   handling in unpack2x16float / pack2x16float. NaN -> quiet NaN of the same sign; |x| >= 65520 -> inf.
//   src: u32 words holding rows x cols source elements, row-major from element 0
//   dst: u32 words of one GpuTensor part; source row r goes to elements dst_off + r * dst_row_stride
//        + [0, row_stride): columns cols..row_stride-1 are written as 0, elements past row_stride untouched
//   grid: one invocation per destination word of the piece (rows x row_words), WG per workgroup, flat_id
//   preconditions (cast.ts): dst_off, dst_row_stride, row_stride multiples of 8; row_stride >= cols;
//     dst_row_stride >= row_stride; src and dst distinct.
override WG: u32 = 256u;

// f32 bits of destination column `col` of piece row `row`: 0 in the row padding.
fn value_bits(row: u32, col: u32) -> u32 {
  if (col >= params.cols) { return 0u; }
  var bits = src_f32_bits(row * params.cols + col);
  if (AFFINE) { bits = bitcast<u32>(bitcast<f32>(bits) * params.scale + params.bias); }
  return bits;
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
  let w = flat_id(wg, nwg) * WG + li;
  if (w >= params.words) { return; }
  let row = w / params.row_words;
  let cw = w % params.row_words;
  let base = params.dst_off + row * params.dst_row_stride; // element index of the row, a multiple of 8
  if (DST_F16) {
    let lo = f32_bits_to_f16_bits(value_bits(row, 2u * cw));
    let hi = f32_bits_to_f16_bits(value_bits(row, 2u * cw + 1u));
    dst[base / 2u + cw] = lo | (hi << 16u);
  } else {
    dst[base + cw] = value_bits(row, cw);
  }
}
