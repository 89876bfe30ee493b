import { type ElementType, elementBytes, elementType, read, uniform, weight, write } from '../gpu/kernel.ts';
import { defineKernel } from './define.ts';
import type { Dispatch, GpuContext } from '../gpu/context.ts';
import type { Caps } from '../gpu/caps.ts';
import { type GpuTensor, type WeightFormat, weightFormat } from '../gpu/tensor.ts';
import { checks } from './checks.ts';
import { grid } from './grid.ts';
import { MIN_SUBGROUP_SIZE, lanes } from '../gpu/wgsl.ts';

export type Epilogue = 'store' | 'add' | 'swiglu';

export interface MatvecArgs {
  w: GpuTensor;
  x: GPUBuffer;
  xOffset?: number; // input vector at x[xOffset ..]; for experts 'sum': row j at xOffset + j * xStride
  xStride?: number; //   (dense over `tokens`: token t at xOffset + t * xStride)
  y: GPUBuffer;
  yOffset?: number; // output element r at y[yOffset + r]; for experts 'each': y[yOffset + j * yStride + r]
  yStride?: number; //   (dense over `tokens`: token t at yOffset + t * yStride)
  /**
   * Dense only: this many tokens, one after another, each its own matvec over the same weights (default 1), a
   * workgroup serving up to 4 of them with one load of each weight (tuning.xr). Decode rows (a batch's, a
   * verification's) run this way, and CPU adapters prefill this way: at several times the rate their tiled matmul
   * reaches.
   */
  tokens?: number;
  /** Element types of x and y: activations (default) or f32 (the residual stream, its norm, logits). */
  input?: ElementType;
  output?: ElementType;
  epilogue: Epilogue;
  /**
   * Dense: result *= scales.buffer[scales.index] (token t: [index + t * stride]). Experts 'each': result for j *=
   * scales.buffer[scales.index + j].
   */
  scales?: { buffer: GPUBuffer; index: number; stride?: number };
  /** MoE decode. ids[idsOffset + j] (u32) is the j-th chosen expert, j < topk; slots[expertId] its slot in w.
   *  'each': one output vector per j (grid over j), input shared (x at xOffset).
   *  'sum': y[r] (+)= Σ_j W_slot(j)[r] · x_j (input row j at xOffset + j*xStride); only with epilogue 'add' (parts accumulate). */
  experts?: { ids: GPUBuffer; idsOffset?: number; slots: GPUBuffer; topk: number; mode: 'each' | 'sum' };
  /**
   * RMS norm of x first (Qwen3_5RMSNorm: x · rsqrt(mean(x²) + eps) · (1 + w), `weight` the f32 [K] w, as
   * rms_norm takes it): y = W norm(x). Each workgroup computes mean(x²) from the x it holds anyway, so the norm costs no
   * dispatch of its own. Not with experts 'sum' (its x is the experts' activations, never normed).
   */
  norm?: { weight: GPUBuffer; eps: number };
  /** Workgroup shape; default: matvecTuning for the adapter and shape. */
  tuning?: MatvecTuning;
}

/**
 * `wg` invocations in sets of `tpr` lanes (powers of two, tpr ≤ wg); a set shares each of its `rps` rows, every
 * lane holding `xu` units of x (8 elements, a q4 group of 32) in registers per K tile of tpr · xu units, and
 * walking its rows `ru` at a time; with `stage`, each tile of x passes through workgroup memory (see the shader).
 * A workgroup serves `xr` tokens (dense over several tokens), loading each weight once for all of them. Neither xr
 * nor, where rows meet in workgroup memory rather than subgroups, xu changes a token's arithmetic; the other fields do.
 */
export interface MatvecTuning {
  wg: number;
  tpr: number;
  rps: number;
  xu: number;
  stage: boolean;
  ru: number;
  xr: number;
}

export type ExpertMode = 'none' | 'each' | 'sum';

