import { read, uniform, write } from '../gpu/kernel.ts';
import { defineKernel } from './define.ts';
import type { Dispatch, GpuContext } from '../gpu/context.ts';
import { CapabilityError } from '../errors.ts';
import { grid } from './grid.ts';
import { checks } from './checks.ts';
import { type GatedDeltaNetArgs, checkGatedDeltaNetArgs } from './gated_delta_net_args.ts';

/** Tokens per chunk (HF torch_chunk_gated_delta_rule's chunk_size); fixed by all three shaders. */
export const CHUNK = 64;
/** State columns per scan and output workgroup (shaders/gated_delta_net_chunk_{scan,output}.wgsl). */
const SCAN_DVT = 16;
/** Scan and output keep a [dk, 16] state tile in workgroup memory: dk <= 128 stays within 16 KiB with their other arrays. */
const MAX_DK = 128;

const PrepareParams = {
  tokens: 'u32',
  nk: 'u32',
  nv: 'u32',
  dk: 'u32',
  dv: 'u32',
  ratio: 'u32',
  qkv_stride: 'u32',
  ba_stride: 'u32',
  b_off: 'u32',
  a_off: 'u32',
  tp: 'u32',
  chunks: 'u32',
} as const;

const ScanParams = {
  tokens: 'u32',
  nk: 'u32',
  nv: 'u32',
  dv: 'u32',
  ratio: 'u32',
  qkv_stride: 'u32',
  tp: 'u32',
  chunks: 'u32',
} as const;

/** Per (chunk, value head): gates, decay sums, gram matrices and the triangular solve. Grid: chunks * nv. */
export const gatedDeltaNetChunkPrepareKernel = defineKernel({
  name: 'gated_delta_net_chunk_prepare',
  bindings: () => [read('qkv', 'act'), read('ba', 'act'), read('decay_params'), write('uw'), write('attn'), write('gate'), uniform('params', PrepareParams)],
});

/**
 * Scan and output stream [C][DT] tiles through workgroup memory (`stage`): each of the 256 invocations stores
 * the 4 elements e = li + 256 m it prefetched. Rows are rotated per pair so that the 8 rows a warp reads at one
 * column sit in 8 banks.
 */
const STAGE_TILE = `fn swz(i: u32, d: u32) -> u32 { return i * DT + (d + (i >> 1u)) % DT; }
fn stage_tile(pf: vec4<f32>, li: u32) {
  for (var m = 0u; m < 4u; m++) {
    let e = li + 256u * m;
    stage[swz(e / DT, e % DT)] = pf[m];
  }
}`;
const stagedTileHelpers = (v: { dk: number }) => `const DK: u32 = ${v.dk}u;\n${STAGE_TILE}`;

/** Per (value head, 16 state columns): the sequential scan over chunks (v_new, state snapshots, final state). Grid: nv * ceil(dv / 16). */
export const gatedDeltaNetChunkScanKernel = defineKernel<{ dk: number }>({
  name: 'gated_delta_net_chunk_scan',
  bindings: () => [read('qkv', 'act'), write('uw'), read('gate'), write('hs'), write('state'), uniform('params', ScanParams)],
  helpers: stagedTileHelpers,
});

/** Per (chunk, value head, 16 columns): the outputs from the chunk-start states. Grid: chunks * nv * ceil(dv / 16). */
export const gatedDeltaNetChunkOutputKernel = defineKernel<{ dk: number }>({
  name: 'gated_delta_net_chunk_output',
  bindings: () => [read('qkv', 'act'), read('uw'), read('attn'), read('gate'), read('hs'), write('out', 'act'), uniform('params', ScanParams)],
  helpers: stagedTileHelpers,
});

/** Intermediates of one chunked call, reusable by every GDN layer of the same shape (calls run in order). */
export interface ChunkScratch {
  readonly maxTokens: number;
  readonly nv: number;
  readonly dk: number;
  readonly dv: number;
  /** [nv, tp, dv + dk]: U | W per token row */
  readonly uw: GPUBuffer;
  /** [nv, tp, 64]: (q k^T) ⊙ D rows */
  readonly attn: GPUBuffer;
  /** [nv, tp, 2]: e^cum, e^(cum_last - cum) */
  readonly gate: GPUBuffer;
  /** [nv, chunks, dk, dv]: the state at each chunk's start */
  readonly hs: GPUBuffer;
}

const padded = (tokens: number) => Math.ceil(tokens / CHUNK) * CHUNK;

function scratchBytes(tokens: number, nv: number, dk: number, dv: number) {
  const rows = nv * padded(tokens);
  return { uw: rows * (dv + dk) * 4, attn: rows * CHUNK * 4, gate: rows * 2 * 4, hs: (rows / CHUNK) * dk * dv * 4 };
}

