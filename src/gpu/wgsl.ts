import type { Caps } from './caps.ts';

/**
 * The WGSL that every kernel starts with. Variation by capability lives here and only here.
 * f16 data is always stored as packed u32 pairs and unpacked with unpack2x16float: that works on every
 * adapter, and naga (Deno) miscompiles bitcast<vec2<f16>>(u32), so the f16 feature only adds f16 types.
 */
export function prelude(caps: Caps): string {
  return `${caps.f16 ? 'enable f16;\n' : ''}
struct W8 { lo: vec4<f32>, hi: vec4<f32> }
fn unpack_h8(v: vec4<u32>) -> W8 {
  return W8(vec4<f32>(unpack2x16float(v.x), unpack2x16float(v.y)), vec4<f32>(unpack2x16float(v.z), unpack2x16float(v.w)));
}
fn dot8(a: W8, b: W8) -> f32 { return dot(a.lo, b.lo) + dot(a.hi, b.hi); }
fn sigmoid(x: f32) -> f32 { return 1.0 / (1.0 + exp(-x)); }
fn silu(x: f32) -> f32 { return x * sigmoid(x); }
// torch.nn.functional.softplus(beta=1, threshold=20)
fn softplus(x: f32) -> f32 { return select(log(1.0 + exp(x)), x, x > 20.0); }
// Workgroups are laid out 2-D when a dimension would pass maxComputeWorkgroupsPerDimension.
fn flat_id(wg: vec3<u32>, nwg: vec3<u32>) -> u32 { return wg.x + wg.y * nwg.x; }
`;
}