export interface MatvecVariant {
  format: WeightFormat;
  epilogue: Epilogue;
  experts: ExpertMode;
  /** A scales binding is present. */
  scaled: boolean;
  /** x is RMS-normed first (a norm_w binding is present). */
  norm: boolean;
  wg: number;
  tpr: number;
  xu: number;
  stage: boolean;
  ru: number;
  /** Tokens per workgroup (MatvecTuning.xr). */
  xr: number;
  /** Rows' partial sums meet through subgroups (one set per workgroup on a device with them). */
  subgroups: boolean;
  /** Rows per set that the partial sums have room for (the workgroup array's size). */
  rpsMax: number;
  /** WGSL element types of x and y. */
  x: ElementType;
  y: ElementType;
}

const Params = {
  rows: 'u32',
  tokens: 'u32',
  row_groups: 'u32',
  jobs: 'u32',
  items: 'u32',
  rps: 'u32',
  k: 'u32',
  row_stride_u: 'u32',
  item_stride_u: 'u32',
  up_u: 'u32',
  x_off: 'u32',
  x_stride: 'u32',
  y_off: 'u32',
  y_stride: 'u32',
  y_row0: 'u32',
  slot0: 'u32',
  ids_off: 'u32',
  topk: 'u32',
  scale_idx: 'u32',
  scale_stride: 'u32',
  eps: 'f32',
} as const;

/** 'sum' looks up all picks' slots at once into a workgroup array of this size (the shader's MAX_PICKS). */
const MAX_PICKS = 32;

/** Tokens one workgroup serves at most (the shader keeps each token's Σ x² in a component of a vec4). */
const MAX_XR = 4;

/** Elements per weight read (the shader's UNIT): 8 for f32/f16 (w_load8), a q4 group of 32 (w_unit: one scale). */
const unitOf = (format: WeightFormat) => (format.dtype === 'q4' ? 32 : 8);

/**
 * How one unit of weights is loaded (`w_unit`, once for every token of a job) and meets a token's unit of x
 * (`w_unit_dot`), and how a lane loads its units of x into registers:
 * `x_unit(base, u)` is elements u * UNIT .. + UNIT of the x row at `base`, zero past K (x past K is live data of
 * other tensors, and 0-padded weights times NaN is NaN).
 */
