import type { GpuContext, Dispatch } from '../gpu/context.ts';
import { type Binding, type ElementType, elementBytes, elementType, read, uniform, weight, write } from '../gpu/kernel.ts';
import { defineKernel } from './define.ts';
import { type GpuTensor, type WeightFormat, weightFormat } from '../gpu/tensor.ts';
import { checks } from './checks.ts';
import { grid } from './grid.ts';

/** Pairs per grouped (MoE) tile: moe_group splits each expert's pairs into tiles of at most this many. */
export const MOE_TILE_TOKENS = 32;

export type MatmulEpilogue = 'store' | 'add' | 'swiglu';

export interface MatmulVariant {
  format: WeightFormat;
  epilogue: MatmulEpilogue;
  scaled: boolean;
  grouped: boolean;
  /** Column groups of 4 per invocation (1 or 2; swiglu: 1). */
  cg: 1 | 2;
  /** WGSL element types of x and y. */
  x: ElementType;
  y: ElementType;
}

const PARAMS = {
  k: 'u32',
  ncols: 'u32',
  col0: 'u32',
  n_stride8: 'u32',
  h_stride8: 'u32',
  item_stride8: 'u32',
  part_first: 'u32',
  part_count: 'u32',
  tokens: 'u32',
  col_tiles: 'u32',
  tiles_total: 'u32',
  x_offset: 'u32',
  x_stride: 'u32',
  x_div: 'u32',
  y_offset: 'u32',
  y_stride: 'u32',
  s_index: 'u32',
  s_stride: 'u32',
  s_div: 'u32',
} as const;

const tileSizes = (v: MatmulVariant) => ({ TM: v.grouped ? MOE_TILE_TOKENS : 64, TN: 64 * v.cg, BK: 16 });

const DENSE_HELPERS = `
fn locate(wg: vec3<u32>, nwg: vec3<u32>) -> Tile {
  let id = flat_id(wg, nwg);
  let tok = (id / max(params.col_tiles, 1u)) * TM;
  let count = min(TM, params.tokens - min(tok, params.tokens));
  return Tile(id < params.tiles_total, tok, count, (id % max(params.col_tiles, 1u)) * TN, 0u);
}
fn row_of(tile: Tile, r: u32) -> u32 { return tile.start + r; }`;

// Every part's dispatch sees every tile; only tiles of experts resident in the bound part do work.
const GROUPED_HELPERS = `
fn locate(wg: vec3<u32>, nwg: vec3<u32>) -> Tile {
  let t = tiles[wg.x];
  let slot = slots[t.x];
  let here = slot >= params.part_first && slot - params.part_first < params.part_count;
  let wbase = select(0u, (slot - params.part_first) * params.item_stride8, here);
  return Tile(here && t.z > 0u && wg.y * TN < params.ncols, t.y, min(t.z, TM), wg.y * TN, wbase);
}
fn row_of(tile: Tile, r: u32) -> u32 { return order[tile.start + r]; }`;

/**
 * Tiled GEMM for T ≥ 2 tokens: Y = epilogue(X · Wᵀ) · scale, dense or grouped by expert (MoE prefill).
 * Contract and grid in shaders/matmul.wgsl.
 */
export const matmulKernel = defineKernel<MatmulVariant>({
  name: 'matmul',
  bindings: (v) => {
    const list: Binding[] = [weight('w', v.format), read('x', v.x), write('y', v.y)];
    if (v.scaled) list.push(read('scales'));
    if (v.grouped) list.push(read('order', 'u32'), read('tiles', 'vec4<u32>'), read('slots', 'u32'));
    list.push(uniform('params', PARAMS));
    return list;
  },
  helpers: (v) =>
    [
      `const NW = ${v.epilogue === 'swiglu' ? 2 : 1}u;`,
      `const CG = ${v.cg}u;`,
      v.epilogue === 'swiglu' ? 'fn finish(g: f32, u: f32) -> f32 { return silu(g) * u; }' : 'fn finish(g: f32, u: f32) -> f32 { return g; }',
      `fn emit(i: u32, v: f32) { y[i] = ${v.y}(${v.epilogue === 'add' ? 'f32(y[i]) + v' : 'v'}); }`,
      v.scaled
        ? 'fn row_scale(r: u32) -> f32 { return scales[params.s_index + (r / params.s_div) * params.s_stride + r % params.s_div]; }'
        : 'fn row_scale(r: u32) -> f32 { return 1.0; }',
      v.grouped ? GROUPED_HELPERS : DENSE_HELPERS,
    ].join('\n'),
  overrides: (v) => tileSizes(v),
});