const check = checks('gated_delta_net_chunk');

/** Scratch for up to `maxTokens` tokens per call; longer prompts go in several calls (the state carries over exactly). */
export function createChunkScratch(ctx: GpuContext, maxTokens: number, nv: number, dk: number, dv: number): ChunkScratch {
  check.counts({ 'scratch maxTokens': maxTokens, 'scratch nv': nv, 'scratch dk': dk, 'scratch dv': dv });
  const bytes = scratchBytes(maxTokens, nv, dk, dv);
  const limit = Math.min(ctx.caps.maxStorageBindingBytes, ctx.caps.maxBufferBytes);
  for (const [name, size] of Object.entries(bytes)) {
    if (size > limit) {
      throw new CapabilityError(
        `gated_delta_net_chunk: scratch ${name} for ${maxTokens} tokens × ${nv} heads takes ${size} bytes, more than the adapter's binding limit ${limit}; use a smaller maxTokens and prefill in several calls`,
        'maxStorageBufferBindingSize',
      );
    }
  }
  return {
    maxTokens,
    nv,
    dk,
    dv,
    uw: ctx.storage('gdn chunk U|W', bytes.uw),
    attn: ctx.storage('gdn chunk attn', bytes.attn),
    gate: ctx.storage('gdn chunk gate', bytes.gate),
    hs: ctx.storage('gdn chunk states', bytes.hs),
  };
}

/**
 * Chunked GDN prefill (UT transform over chunks of 64, spec §2.3): the results of HF torch_recurrent_gated_delta_rule
 * (and of gatedDeltaNetStep).
 * Three dispatches: prepare (parallel over chunks × value heads: gates, gram matrices, triangular solve), scan
 * (sequential over chunks, parallel over value heads × 16-column tiles: v_new and the state), output (parallel over
 * chunks × value heads × 16-column tiles).
 */
export async function gatedDeltaNetChunk(ctx: GpuContext, a: GatedDeltaNetArgs & { scratch: ChunkScratch }): Promise<Dispatch[]> {
  checkGatedDeltaNetArgs(check, a, ctx.activationBytes);
  const { scratch } = a;
  if (a.dk > MAX_DK) check.fail(`dk = ${a.dk} is more than ${MAX_DK} (the scan's state tile must fit workgroup memory)`);
  if (a.dv % 4 !== 0) check.fail(`dv = ${a.dv} is not a multiple of 4 (state columns go 4 at a time)`);
  if (a.tokens > scratch.maxTokens) check.fail(`${a.tokens} tokens is more than the scratch's maxTokens ${scratch.maxTokens}; split the call`);
  const need = scratchBytes(a.tokens, a.nv, a.dk, a.dv);
  for (const name of ['uw', 'attn', 'gate', 'hs'] as const) {
    if (need[name] > scratch[name].size)
      check.fail(`scratch ${name} has ${scratch[name].size} bytes, ${need[name]} needed for nv = ${a.nv}, dk = ${a.dk}, dv = ${a.dv}`);
  }
  const inputs = [a.qkv, a.ba, a.decayParams, a.state, a.out];
  if ([scratch.uw, scratch.attn, scratch.gate, scratch.hs].some((b) => inputs.includes(b))) check.fail('scratch buffers must not be arguments');

  const chunks = Math.ceil(a.tokens / CHUNK);
  const tp = chunks * CHUNK;
  const ratio = a.nv / a.nk;
  const common = { tokens: a.tokens, nk: a.nk, nv: a.nv, dv: a.dv, ratio, qkv_stride: a.qkvStride, tp, chunks };
  const { uw, attn, gate, hs } = scratch;
  const tiles = Math.ceil(a.dv / SCAN_DVT);
  return Promise.all([
    ctx.dispatch(
      gatedDeltaNetChunkPrepareKernel,
      undefined,
      {
        qkv: a.qkv,
        ba: a.ba,
        decay_params: a.decayParams,
        uw,
        attn,
        gate,
        params: { ...common, dk: a.dk, ba_stride: a.baStride, b_off: a.bOffset, a_off: a.aOffset },
      },
      grid(chunks * a.nv, ctx.caps),
    ),
    ctx.dispatch(gatedDeltaNetChunkScanKernel, { dk: a.dk }, { qkv: a.qkv, uw, gate, hs, state: a.state, params: common }, grid(a.nv * tiles, ctx.caps)),
    ctx.dispatch(
      gatedDeltaNetChunkOutputKernel,
      { dk: a.dk },
      { qkv: a.qkv, uw, attn, gate, hs, out: a.out, params: common },
      grid(chunks * a.nv * tiles, ctx.caps),
    ),
  ]);
}
