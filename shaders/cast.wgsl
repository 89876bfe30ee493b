// cast: raw checkpoint bytes -> GPU weight storage (the loader runs it for every tensor piece).
//   y = x (or x * scale + bias in f32 when AFFINE; GGUF stores norms as 1 + w) converted from the source
//   dtype (bf16, f16 or f32, little-endian) to the weight dtype (f32, or f16 packed two per u32, lower half
//   = even element). Conversions are done on the bits, so they are exact where the value is representable
//   (bf16 -> f32, f16 -> f32, f32 -> f32 copy, denormals included) and round to nearest even into f16 (as
//   torch's .to(float16) and src/formats/half.ts): no dependence on an adapter's denormal or overflow
//   handling in unpack2x16float / pack2x16float. NaN -> quiet NaN of the same sign; |x| >= 65520 -> inf.
//   src: u32 words holding rows x cols source elements, row-major from element 0
//   dst: u32 words of one GpuTensor part; source row r goes to elements dst_off + r * dst_row_stride
//        + [0, row_stride): columns cols..row_stride-1 are written as 0, elements past row_stride untouched
//   grid: one invocation per destination word of the piece (rows x row_words), WG per workgroup, flat_id
//   preconditions (cast.ts): dst_off, dst_row_stride, row_stride multiples of 8; row_stride >= cols;
//     dst_row_stride >= row_stride; src and dst distinct.
override WG: u32 = 256u;

// f32 bits of an f16 (exact: every f16, subnormals included, is a normal f32 or zero).
fn f16_bits_to_f32_bits(h: u32) -> u32 {
  let sign = (h & 0x8000u) << 16u;
  let exp = (h >> 10u) & 0x1fu;
  let mant = h & 0x3ffu;
  if (exp == 0x1fu) { return sign | 0x7f800000u | (mant << 13u); }
  if (exp != 0u) { return sign | ((exp + 112u) << 23u) | (mant << 13u); }
  if (mant == 0u) { return sign; }
  let shift = countLeadingZeros(mant) - 21u; // brings the leading 1 to bit 10
  return sign | ((113u - shift) << 23u) | (((mant << shift) & 0x3ffu) << 13u);
}

// f16 bits of an f32, round to nearest even (the same steps as f32ToF16Bits in src/formats/half.ts).
fn f32_bits_to_f16_bits(x: u32) -> u32 {
  let sign = (x >> 16u) & 0x8000u;
  let exp = (x >> 23u) & 0xffu;
  let mant = x & 0x7fffffu;
  if (exp == 0xffu) { return sign | 0x7c00u | select(0u, 0x200u, mant != 0u); }
  let e = i32(exp) - 112;
  if (e >= 31) { return sign | 0x7c00u; }
  if (e <= 0) {
    if (e < -10) { return sign; }
    let m = mant | 0x800000u;
    let shift = u32(14 - e);
    let half = 1u << (shift - 1u);
    let rest = m & ((1u << shift) - 1u);
    var r = m >> shift;
    if (rest > half || (rest == half && (r & 1u) == 1u)) { r += 1u; }
    return sign | r;
  }
  var r = (u32(e) << 10u) | (mant >> 13u);
  let rest = mant & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (r & 1u) == 1u)) { r += 1u; }
  return sign | r;
}

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