export interface MatmulArgs {
  w: GpuTensor;
  /** T rows of X and Y (for grouped: number of tokens; pairs = T*topk). */
  tokens: number;
  /** X row t at x[xOffset + t*xStride ..]. */
  x: GPUBuffer;
  xOffset?: number;
  xStride: number;
  /** Y[t, n] at y[yOffset + t*yStride + n]. */
  y: GPUBuffer;
  yOffset?: number;
  yStride: number;
  /** Element types of x and y: activations (default) or f32 (the residual stream, its norm, logits). */
  input?: ElementType;
  output?: ElementType;
  epilogue: MatmulEpilogue;
  /** Dense: row t's result *= scales.buffer[scales.index + t * scales.stride]. Grouped: pair p's scale is
   * scales.buffer[(p / topk) * (topk + 1) + p % topk] (index/stride ignored). */
  scales?: { buffer: GPUBuffer; index: number; stride: number };
  grouped?: { order: GPUBuffer; tiles: GPUBuffer; args: GPUBuffer; argsOffset: number; slots: GPUBuffer; topk: number; input: 'token' | 'pair' };
  /** Tuning (store/add): groups of 4 output columns per invocation, 2 (128-column tiles) or 1 (64); default by size. */
  columnGroups?: 1 | 2;
}

/**
 * Y = epilogue(X · Wᵀ) for `tokens` rows, one dispatch per part of `w`. Grouped: per (token, expert) pair of
 * moe_group's tiles, dispatched indirectly; the row-tile count and 1 are written into `args` here.
 */