function unitDot(format: WeightFormat, norm: boolean): string {
  const w8 = (load: (e: string) => string, o: number) =>
    `W8(vec4<f32>(${[0, 1, 2, 3].map((i) => load(`${o + i}u`)).join(', ')}), vec4<f32>(${[4, 5, 6, 7].map((i) => load(`${o + i}u`)).join(', ')}))`;
  const xLoad = (e: string) => `select(0.0, f32(x[base + k + ${e}]), k + ${e} < params.k)`;
  const wLoad = (e: string) => `1.0 + norm_w[min(k + ${e}, params.k - 1u)]`;
  // Norm weights of a unit (masked x makes the clamped reads past K harmless); without a norm, no reads at all.
  const weights = (o: number) => (norm ? w8(wLoad, o) : 'W8(vec4<f32>(1.0), vec4<f32>(1.0))');
  const norm4 = `fn norm4(k: u32) -> vec4<f32> { return ${norm ? `vec4<f32>(${[0, 1, 2, 3].map((i) => wLoad(`${i}u`)).join(', ')})` : 'vec4<f32>(1.0)'}; }`;
  if (format.dtype !== 'q4') {
    return `const UNIT = 8u;
alias XUnit = W8;
${norm4}
fn x_staged(v: u32) -> W8 { return W8(xs[v], xs[v + 1u]); }
fn x_unit(base: u32, u: u32) -> W8 { let k = u * UNIT; return ${w8(xLoad, 0)}; }
fn norm_unit(u: u32, x: W8) -> W8 { let k = u * UNIT; let w = ${weights(0)}; return W8(x.lo * w.lo, x.hi * w.hi); }
fn unit_sq(x: W8) -> f32 { return dot8(x, x); }
alias WUnit = W8;
fn w_unit(u: u32) -> W8 { return w_load8(u); }
fn w_unit_dot(w: W8, x: W8) -> f32 { return dot8(w, x); }`;
  }
  const parts = ['a', 'b', 'c', 'd'];
  return `const UNIT = 32u;
struct XUnit { a: W8, b: W8, c: W8, d: W8 }
${norm4}
fn x_staged(v: u32) -> XUnit { return XUnit(${parts.map((_, i) => `W8(xs[v + ${2 * i}u], xs[v + ${2 * i + 1}u])`).join(', ')}); }
fn x_unit(base: u32, u: u32) -> XUnit { let k = u * UNIT; return XUnit(${parts.map((_, i) => w8(xLoad, 8 * i)).join(', ')}); }
fn norm_unit(u: u32, x: XUnit) -> XUnit {
  let k = u * UNIT;
  ${parts.map((p, i) => `let w${p} = ${weights(8 * i)};`).join('\n  ')}
  return XUnit(${parts.map((p) => `W8(x.${p}.lo * w${p}.lo, x.${p}.hi * w${p}.hi)`).join(', ')});
}
fn unit_sq(x: XUnit) -> f32 { return dot8(x.a, x.a) + dot8(x.b, x.b) + dot8(x.c, x.c) + dot8(x.d, x.d); }
// One q4 group: its nibbles as n - 8, and its scale, applied once to the group's dot product.
struct WUnit { a: W8, b: W8, c: W8, d: W8, s: f32 }
fn w_unit(u: u32) -> WUnit {
  let item = u / w_IS32;
  let g = u - item * w_IS32;
  let q = w_words4(item * w_IW + 4u * g);
  return WUnit(w_nib8(q.x), w_nib8(q.y), w_nib8(q.z), w_nib8(q.w), w_scale(item, g));
}
fn w_unit_dot(w: WUnit, x: XUnit) -> f32 { return w.s * (dot8(w.a, x.a) + dot8(w.b, x.b) + dot8(w.c, x.c) + dot8(w.d, x.d)); }`;
}

/**
 * The XU units of x a lane holds, each for the XR tokens of its job, unrolled as struct fields rather than arrays:
 * compilers keep them in registers without analysing indices (lavapipe's LLVM took seconds per pipeline on arrays
 * of them). Each token's sums come in the order they would for that token alone, so a token's result does not
 * depend on XR; a row's sum runs on from `so_far` one unit after another, so it does not depend on XU either where
 * rows meet in workgroup memory (there `so_far` is the lane's own).
 */
function heldUnits(xu: number, xr: number): string {
  const units = Array.from({ length: xu }, (_, c) => c);
  const tokens = Array.from({ length: xr }, (_, c) => c);
  const perToken = (f: (c: number) => string) => tokens.map(f).join(', ');
  const tokenSq = (c: number) => [`sq[${c}]`, ...units.map((u) => `h.u${u}.x.t${c}.sq`)].join(' + ');
  const accSum = units.map((u) => `unit_dot(rowu, h.u${u})`).reduce((a, b) => `acc_add(${a}, ${b})`, 'so_far');
  const held = `struct Tokens { ${perToken((c) => `t${c}: TokenUnit`)} }
fn hold_tokens(q: u32, p: u32, u: u32, j: u32) -> Tokens { return Tokens(${perToken((c) => `token_unit(q, p, u, ${c}u, j)`)}); }
fn held_sq(h: Held, sq: vec4<f32>) -> vec4<f32> { return vec4<f32>(${[0, 1, 2, 3].map((c) => (c < xr ? tokenSq(c) : '0.0')).join(', ')}); }`;
  return `const XR = ${xr}u;
const XU = ${xu}u;
${held}
struct Acc { ${perToken((c) => `t${c}: vec2<f32>`)} }
fn acc_add(a: Acc, b: Acc) -> Acc { return Acc(${perToken((c) => `a.t${c} + b.t${c}`)}); }
fn token_dots(w: WUnit, up_w: WUnit, h: HeldUnit) -> Acc { return Acc(${perToken((c) => `token_dot(w, up_w, h, h.x.t${c}.x)`)}); }
fn parts_from(slot: u32, first_tile: bool) -> Acc { return Acc(${perToken((c) => `part_from(slot + ${c}u * PART_T, first_tile)`)}); }
fn keep_parts(acc: Acc, slot: u32, live: bool, first_tile: bool) {
  ${tokens.map((c) => `keep_part(acc.t${c}, slot + ${c}u * PART_T, live, first_tile);`).join('\n  ')}
}
struct Held { ${units.map((c) => `u${c}: HeldUnit`).join(', ')} }
fn hold(t: u32, lane: u32, ku: u32, len: u32, j: u32) -> Held { return Held(${units.map((c) => `hold_unit(t + ${c}u * TPR + lane, t, ku, len, j)`).join(', ')}); }
fn held_dot(rowu: u32, h: Held, so_far: Acc) -> Acc { return ${accSum}; }`;
}

