import { type ElementType, defineKernel, elementBytes, elementType, read, uniform, weight, write } from '../gpu/kernel.ts';
import type { Dispatch, GpuContext } from '../gpu/context.ts';
import { workgroupReduce } from '../gpu/wgsl.ts';
import { type GpuTensor, type WeightFormat, weightFormat } from '../gpu/tensor.ts';
import { checks } from './checks.ts';
import { grid } from './grid.ts';

export type Epilogue = 'store' | 'add' | 'swiglu';

export interface MatvecArgs {
  w: GpuTensor;
  x: GPUBuffer; xOffset?: number;      // input vector at x[xOffset ..]; for experts 'sum': row j at xOffset + j * xStride
  xStride?: number;
  y: GPUBuffer; yOffset?: number;      // output element r at y[yOffset + r]; for experts 'each': y[yOffset + j * yStride + r]
  yStride?: number;
  /** Element types of x and y: activations (default) or f32 (the residual stream, its norm, logits). */
  input?: ElementType;
  output?: ElementType;
  epilogue: Epilogue;
  /** Dense: result *= scales.buffer[scales.index]. Experts 'each': result for j *= scales.buffer[scales.index + j]. */
  scales?: { buffer: GPUBuffer; index: number };
  /** MoE decode. ids[idsOffset + j] (u32) is the j-th chosen expert, j < topk; slots[expertId] its slot in w.
   *  'each': one output vector per j (grid over j), input shared (x at xOffset).
   *  'sum': y[r] (+)= Σ_j W_slot(j)[r] · x_j (input row j at xOffset + j*xStride); only with epilogue 'add' (parts accumulate). */
  experts?: { ids: GPUBuffer; idsOffset?: number; slots: GPUBuffer; topk: number; mode: 'each' | 'sum' };
  /** Workgroup shape (powers of two): `wg` invocations, `rows` output rows each. Default: 256, with 32 invocations per row (8 when a row has fewer than 32 units: K < 256, q4 K < 1024). */
  tuning?: { wg?: number; rows?: number };
}

export type ExpertMode = 'none' | 'each' | 'sum';

export interface MatvecVariant {
  format: WeightFormat;
  epilogue: Epilogue;
  experts: ExpertMode;
  /** A scales binding is present. */
  scaled: boolean;
  wg: number;
  rows: number;
  /** WGSL element types of x and y. */
  x: ElementType;
  y: ElementType;
}

const Params = {
  rows: 'u32', row_groups: 'u32', jobs: 'u32', items: 'u32',
  k: 'u32', row_stride_u: 'u32', item_stride_u: 'u32', up_u: 'u32',
  x_off: 'u32', x_stride: 'u32', y_off: 'u32', y_stride: 'u32', y_row0: 'u32',
  slot0: 'u32', ids_off: 'u32', topk: 'u32', scale_idx: 'u32',
} as const;

/**
 * x tile in workgroup memory, in vec4s: 1024 floats (4 KiB). SwiftShader's pipeline compile time grows with
 * workgroup memory (about 1.2 s at 8 KiB against 0.5 s at 4 KiB), and two tiles cover most decode rows.
 */
const XT4 = 256;
/** 'sum' looks up all picks' slots at once into a workgroup array of this size (the shader's MAX_PICKS). */
const MAX_PICKS = 32;

/** Elements per weight read (the shader's UNIT): 8 for f32/f16 (w_load8), a q4 group of 32 (w_dot32: one scale). */
const unitOf = (format: WeightFormat) => (format.dtype === 'q4' ? 32 : 8);

/** How one unit of weights meets the matching unit of x in the x tile (xs, vec4s; unit c at xs[UNIT / 4 * c]). */
function unitDot(format: WeightFormat): string {
  if (format.dtype !== 'q4') {
    return `const UNIT = 8u;
fn x_unit(c: u32) -> W8 { return W8(xs[2u * c], xs[2u * c + 1u]); }
fn w_dot(u: u32, x: W8) -> f32 { return dot8(w_load8(u), x); }`;
  }
  return `const UNIT = 32u;
struct X32 { a: W8, b: W8, c: W8, d: W8 }
fn x_unit(c: u32) -> X32 {
  let b = 8u * c;
  return X32(W8(xs[b], xs[b + 1u]), W8(xs[b + 2u], xs[b + 3u]), W8(xs[b + 4u], xs[b + 5u]), W8(xs[b + 6u], xs[b + 7u]));
}
fn w_dot(u: u32, x: X32) -> f32 { return w_dot32(u, x.a, x.b, x.c, x.d); }`;
}

/**
 * y = W x for one token, bandwidth-bound (decode): dense linears, lm_head and routed experts, with 'store',
 * fused residual 'add' or 'swiglu' epilogues. Grid: ceil(rows / ROWS) workgroups (× topk for 'each').
 */
