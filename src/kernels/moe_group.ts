import { read, uniform, write } from '../gpu/kernel.ts';
import { defineKernel } from './define.ts';
import type { Dispatch, GpuContext } from '../gpu/context.ts';
import { checks } from './checks.ts';
import { grid } from './grid.ts';

/** Pairs per workgroup in the count and scatter passes; scan invocations. */
const WG = 256;
/** Largest expert count: workgroup histograms of MAX_E u32 (4 KiB; the scan pass holds 2 × 4 KiB + 2 KiB). */
export const MOE_GROUP_MAX_EXPERTS = 1024;
const overrides = () => ({ WG, MAX_E: MOE_GROUP_MAX_EXPERTS });

const PairParams = { pairs: 'u32', experts: 'u32' } as const;

/** Pass 1: histogram of expert ids into scratch counts. Grid: ceil(pairs / WG). */
export const moeGroupCountKernel = defineKernel({
  name: 'moe_group_count',
  bindings: () => [read('ids', 'u32'), write('counts', 'atomic<u32>'), uniform('params', PairParams)],
  overrides,
});

/** Pass 2 (one workgroup): expert offsets, tiles, indirect x counts; re-zeroes counts. */
export const moeGroupScanKernel = defineKernel({
  name: 'moe_group_scan',
  bindings: () => [
    write('counts', 'atomic<u32>'),
    write('cursor', 'atomic<u32>'),
    write('tiles', 'vec4<u32>'),
    write('args', 'u32'),
    uniform('params', { experts: 'u32', tile_tokens: 'u32' }),
  ],
  overrides,
});

/** Pass 3: order[cursor[e]++] = p. Grid: ceil(pairs / WG). */
export const moeGroupScatterKernel = defineKernel({
  name: 'moe_group_scatter',
  bindings: () => [read('ids', 'u32'), write('cursor', 'atomic<u32>'), write('order', 'u32'), uniform('params', PairParams)],
  overrides,
});

/** Capacity of `tiles`: Σ_e ceil(c_e / tileTokens) ≤ floor(pairs / tileTokens) + min(experts, pairs). */
export function maxMoeTiles(tokens: number, topk: number, experts: number, tileTokens: number): number {
  return Math.ceil((tokens * topk) / tileTokens) + experts;
}

/** Per-expert counters. Zero when created (WebGPU zero-fills buffers) and left zero by every moeGroup. */
export interface MoeGroupScratch {
  experts: number;
  /** [experts] u32: pair counts, between the count and scan passes. */
  counts: GPUBuffer;
  /** [experts] u32: next free slot of each expert in `order`, between the scan and scatter passes. */
  cursor: GPUBuffer;
}

const check = checks('moe_group');

export function createMoeGroupScratch(ctx: GpuContext, experts: number): MoeGroupScratch {
  check.count('experts', experts, 1, MOE_GROUP_MAX_EXPERTS);
  return { experts, counts: ctx.storage('moe_group counts', experts * 4), cursor: ctx.storage('moe_group cursor', experts * 4) };
}

/**
 * Groups the T·topk pairs p = t*topk + j by expert ids[p]:
 *   order: u32[T*topk], pair indices, all pairs of an expert contiguous (in no particular order within it);
 *   tiles: vec4<u32>, tile i = (expertId, start, count, 0): pairs order[start .. start+count), 1 ≤ count ≤ tileTokens,
 *          experts ascending; capacity maxMoeTiles(...);
 *   args:  ctx.indirect buffer of two triples [x0,y0,z0,x1,y1,z1]: x0 = x1 = number of tiles; y, z untouched.
 * Three dispatches, to be encoded in order in one pass; rerunnable on the same buffers (scan re-zeroes counts).
 */
export async function moeGroup(
  ctx: GpuContext,
  a: {
    ids: GPUBuffer;
    tokens: number;
    experts: number;
    topk: number;
    tileTokens: number;
    order: GPUBuffer;
    tiles: GPUBuffer;
    args: GPUBuffer;
    scratch: MoeGroupScratch;
  },
): Promise<Dispatch[]> {
  const { tokens, experts, topk, tileTokens } = a;
  check.counts({ tokens, topk, tileTokens });
  check.count('experts', experts, 1, MOE_GROUP_MAX_EXPERTS);
  if (a.scratch.experts < experts) check.fail(`scratch was created for ${a.scratch.experts} experts, not ${experts}`);
  const pairs = tokens * topk;
  if (pairs > 0xffffffff) check.fail(`${pairs} pairs do not fit u32 indices`);
  const maxTiles = maxMoeTiles(tokens, topk, experts, tileTokens);
  if (maxTiles > ctx.caps.maxWorkgroupsPerDim) {
    check.fail(`up to ${maxTiles} tiles pass the adapter's ${ctx.caps.maxWorkgroupsPerDim} workgroups per dimension (indirect x)`);
  }
  check.fits('ids', a.ids, pairs);
  check.fits('order', a.order, pairs);
  check.fits('tiles', a.tiles, maxTiles, 16);
  check.fits('args', a.args, 6);
  if (!(a.args.usage & GPUBufferUsage.INDIRECT)) check.fail(`args (${a.args.label}) lacks INDIRECT usage (create it with ctx.indirect)`);
  check.distinct({ ids: a.ids, order: a.order, tiles: a.tiles, args: a.args, 'scratch counts': a.scratch.counts, 'scratch cursor': a.scratch.cursor });

  const pairGrid = grid(Math.ceil(pairs / WG), ctx.caps);
  const params = { pairs, experts };
  return Promise.all([
    ctx.dispatch(moeGroupCountKernel, undefined, { ids: a.ids, counts: a.scratch.counts, params }, pairGrid),
    ctx.dispatch(
      moeGroupScanKernel,
      undefined,
      { counts: a.scratch.counts, cursor: a.scratch.cursor, tiles: a.tiles, args: a.args, params: { experts, tile_tokens: tileTokens } },
      [1],
    ),
    ctx.dispatch(moeGroupScatterKernel, undefined, { ids: a.ids, cursor: a.scratch.cursor, order: a.order, params }, pairGrid),
  ]);
}