export async function matmul(ctx: GpuContext, args: MatmulArgs): Promise<Dispatch[]> {
  const { w, tokens, epilogue, grouped, scales } = args;
  const xOffset = args.xOffset ?? 0;
  const yOffset = args.yOffset ?? 0;
  const check = checks(`matmul(${w.name})`);
  const { fail } = check;
  check.count('tokens', tokens);
  if (epilogue !== 'store' && epilogue !== 'add' && epilogue !== 'swiglu') fail(`unknown epilogue ${String(epilogue)}`);
  if (w.dtype !== 'f32' && w.dtype !== 'f16' && w.dtype !== 'q4') fail(`unsupported weight dtype ${String(w.dtype)}`);
  if (w.rowStride % 8 !== 0 || w.itemStride % 8 !== 0) fail(`row stride ${w.rowStride} / item stride ${w.itemStride} not a multiple of 8`);
  const K = w.shape[w.shape.length - 1];
  let N: number;
  let nStride8: number;
  let hStride8: number;
  if (grouped) {
    if (w.shape.length !== 3) fail(`grouped experts need a [E, rows, K] weight, got [${w.shape.join(', ')}]`);
    const rows = w.shape[1];
    if (epilogue === 'swiglu' && rows % 2 !== 0) fail(`swiglu experts need an even row count (gate; up), got ${rows}`);
    N = epilogue === 'swiglu' ? rows / 2 : rows;
    nStride8 = w.rowStride / 8;
    hStride8 = epilogue === 'swiglu' ? (N * w.rowStride) / 8 : 0;
  } else if (epilogue === 'swiglu') {
    if (w.shape.length !== 3 || w.shape[1] !== 2) fail(`dense swiglu needs a [I, 2, K] weight, got [${w.shape.join(', ')}]`);
    N = w.shape[0];
    nStride8 = w.itemStride / 8;
    hStride8 = w.rowStride / 8;
  } else {
    if (w.shape.length !== 2) fail(`dense ${epilogue} needs a [N, K] weight, got [${w.shape.join(', ')}]`);
    N = w.shape[0];
    nStride8 = w.itemStride / 8;
    hStride8 = 0;
  }
  if (!(K >= 1) || !(N >= 1)) fail(`empty weight [${w.shape.join(', ')}]`);
  check.counts({ xOffset, yOffset, xStride: args.xStride, yStride: args.yStride }, 0);
  if (args.xStride < K) fail(`xStride ${args.xStride} < K ${K}`);
  if (args.yStride < N) fail(`yStride ${args.yStride} < N ${N}`);
  check.distinct({ x: args.x, y: args.y });
  if (scales && scales.buffer === args.y) fail('scales and y must be distinct buffers');

  const topk = grouped?.topk ?? 1;
  if (grouped) check.count('topk', topk);
  const pairs = tokens * topk;
  const xRows = grouped?.input === 'pair' ? pairs : tokens;
  const yRows = grouped ? pairs : tokens;
  if (grouped && grouped.input !== 'token' && grouped.input !== 'pair') fail(`grouped input ${String(grouped.input)} is not 'token' or 'pair'`);
  const xType = elementType(ctx, 'input', args.input, fail);
  const yType = elementType(ctx, 'output', args.output, fail);
  const xElements = xOffset + (xRows - 1) * args.xStride + K;
  const yElements = yOffset + (yRows - 1) * args.yStride + N;
  const xNeed = elementBytes(ctx, xType) * xElements;
  if (args.x.size < xNeed) fail(`x holds ${args.x.size} bytes, ${xRows} rows need ${xNeed}`);
  const yNeed = elementBytes(ctx, yType) * yElements;
  if (args.y.size < yNeed) fail(`y holds ${args.y.size} bytes, ${yRows} rows need ${yNeed}`);
  if (Math.max(xElements, yElements) > 0xffffffff) fail('x or y has more than 2^32 elements');

  let sIndex = 0;
  let sStride = 0;
  let sDiv = 1;
  if (scales) {
    if (grouped) {
      sStride = topk + 1;
      sDiv = topk;
      if (scales.buffer.size < 4 * tokens * (topk + 1)) fail(`scales hold ${scales.buffer.size} bytes, [${tokens}, ${topk + 1}] needed`);
    } else {
      check.index('scales.index', scales.index);
      check.index('scales.stride', scales.stride);
      sIndex = scales.index;
      sStride = scales.stride;
      check.fits('scales', scales.buffer, sIndex + (tokens - 1) * sStride + 1);
    }
  }

  if (args.columnGroups !== undefined && args.columnGroups !== 1 && args.columnGroups !== 2) fail(`columnGroups ${String(args.columnGroups)} is not 1 or 2`);
  // 128-column tiles pay off only when they still fill the GPU (H100: 17 → 22 TFLOP/s at ≥ 512 workgroups, slower below).
  const wideEnough = !grouped && Math.ceil(N / 128) * Math.ceil(tokens / 64) >= 512;
  const cg = epilogue === 'swiglu' ? 1 : (args.columnGroups ?? (wideEnough ? 2 : 1));
  const variant: MatmulVariant = { format: weightFormat(w), epilogue, scaled: Boolean(scales), grouped: Boolean(grouped), cg, x: xType, y: yType };
  const { TM, TN, BK } = tileSizes(variant);
  const nw = epilogue === 'swiglu' ? 2 : 1;
  const wgBytes = 4 * (TM * BK + nw * TN * BK + TM);
  if (wgBytes > ctx.caps.maxWorkgroupStorageBytes)
    fail(`tiles need ${wgBytes} bytes of workgroup memory, the adapter has ${ctx.caps.maxWorkgroupStorageBytes}`);
  const invocations = (TN / (4 * cg)) * (TM / 4);
  if (invocations > ctx.caps.maxInvocationsPerWorkgroup) fail(`tiles need ${invocations} invocations per workgroup`);

  const base = {
    k: K,
    x_offset: xOffset,
    x_stride: args.xStride,
    x_div: grouped?.input === 'token' ? topk : 1,
    y_offset: yOffset,
    y_stride: args.yStride,
    s_index: sIndex,
    s_stride: sStride,
    s_div: sDiv,
    tokens,
  };
  const resources = (part: GpuTensor['parts'][number]) => ({
    w: part.buffer,
    x: args.x,
    y: args.y,
    ...(scales ? { scales: scales.buffer } : {}),
    ...(grouped ? { order: grouped.order, tiles: grouped.tiles, slots: grouped.slots } : {}),
  });

  if (!grouped) {
    const tokTiles = Math.ceil(tokens / TM);
    return Promise.all(
      w.parts.map((part) => {
        const colTiles = Math.ceil(part.count / TN);
        const params = {
          ...base,
          ncols: part.count,
          col0: part.first,
          n_stride8: nStride8,
          h_stride8: hStride8,
          item_stride8: 0,
          part_first: 0,
          part_count: 0,
          col_tiles: colTiles,
          tiles_total: colTiles * tokTiles,
        };
        return ctx.dispatch(matmulKernel, variant, { ...resources(part), params }, grid(colTiles * tokTiles, ctx.caps));
      }),
    );
  }

  const { args: indirect, argsOffset } = grouped;
  if (!Number.isInteger(argsOffset) || argsOffset < 0 || argsOffset % 4 !== 0) fail(`argsOffset ${argsOffset} must be a multiple of 4`);
  if (indirect.size < argsOffset + 12) fail(`args holds ${indirect.size} bytes, offset ${argsOffset} needs 12 more`);
  if (!(indirect.usage & GPUBufferUsage.INDIRECT)) fail('args must be an INDIRECT buffer (ctx.indirect)');
  check.fits('order', grouped.order, pairs);
  // At least pairs / TM tiles exist (more with partial ones); past the 1-D limit the indirect x cannot hold them.
  if (Math.ceil(pairs / TM) > ctx.caps.maxWorkgroupsPerDim) {
    fail(`${pairs} pairs make more tiles than the ${ctx.caps.maxWorkgroupsPerDim} workgroups of one dimension; split the prefill`);
  }
  const colTiles = Math.ceil(N / TN);
  if (colTiles > ctx.caps.maxWorkgroupsPerDim) fail(`${colTiles} column tiles pass maxComputeWorkgroupsPerDimension`);
  // y and z are static; moe_group writes only x.
  ctx.write(indirect, argsOffset + 4, new Uint32Array([colTiles, 1]));
  return Promise.all(
    w.parts.map((part) => {
      const params = {
        ...base,
        ncols: N,
        col0: 0,
        n_stride8: nStride8,
        h_stride8: hStride8,
        item_stride8: w.itemStride / 8,
        part_first: part.first,
        part_count: part.count,
        col_tiles: colTiles,
        tiles_total: 0,
      };
      return ctx.dispatch(matmulKernel, variant, { ...resources(part), params }, { indirect, offset: argsOffset });
    }),
  );
}