/** RU consecutive rows of a set (row_part each), written out so that their loads overlap. */
function walkRows(ru: number): string {
  const rows = Array.from({ length: ru }, (_, i) => i);
  return `const RU = ${ru}u;
fn walk_rows(first: u32, rr: u32, slot: u32, itemu: u32, first_tile: bool, held: Held) {
  ${rows.map((i) => `row_part(first + rr + ${i}u, rr + ${i}u, slot + ${i}u * ROW_SLOTS, itemu, first_tile, held);`).join('\n  ')}
}`;
}

/**
 * y = W x for one token or a few, bandwidth-bound (decode): dense linears, lm_head and routed experts, with 'store',
 * fused residual 'add' or 'swiglu' epilogues. Grid: ceil(rows / (sets · RPS)) workgroups × jobs (topk for 'each',
 * ceil(tokens / xr) dense).
 */
export const matvecKernel = defineKernel<MatvecVariant>({
  name: 'matvec',
  bindings: (v) => [
    weight('w', v.format),
    read('x', v.x),
    write('y', v.y),
    uniform('params', Params),
    ...(v.scaled ? [read('scales')] : []),
    ...(v.norm ? [read('norm_w')] : []),
    ...(v.experts !== 'none' ? [read('ids', 'u32'), read('slots', 'u32')] : []),
  ],
  helpers: (v) => {
    const scale = (index: string) => (v.scaled ? `scales[params.scale_idx + ${index}]` : '1.0');
    // Job j: the pick ('each') or the token (dense); its scale is scale_stride apart (1 for picks).
    return [
      `const SWIGLU = ${v.epilogue === 'swiglu'};`,
      `const DENSE = ${v.experts === 'none'};`,
      `const EACH = ${v.experts === 'each'};`,
      `const SUM = ${v.experts === 'sum'};`,
      `const NORM = ${v.norm};`,
      `const STAGE = ${v.stage};`,
      `const SUBGROUPS = ${v.subgroups};`,
      `const ROW_SLOTS = ${rowSlots(v)}u;`,
      lanes(v.subgroups),
      heldUnits(v.xu, v.xr),
      walkRows(v.ru),
      unitDot(v.format, v.norm),
      // The part-local item of pick j: its slot minus the part's first (wrapping to huge when below it).
      v.experts === 'none'
        ? 'fn pick_item(j: u32) -> u32 { return 0u; }'
        : 'fn pick_item(j: u32) -> u32 { return slots[ids[params.ids_off + j]] - params.slot0; }',
      `fn term_scale(j: u32) -> f32 { return ${v.experts === 'sum' ? scale('j') : '1.0'}; }`,
      `fn out_scale(j: u32) -> f32 { return ${v.experts === 'sum' ? '1.0' : scale('j * params.scale_stride')}; }`,
      `fn emit(i: u32, v: f32) { y[i] = ${v.y}(${v.epilogue === 'add' ? 'f32(y[i]) + v' : 'v'}); }`,
    ].join('\n');
  },
  overrides: (v) => {
    const perToken = (v.wg / v.tpr) * v.rpsMax * rowSlots(v);
    return { WG: v.wg, TPR: v.tpr, PART_T: perToken, PART: perToken * v.xr, XT4: stagedVec4s(v) };
  },
});