export const matvecKernel = defineKernel<MatvecVariant>({
  name: 'matvec',
  bindings: (v) => [
    weight('w', v.format), read('x', v.x), write('y', v.y), uniform('params', Params),
    ...(v.scaled ? [read('scales')] : []),
    ...(v.experts !== 'none' ? [read('ids', 'u32'), read('slots', 'u32')] : []),
  ],
  helpers: (v) => {
    const scale = (index: string) => (v.scaled ? `scales[params.scale_idx + ${index}]` : '1.0');
    return [
      `const SWIGLU = ${v.epilogue === 'swiglu'};`,
      `const DENSE = ${v.experts === 'none'};`,
      `const SUM = ${v.experts === 'sum'};`,
      unitDot(v.format),
      // The part-local item of pick j: its slot minus the part's first (wrapping to huge when below it).
      v.experts === 'none'
        ? 'fn pick_item(j: u32) -> u32 { return 0u; }'
        : 'fn pick_item(j: u32) -> u32 { return slots[ids[params.ids_off + j]] - params.slot0; }',
      `fn term_scale(j: u32) -> f32 { return ${v.experts === 'sum' ? scale('j') : '1.0'}; }`,
      `fn out_scale(j: u32) -> f32 { return ${v.experts === 'sum' ? '1.0' : scale(v.experts === 'each' ? 'j' : '0u')}; }`,
      `fn emit(i: u32, v: f32) { y[i] = ${v.y}(${v.epilogue === 'add' ? 'f32(y[i]) + v' : 'v'}); }`,
      // Per row: its TPR lanes' (gate, up) partial dot products.
      workgroupReduce('row_sum', 'vec2<f32>', 'return a + b;', 'TPR'),
    ].join('\n');
  },
  overrides: (v) => ({ WG: v.wg, ROWS: v.rows, XT4 }),
});

const isPow2 = (n: number) => Number.isInteger(n) && n > 0 && (n & (n - 1)) === 0;

const check = checks('matvec');

/**
 * One dispatch per part of `w`. Dense: w is [N, K] ('store'/'add') or [I, 2, K] ('swiglu'). Experts: w is
 * [E, N, K] ('store'/'add') or [E, 2I, K] ('swiglu'), reached through `slots[ids[j]]`.
 */
export async function matvec(ctx: GpuContext, args: MatvecArgs): Promise<Dispatch[]> {
  const { w, x, y, epilogue, scales, experts } = args;
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
  if (w.rowStride % unit !== 0 || w.itemStride % unit !== 0 || w.rowStride < K) check.fail(`${w.name} strides (${w.rowStride}, ${w.itemStride}) are not padded rows of ${K}`);

  const topk = experts?.topk ?? 1;
  const xOffset = args.xOffset ?? 0;
  const yOffset = args.yOffset ?? 0;
  const xStride = mode === 'sum' ? (args.xStride ?? K) : 0;
  const yStride = mode === 'each' ? (args.yStride ?? N) : 0;
  check.index('xOffset', xOffset);
  check.index('yOffset', yOffset);
  check.index('xStride', xStride);
  check.index('yStride', yStride);
  if (mode === 'each' && yStride < N) check.fail(`yStride ${yStride} is less than the ${N} output rows: picks would overlap`);
  check.distinct({ x, y });
  const xType = elementType(ctx, 'input', args.input, check.fail);
  const yType = elementType(ctx, 'output', args.output, check.fail);
  check.fits('x', x, xOffset + (mode === 'sum' ? (topk - 1) * xStride : 0) + K, elementBytes(ctx, xType));
  check.fits('y', y, yOffset + (mode === 'each' ? (topk - 1) * yStride : 0) + N, elementBytes(ctx, yType));
  if (scales) {
    check.index('scales.index', scales.index);
    if (scales.buffer === y) check.fail('scales and y must be distinct buffers');
    check.fits('scales', scales.buffer, scales.index + (experts ? topk : 1));
  }
  if (experts) {
    const idsOffset = experts.idsOffset ?? 0;
    check.index('experts.idsOffset', idsOffset);
    if (experts.ids === y || experts.slots === y) check.fail('ids and slots must be distinct from y');
    check.fits('experts.ids', experts.ids, idsOffset + topk);
    check.fits('experts.slots', experts.slots, shape[0]);
  }

  const wg = args.tuning?.wg ?? 256;
  // 32 invocations per row (a warp's worth of 16-byte loads in a row); 8 for rows of fewer than 32 units, so fewer idle.
  const rows = args.tuning?.rows ?? Math.max(1, wg / (Math.ceil(K / unit) >= 32 ? 32 : 8));
  if (!isPow2(wg) || !isPow2(rows) || rows > wg || wg > Math.min(256, ctx.caps.maxInvocationsPerWorkgroup)) {
    check.fail(`tuning wg=${wg} rows=${rows} must be powers of two with rows <= wg <= 256`);
  }
  const variant: MatvecVariant = { format, epilogue, experts: mode, scaled: Boolean(scales), wg, rows, x: xType, y: yType };
  const common = {
    k: K, row_stride_u: w.rowStride / unit, item_stride_u: w.itemStride / unit, up_u: up / unit,
    x_off: xOffset, x_stride: xStride, y_off: yOffset, y_stride: yStride,
    ids_off: experts?.idsOffset ?? 0, topk: mode === 'sum' ? topk : 1, scale_idx: scales?.index ?? 0,
  };
  const extra = {
    ...(scales ? { scales: scales.buffer } : {}),
    ...(experts ? { ids: experts.ids, slots: experts.slots } : {}),
  };
  return Promise.all(
    w.parts.map((part) => {
      // Dense parts own rows [first, first + count); expert parts own slots, and every row of each pick.
      const partRows = experts ? N : part.count;
      const rowGroups = Math.ceil(partRows / rows);
      const jobs = mode === 'each' ? topk : 1;
      const params = {
        ...common, rows: partRows, row_groups: rowGroups, jobs, items: part.count,
        y_row0: experts ? 0 : part.first, slot0: experts ? part.first : 0,
      };
      return ctx.dispatch(matvecKernel, variant, { w: part.buffer, x, y, params, ...extra }, grid(rowGroups * jobs, ctx.caps));
    }),
  );
}
