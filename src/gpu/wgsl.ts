import type { ActivationType, Caps } from './caps.ts';
import { CapabilityError } from '../errors.ts';

/**
 * The WGSL that every kernel starts with. Variation by capability lives here and only here.
 * f16 weights are always stored as packed u32 pairs and unpacked with unpack2x16float: that works on every
 * adapter, and naga (Deno) miscompiles bitcast<vec2<f16>>(u32), so the f16 feature only adds f16 types.
 * Activations are `array<act>`: kernels load them with f32(..) and store act(..), so one source serves both
 * activation types (the conversions vanish when act is f32).
 */
export function prelude(caps: Caps, activations: ActivationType = 'f32'): string {
  if (activations === 'f16' && !caps.f16) throw new CapabilityError('f16 activations need shader-f16', 'shader-f16');
  return `${caps.f16 ? 'enable f16;\n' : ''}alias act = ${activations};
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

/**
 * WGSL for a tree reduction over the workgroup (the override WG, a power of two): `fn <name>(v, li) -> T`
 * combines every invocation's `v` with `combine` (the body of `fn(a: T, b: T) -> T`) and returns the result to
 * all of them. With `lanes`, each run of `lanes` consecutive invocations (a power of two dividing WG) is reduced
 * on its own and gets its own result. It holds barriers, so the whole workgroup must call it in uniform control
 * flow; it ends with one, so a caller may call it again at once. Uses WG values of `<name>_tree` in workgroup memory.
 */
export function workgroupReduce(name: string, type: string, combine: string, lanes?: string): string {
  const lane = lanes ? `li % ${lanes}` : 'li';
  const first = lanes ? 'li - lane' : '0u';
  return `var<workgroup> ${name}_tree: array<${type}, WG>;
fn ${name}_combine(a: ${type}, b: ${type}) -> ${type} { ${combine} }
fn ${name}(v: ${type}, li: u32) -> ${type} {
  let lane = ${lane};
  ${name}_tree[li] = v;
  workgroupBarrier();
  for (var s = ${lanes ?? 'WG'} / 2u; s > 0u; s >>= 1u) {
    if (lane < s) { ${name}_tree[li] = ${name}_combine(${name}_tree[li], ${name}_tree[li + s]); }
    workgroupBarrier();
  }
  let r = ${name}_tree[${first}];
  workgroupBarrier();
  return r;
}`;
}

/** `workgroup_sum(v: f32, li: u32) -> f32`: see workgroupReduce. */
export const WORKGROUP_SUM = workgroupReduce('workgroup_sum', 'f32', 'return a + b;');

/**
 * `workgroup_best(v: Ranked, li: u32) -> Ranked`: the largest value, the lowest index among equal ones (argmax,
 * top-k). `ranks_before` is that order; an entry without an index (NONE) ranks after every other, so a NaN
 * value still yields an index when one exists.
 */
export const WORKGROUP_BEST = `const NONE = 0xffffffffu;
struct Ranked { v: f32, i: u32 }
fn ranks_before(a: f32, ia: u32, b: f32, ib: u32) -> bool {
  return ia != NONE && (ib == NONE || a > b || (a == b && ia < ib));
}
${workgroupReduce('workgroup_best', 'Ranked', 'if (ranks_before(b.v, b.i, a.v, a.i)) { return b; } return a;')}`;