const isPow2 = (n: number) => Number.isInteger(n) && n > 0 && (n & (n - 1)) === 0;
const pow2Ceil = (n: number) => 2 ** Math.ceil(Math.log2(Math.max(1, n)));

/** vec4s of the staged x tiles, one per token (1, unused, without staging). */
const stagedVec4s = (t: Shape) => (t.stage ? (t.xr * t.tpr * t.xu * unitOf(t.format)) / 4 : 1);

type Shape = { wg: number; tpr: number; xu: number; stage: boolean; xr: number; format: WeightFormat };

/**
 * Whether a shape's rows meet through subgroups: the device has them, the workgroup is one set and x is not staged.
 * Staged shapes are the CPU adapters', whose tile width (xu) differs with the tokens per job: through workgroup
 * memory a lane's sums run on unit by unit whatever the width (see the shader); subgroups gained about 5% there.
 */
const meetsInSubgroups = (caps: Caps, t: Shape) => caps.subgroups && !t.stage && t.wg === t.tpr;

/**
 * Partial sums kept per row (vec2 each): one per lane, padded to tpr + 1 against bank conflicts, or with subgroups
 * one per subgroup, as many as the workgroup can hold.
 */
const rowSlots = (t: { wg: number; tpr: number; subgroups: boolean }) => (t.subgroups ? Math.max(1, t.wg / MIN_SUBGROUP_SIZE) : t.tpr + 1);

/**
 * Rows per set that the row partials have room for beside the staged x tiles and the small arrays, at most 128 (0
 * where the tiles alone do not fit): within WebGPU's guaranteed 16 KiB of workgroup memory on GPUs, where more would
 * cost occupancy, and within all the adapter has on CPU adapters, where it is plain memory (lavapipe and SwiftShader
 * have 32 KiB: a job of 4 tokens keeps each lane's sums of 98 rows instead of 41, so each staged tile of x serves more
 * than twice the rows). One size per workgroup shape, and rps a uniform, so that shapes with different row counts
 * share a pipeline.
 */
function rpsLimit(caps: Caps, t: Shape): number {
  const fixed = 2 * 4 * MAX_PICKS + 16 * t.wg + 16 * stagedVec4s(t);
  const perRow = (t.wg / t.tpr) * rowSlots({ ...t, subgroups: meetsInSubgroups(caps, t) }) * 8 * t.xr;
  const bytes = caps.cpu ? caps.maxWorkgroupStorageBytes : Math.min(16384, caps.maxWorkgroupStorageBytes);
  return Math.max(0, Math.min(128, Math.floor((bytes - fixed) / perRow)));
}

/**
 * Tokens per workgroup for `tokens` tokens over a shape: 1, 2 or 4, as many as fit with room left for 16 rows per
 * set where x is staged (fewer would stage each token's x for too few rows) or for one walk of RU = 4 rows, and no
 * more than the jobs need (5 tokens: 2 jobs of 4, not 3 of 2). Only powers of two, because each count is a
 * pipeline of its own and lavapipe takes seconds to compile the larger ones.
 */
function tokensPerJob(caps: Caps, shape: Omit<Shape, 'xr'>, tokens: number): number {
  const minRows = shape.stage ? 16 : 4;
  let most = 1;
  while (most < MAX_XR && rpsLimit(caps, { ...shape, xr: 2 * most }) >= minRows) most *= 2;
  return Math.min(most, pow2Ceil(Math.ceil(tokens / Math.ceil(tokens / most))));
}

