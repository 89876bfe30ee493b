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
  return `${caps.f16 ? 'enable f16;\n' : ''}${caps.subgroups ? 'enable subgroups;\n' : ''}alias act = ${activations};
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
 * WGSL for a tree reduction over the workgroup (the override WG, a power of two): `fn <name>(v, l: Lanes) -> T`
 * combines every invocation's `v` with `combine` (the body of `fn(a: T, b: T) -> T`) and returns the result to
 * all of them. It holds barriers, so the whole workgroup must call it in uniform control flow; it ends with one,
 * so a caller may call it again at once. Uses WG values of `<name>_tree` in workgroup memory. The kernel declares
 * `Lanes` (see `lanes`).
 */
export function workgroupReduce(name: string, type: string, combine: string): string {
  return `var<workgroup> ${name}_tree: array<${type}, WG>;
fn ${name}_combine(a: ${type}, b: ${type}) -> ${type} { ${combine} }
fn ${name}(v: ${type}, l: Lanes) -> ${type} {
  let li = l.li;
  ${name}_tree[li] = v;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s >>= 1u) {
    if (li < s) { ${name}_tree[li] = ${name}_combine(${name}_tree[li], ${name}_tree[li + s]); }
    workgroupBarrier();
  }
  let r = ${name}_tree[0];
  workgroupBarrier();
  return r;
}`;
}

/** WebGPU's smallest subgroup: a workgroup of WG invocations holds at most max(1, WG / 4) subgroups. */
export const MIN_SUBGROUP_SIZE = 4;

/**
 * `fn <name>(v: T, l: Lanes) -> T`: Σ v over the workgroup, returned to every invocation, for a numeric scalar or
 * vector T. With subgroups each subgroup adds in registers and the subgroups' sums meet in one round through
 * workgroup memory (two barriers, where the tree takes log2(WG) + 2); without, workgroupReduce. The same
 * contract: uniform control flow, ends with a barrier.
 */
export function workgroupSum(name: string, type: string, subgroups: boolean): string {
  if (!subgroups) return workgroupReduce(name, type, 'return a + b;');
  return `var<workgroup> ${name}_parts: array<${type}, max(1u, WG / ${MIN_SUBGROUP_SIZE}u)>;
fn ${name}(v: ${type}, l: Lanes) -> ${type} {
  let s = subgroupAdd(v);
  if (subgroup_lane(l) == 0u) { ${name}_parts[subgroup_index(l)] = s; }
  workgroupBarrier();
  var r = ${name}_parts[0];
  for (var i = 1u; i < subgroup_count(l); i++) { r += ${name}_parts[i]; }
  workgroupBarrier();
  return r;
}`;
}

/** `Lanes` and `workgroup_sum(v: f32, l: Lanes) -> f32` (workgroupSum): all that the norm kernels declare. */
export const workgroupSumF32 = (caps: Caps) => `${lanes(caps.subgroups)}\n${workgroupSum('workgroup_sum', 'f32', caps.subgroups)}`;

/**
 * `workgroup_best(v: Ranked, l: Lanes) -> Ranked`: the largest value, the lowest index among equal ones (argmax,
 * top-k). `ranks_before` is that order; an entry without an index (NONE) ranks after every other, so a NaN
 * value still yields an index when one exists.
 */
export const WORKGROUP_BEST = `const NONE = 0xffffffffu;
struct Ranked { v: f32, i: u32 }
fn ranks_before(a: f32, ia: u32, b: f32, ib: u32) -> bool {
  return ia != NONE && (ib == NONE || a > b || (a == b && ia < ib));
}
${workgroupReduce('workgroup_best', 'Ranked', 'if (ranks_before(b.v, b.i, a.v, a.i)) { return b; } return a;')}`;

/**
 * `struct Lanes`, an entry point's parameter for its invocation's place in the workgroup: `li` (the local invocation
 * index) and, with subgroups, the subgroup it is in. `subgroup_lane`, `subgroup_index` and `subgroup_count` read them,
 * and `subgroup_sum` / `subgroup_sum2` / `subgroup_sum4` add over the subgroup (in uniform control flow). Without
 * subgroups every invocation is lane 0 of a subgroup of its own, so one kernel source serves both: subgroup builtins
 * may not appear at all, even in dead code, where the extension is not enabled.
 */
export function lanes(subgroups: boolean): string {
  if (!subgroups) {
    return `struct Lanes { @builtin(local_invocation_index) li: u32 }
fn subgroup_lane(l: Lanes) -> u32 { return 0u; }
fn subgroup_index(l: Lanes) -> u32 { return l.li; }
fn subgroup_count(l: Lanes) -> u32 { return WG; }
fn subgroup_sum(v: f32) -> f32 { return v; }
fn subgroup_sum2(v: vec2<f32>) -> vec2<f32> { return v; }
fn subgroup_sum4(v: vec4<f32>) -> vec4<f32> { return v; }`;
  }
  return `struct Lanes {
  @builtin(local_invocation_index) li: u32,
  @builtin(subgroup_invocation_id) lane: u32,
  @builtin(subgroup_id) index: u32,
  @builtin(num_subgroups) count: u32,
}
fn subgroup_lane(l: Lanes) -> u32 { return l.lane; }
fn subgroup_index(l: Lanes) -> u32 { return l.index; }
fn subgroup_count(l: Lanes) -> u32 { return l.count; }
fn subgroup_sum(v: f32) -> f32 { return subgroupAdd(v); }
fn subgroup_sum2(v: vec2<f32>) -> vec2<f32> { return subgroupAdd(v); }
fn subgroup_sum4(v: vec4<f32>) -> vec4<f32> { return subgroupAdd(v); }`;
}