/**
 * The default shape for `units` units of x per row (all picks' for 'sum'), `rows` output rows, `picks` picks ('each',
 * else 1) and `tokens` tokens (dense, else 1). CPU adapters (lavapipe, SwiftShader) run a workgroup as SIMD lanes of
 * 4-8 floats: one set of 8 lanes and up to 128 rows per workgroup, so that x is loaded once for many rows (a load of x
 * per row would be a gather of one element per weight); a lane holds 128 floats of x for one token a job (fewer make
 * more tiles, each ending in a sum per row: a fifth slower decode on lavapipe) and 32 per token for several (lavapipe
 * took 3-11 s to compile those pipelines with more). GPUs: one set per workgroup, a row shared by up to 128 lanes with
 * 32 floats of x per token each in registers (x is then read once per 16 rows, about 0.4 of the weights' bytes at q4,
 * from cache), 4 rows' loads in flight per lane, and rows per workgroup lowered until there are about 1,024 workgroups
 * to keep every core streaming. What depends on the picks and tokens (rps, xr, and xu where rows meet in workgroup
 * memory) never changes a token's arithmetic: a token's result is the same whatever tokens run beside it (a batch's
 * rows, a verification's). Not yet measured on a GPU.
 */
export function matvecTuning(caps: Caps, format: WeightFormat, shape: { units: number; rows: number; picks: number; tokens: number }): MatvecTuning {
  const { units, rows, picks, tokens } = shape;
  const q4 = format.dtype === 'q4';
  const fitRows = (t: Omit<MatvecTuning, 'xr'>, target: number): MatvecTuning => {
    const xr = tokensPerJob(caps, { ...t, format }, tokens);
    const jobs = picks * Math.ceil(tokens / xr);
    const perSet = Math.max(1, Math.floor(rows / ((t.wg / t.tpr) * Math.ceil(target / jobs))));
    return { ...t, xr, rps: Math.max(1, Math.min(t.rps, perSet, rpsLimit(caps, { ...t, xr, format }))) };
  };
  if (caps.cpu) {
    const tpr = 8;
    const holding = (most: number) => ({ wg: tpr, tpr, rps: 128, xu: Math.min(Math.ceil(units / tpr), most), stage: true, ru: 1 });
    const several = fitRows(holding(q4 ? 1 : 4), 16);
    return several.xr > 1 ? several : fitRows(holding(q4 ? 4 : 8), 16);
  }
  const xuMax = q4 ? 1 : 4;
  const tpr = Math.min(128, Math.max(32, pow2Ceil(Math.ceil(units / xuMax))));
  return fitRows({ wg: tpr, tpr, rps: 16, xu: Math.min(xuMax, Math.ceil(units / tpr)), stage: false, ru: 4 }, 1024);
}

function checkTuning(caps: Caps, t: MatvecTuning, format: WeightFormat): void {
  const { wg, tpr, rps, xu, ru, xr } = t;
  const ok =
    isPow2(wg) &&
    isPow2(tpr) &&
    tpr <= wg &&
    wg <= Math.min(256, caps.maxInvocationsPerWorkgroup) &&
    Number.isInteger(rps) &&
    rps >= 1 &&
    Number.isInteger(xu) &&
    xu >= 1 &&
    xu <= 16 &&
    Number.isInteger(ru) &&
    ru >= 1 &&
    ru <= 8 &&
    Number.isInteger(xr) &&
    xr >= 1 &&
    xr <= MAX_XR;
  if (!ok)
    check.fail(
      `tuning wg=${wg} tpr=${tpr} rps=${rps} xu=${xu} ru=${ru} xr=${xr}: wg and tpr must be powers of two with tpr <= wg <= 256, rps >= 1, 1 <= xu <= 16, 1 <= ru <= 8, 1 <= xr <= ${MAX_XR}`,
    );
  const limit = ok ? rpsLimit(caps, { ...t, format }) : 0;
  if (ok && rps > limit) check.fail(`tuning wg=${wg} tpr=${tpr} rps=${rps} xr=${xr}: at most ${limit} rows per set fit the workgroup memory`);
}

const check = checks('matvec');

/**
 * One dispatch per part of `w`. Dense: w is [N, K] ('store'/'add') or [I, 2, K] ('swiglu'). Experts: w is
 * [E, N, K] ('store'/'add') or [E, 2I, K] ('swiglu'), reached through `slots[ids[j]]`.
 */
export async function matvec(ctx: GpuContext, args: MatvecArgs): Promise<Dispatch[]> {
  const { w, x, y, epilogue, scales, experts, norm } = args;
  const shape = w.shape;
  const K = shape[shape.length - 1];
  const mode: ExpertMode = experts?.mode ?? 'none';
  let N: number;
  let up = 0; // up row offset from the gate row, in elements
  if (!experts) {
    if (epilogue === 'swiglu') {
      if (shape.length !== 3 || shape[1] !== 2) check.fail(`dense swiglu needs w of shape [I, 2, K], got ${w.name} [${shape}]`);
      up = w.rowStride;
    } else if (shape.length !== 2) {
      check.fail(`dense '${epilogue}' needs w of shape [N, K], got ${w.name} [${shape}]`);
    }
    N = shape[0];
  } else {
    if (shape.length !== 3) check.fail(`experts need w of shape [E, rows, K], got ${w.name} [${shape}]`);
    if (mode !== 'each' && mode !== 'sum') check.fail(`experts mode must be 'each' or 'sum', got ${String(mode)}`);
    if (mode === 'sum' && epilogue !== 'add') check.fail(`experts 'sum' accumulates across parts and needs epilogue 'add', got '${epilogue}'`);
    check.count('experts.topk', experts.topk);
    if (mode === 'sum' && experts.topk > MAX_PICKS) check.fail(`experts 'sum' supports topk <= ${MAX_PICKS}, got ${experts.topk}`);
    N = shape[1];
    if (epilogue === 'swiglu') {
      if (N % 2 !== 0) check.fail(`swiglu experts need an even row count [E, 2I, K], got ${w.name} [${shape}]`);
      N /= 2;
      up = N * w.rowStride;
    }
  }
  if (!(K >= 1 && N >= 1)) check.fail(`empty weight ${w.name} [${shape}]`);
  const format = weightFormat(w);
  const unit = unitOf(format);
  if (w.rowStride % unit !== 0 || w.itemStride % unit !== 0 || w.rowStride < K)
    check.fail(`${w.name} strides (${w.rowStride}, ${w.itemStride}) are not padded rows of ${K}`);

  const topk = experts?.topk ?? 1;
  const xOffset = args.xOffset ?? 0;
  const yOffset = args.yOffset ?? 0;
  const tokens = args.tokens ?? 1;
  check.count('tokens', tokens);
  if (tokens > 1 && mode !== 'none') check.fail(`tokens = ${tokens}: several tokens are for dense weights only`);
  const xStride = mode === 'sum' || tokens > 1 ? (args.xStride ?? K) : 0;
  const yStride = mode === 'each' || tokens > 1 ? (args.yStride ?? N) : 0;
  if (tokens > 1 && yStride < N) check.fail(`yStride ${yStride} is less than the ${N} output rows: tokens would overlap`);
  check.index('xOffset', xOffset);
  check.index('yOffset', yOffset);
  check.index('xStride', xStride);
  check.index('yStride', yStride);
  if (mode === 'each' && yStride < N) check.fail(`yStride ${yStride} is less than the ${N} output rows: picks would overlap`);
  check.distinct({ x, y });
  if (norm) {
    if (mode === 'sum') check.fail(`norm is not taken with experts 'sum'`);
    if (!(norm.eps > 0) || !Number.isFinite(norm.eps)) check.fail(`norm.eps = ${norm.eps} must be a positive number`);
    if (norm.weight === y) check.fail('norm.weight and y must be distinct buffers');
    check.fits('norm.weight', norm.weight, K);
  }
  const xType = elementType(ctx, 'input', args.input, check.fail);
  const yType = elementType(ctx, 'output', args.output, check.fail);
  check.fits('x', x, xOffset + (mode === 'sum' ? (topk - 1) * xStride : (tokens - 1) * xStride) + K, elementBytes(ctx, xType));
  check.fits('y', y, yOffset + (mode === 'each' ? topk - 1 : tokens - 1) * yStride + N, elementBytes(ctx, yType));
  const scaleStride = mode === 'each' ? 1 : (scales?.stride ?? 0);
  if (scales) {
    check.index('scales.index', scales.index);
    check.index('scales.stride', scaleStride);
    if (scales.buffer === y) check.fail('scales and y must be distinct buffers');
    check.fits('scales', scales.buffer, scales.index + (experts ? topk : (tokens - 1) * scaleStride + 1));
  }
  if (experts) {
    const idsOffset = experts.idsOffset ?? 0;
    check.index('experts.idsOffset', idsOffset);
    if (experts.ids === y || experts.slots === y) check.fail('ids and slots must be distinct from y');
    check.fits('experts.ids', experts.ids, idsOffset + topk);
    check.fits('experts.slots', experts.slots, shape[0]);
  }

  const picks = mode === 'each' ? topk : 1;
  const units = (mode === 'sum' ? topk : 1) * Math.ceil(K / unit);
  const tuning = args.tuning ?? matvecTuning(ctx.caps, format, { units, rows: N, picks, tokens });
  checkTuning(ctx.caps, tuning, format);
  const { wg, tpr, rps, xu, stage, ru, xr } = tuning;
  if (xr > 1 && mode !== 'none') check.fail(`tuning xr=${xr}: several tokens per workgroup are for dense weights only`);
  const jobs = picks * Math.ceil(tokens / xr);
  const variant: MatvecVariant = {
    format,
    epilogue,
    experts: mode,
    scaled: Boolean(scales),
    norm: Boolean(norm),
    wg,
    tpr,
    xu,
    stage,
    ru,
    xr,
    subgroups: meetsInSubgroups(ctx.caps, { ...tuning, format }),
    rpsMax: rpsLimit(ctx.caps, { ...tuning, format }),
    x: xType,
    y: yType,
  };
  const common = {
    k: K,
    row_stride_u: w.rowStride / unit,
    item_stride_u: w.itemStride / unit,
    up_u: up / unit,
    x_off: xOffset,
    x_stride: xStride,
    y_off: yOffset,
    y_stride: yStride,
    ids_off: experts?.idsOffset ?? 0,
    topk: mode === 'sum' ? topk : 1,
    scale_idx: scales?.index ?? 0,
    scale_stride: scaleStride,
    eps: norm?.eps ?? 1,
  };
  const extra = {
    ...(scales ? { scales: scales.buffer } : {}),
    ...(experts ? { ids: experts.ids, slots: experts.slots } : {}),
    ...(norm ? { norm_w: norm.weight } : {}),
  };
  return Promise.all(
    w.parts.map((part) => {
      // Dense parts own rows [first, first + count); expert parts own slots, and every row of each pick.
      const partRows = experts ? N : part.count;
      const rowGroups = Math.ceil(partRows / ((wg / tpr) * rps));
      const params = {
        ...common,
        rows: partRows,
        tokens: picks * tokens,
        row_groups: rowGroups,
        jobs,
        items: part.count,
        rps,
        y_row0: experts ? 0 : part.first,
        slot0: experts ? part.first : 0,
      };
      return ctx.dispatch(matvecKernel, variant, { w: part.buffer, x, y, params, ...extra }, grid(rowGroups * jobs, ctx.caps));
    }),
  );
}
