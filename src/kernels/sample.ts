import type { Dispatch, GpuContext } from '../gpu/context.ts';
import { type ParamValues, packParams, read, uniform, write } from '../gpu/kernel.ts';
import { defineKernel } from './define.ts';
import { ContractError } from '../errors.ts';
import { grid } from './grid.ts';

/**
 * Sampling on the GPU in at most 1 + 17 + 1 dispatches, with no CPU write per step:
 *   sample_prepare   (G workgroups)  penalties + temperature → z; per-block softmax stats and top-n for logprobs
 *   sample_search ×17 (G workgroups) levels 0–7 find the top-k threshold, 8–15 the top-p threshold (4 bits of a
 *                                    16-way search on order-preserving keys of z per level); level 16 sums each
 *                                    block's surviving mass; levels of filters that are off are left out
 *   sample_pick      (1 workgroup)   draws from the survivors (blocked prefix sum), or argmax when greedy;
 *                                    writes out[0] and the result, counts the token, advances the RNG step
 * Every pass reads the request's options from one uniform buffer written once per request (writeSampleOptions).
 */

/**
 * Invocations per workgroup of every sample_* pass. 32: SwiftShader's barriers cost in proportion to the
 * invocations of a workgroup (a step with every filter took 12 ms at 128, 1.6 ms at 32; lavapipe was the same at
 * both). Not yet tuned on a GPU.
 */
export const SAMPLE_WG = 32;
/** Elements per invocation: a block is SAMPLE_WG · SAMPLE_U ids. */
export const SAMPLE_U = 32;
export const SAMPLE_BLOCK = SAMPLE_WG * SAMPLE_U;
/** Thresholds tested per search level (4 key bits), and levels per 32-bit search. */
export const SAMPLE_CANDIDATES = 16;
export const SAMPLE_LEVELS = 8;
/** Search dispatches: top-k levels, top-p levels, then the survivor-mass level. */
export const SAMPLE_SEARCH_DISPATCHES = 2 * SAMPLE_LEVELS + 1;
/** Most alternatives a step can report with logprobs. */
export const SAMPLE_MAX_LOGPROBS = 20;
/** Largest candidate count: counts are summed in f32, exact below 2^24. */
export const SAMPLE_MAX_IDS = 1 << 24;
/** Result words of one pick: id, then with logprobs its logprob (f32 bits) and SAMPLE_MAX_LOGPROBS (id, logprob) pairs. */
export const SAMPLE_RESULT_WORDS = 2 + 2 * SAMPLE_MAX_LOGPROBS;
/** Picks whose results one submission can keep apart (a verification's rows: runtime/speculation.ts). */
export const SAMPLE_RESULT_ROWS = 4;

/** A request's options as the kernels read them (one uniform buffer). */
export const SampleOptions = {
  greedy: 'u32',
  temperature: 'f32',
  top_k: 'u32',
  top_p: 'f32',
  min_p: 'f32',
  repetition: 'f32',
  presence: 'f32',
  frequency: 'f32',
  seed: 'u32',
  logprobs: 'u32',
} as const;
export type SampleOptionValues = ParamValues<typeof SampleOptions>;

/**
 * `row`: the logits row read (prepare: logits[row * n_logits ..]) and the element of `out` written (pick);
 * `result_row`: the row of `result` the pick writes.
 */
const SampleParams = { n: 'u32', blocks: 'u32', row: 'u32', row_stride: 'u32', result_row: 'u32' } as const;
const SearchParams = { n: 'u32', blocks: 'u32', level: 'u32' } as const;

/** Shared by every pass: constants from this file (one source of truth for the block size) and the key, RNG and stats helpers. */
const COMMON = `const SAMPLE_U = ${SAMPLE_U}u;
const SAMPLE_NC = ${SAMPLE_CANDIDATES}u;
const SAMPLE_LEVELS = ${SAMPLE_LEVELS}u;
const SAMPLE_MAX_LP = ${SAMPLE_MAX_LOGPROBS}u;
const SAMPLE_RESULT_WORDS = ${SAMPLE_RESULT_WORDS}u;
const NONE = 0xffffffffu;
// Below every clamped z (prepare keeps z in [-3e38, 3e38]).
const SAMPLE_LOW = -3.4e38;
// Order-preserving f32 → u32 (−0 counts as +0), so thresholds are searched on integers and equal z tie exactly.
fn sample_key(z: f32) -> u32 {
  let b = select(bitcast<u32>(z), 0u, z == 0.0);
  return select(b | 0x80000000u, ~b, b >= 0x80000000u);
}
// (a, ia) ranks before (b, ib): larger z first, then the lower id; NONE ranks last.
fn ranks_before(a: f32, ia: u32, b: f32, ib: u32) -> bool {
  return ia != NONE && (ib == NONE || a > b || (a == b && ia < ib));
}
// lowbias32 (Wellons): the counter-based RNG's mixer.
fn sample_hash(x: u32) -> u32 {
  var h = x;
  h ^= h >> 16u;
  h *= 0x7feb352du;
  h ^= h >> 15u;
  h *= 0x846ca68bu;
  h ^= h >> 16u;
  return h;
}
// u in [0, 1) for step \`step\` of a request: 24 bits, exact in f32 (src/reference/sample.ts sampleUniform).
fn sample_uniform(seed: u32, step: u32) -> f32 {
  return f32(sample_hash(sample_hash(seed ^ 0x5851f42du) + step * 0x9e3779b9u) >> 8u) * (1.0 / 16777216.0);
}`;

/**
 * Max, Σ exp(z - max) and lowest index of the max over the blocks' stats. Every invocation walks the blocks in the
 * same order, so all workgroups and passes agree bit for bit, with no barrier (each barrier site costs lavapipe
 * seconds of cold compile). Run by the first search level (which leaves max z in state[1]) and by sample_pick.
 */
const STATS = `struct SampleStats { m: f32, s: f32, i: u32 }
fn sample_stats() -> SampleStats {
  var m = SAMPLE_LOW;
  var s = 0.0;
  var i = NONE;
  for (var g = 0u; g < params.blocks; g++) {
    let bm = bitcast<f32>(stats[4u * g]);
    let nm = max(m, bm);
    s = s * exp(m - nm) + bitcast<f32>(stats[4u * g + 2u]) * exp(bm - nm);
    if (bm > m) { i = stats[4u * g + 1u]; }
    m = nm;
  }
  return SampleStats(m, s, i);
}`;

const overrides = () => ({ WG: SAMPLE_WG });

/** Pass 1. Grid: one workgroup per block of SAMPLE_BLOCK ids. */
export const samplePrepareKernel = defineKernel({
  name: 'sample_prepare',
  bindings: () => [
    read('logits'),
    read('seen', 'u32'),
    read('counts', 'u32'),
    write('z'),
    write('stats', 'u32'),
    write('cand', 'u32'),
    uniform('opts', SampleOptions),
    uniform('params', SampleParams),
  ],
  helpers: () => COMMON,
  overrides,
});

/** Search levels (params.level 0..16; sampleLevels says which a request needs). Grid: one workgroup per block. */
export const sampleSearchKernel = defineKernel({
  name: 'sample_search',
  bindings: () => [read('z'), read('stats', 'u32'), write('part'), write('state', 'u32'), uniform('opts', SampleOptions), uniform('params', SearchParams)],
  helpers: () => `${COMMON}\n${STATS}`,
  overrides,
});

/** Last pass. Grid: one workgroup. */
export const samplePickKernel = defineKernel({
  name: 'sample_pick',
  bindings: () => [
    read('z'),
    read('stats', 'u32'),
    read('cand', 'u32'),
    read('part'),
    write('state', 'u32'),
    write('counts', 'u32'),
    write('out', 'u32'),
    write('result', 'u32'),
    uniform('opts', SampleOptions),
    uniform('params', SampleParams),
  ],
  helpers: () => `${COMMON}\n${STATS}`,
  overrides,
});

/**
 * state words: [0] RNG step; [1] max z (from the first search level that runs); [4 + 4p .. 8 + 4p) search state
 * after a level of parity p: top-k key, top-p key, top-p goal (f32 bits).
 */
export const SAMPLE_STATE_WORDS = 12;

/** The buffers of one sampler: sized for `n` candidate ids (the tokenizer's size) out of `vocab` logits rows. */
export interface SampleScratch {
  vocab: number;
  n: number;
  /** Blocks of SAMPLE_BLOCK ids: ceil(n / SAMPLE_BLOCK). */
  blocks: number;
  /** Uniform: the request's SampleOptions. */
  opts: GPUBuffer;
  /** [n] u32, written by the CPU: bit 31 = in the prompt, bits 0..30 = times forced (markGenerated). */
  seen: GPUBuffer;
  /** [n] u32, written by sample_pick: times sampled. */
  counts: GPUBuffer;
  /** [n] f32: penalised, temperature-scaled logits of the last step. */
  z: GPUBuffer;
  /** [blocks, 4] u32: (max z bits, lowest index of the max, Σ exp(z - max) bits, 0). */
  stats: GPUBuffer;
  /** [blocks, SAMPLE_MAX_LOGPROBS, 2] u32: each block's largest z (bits, id), for logprobs. */
  cand: GPUBuffer;
  /** [2, blocks, SAMPLE_CANDIDATES] f32: search partial sums, ping-ponged by level parity. */
  part: GPUBuffer;
  /** [SAMPLE_STATE_WORDS] u32. */
  state: GPUBuffer;
  /** [SAMPLE_RESULT_ROWS, SAMPLE_RESULT_WORDS] u32: what a step reads back (row 0; a verification, a row per pick). */
  result: GPUBuffer;
  /** [SAMPLE_RESULT_ROWS] u32: ids whose counts sample_uncount takes back (NONE: no id). */
  dropped: GPUBuffer;
  buffers: GPUBuffer[];
}

function fail(message: string): never {
  throw new ContractError(message, 'sample');
}

export function createSampleScratch(ctx: GpuContext, vocab: number, n: number): SampleScratch {
  if (!Number.isInteger(vocab) || vocab < 1) fail(`vocab = ${vocab} must be a positive integer`);
  if (!Number.isInteger(n) || n < 1 || n > vocab) fail(`n = ${n} must be an integer in [1, vocab = ${vocab}]`);
  if (n > SAMPLE_MAX_IDS) fail(`n = ${n} passes ${SAMPLE_MAX_IDS} (counts are summed in f32)`);
  const blocks = Math.ceil(n / SAMPLE_BLOCK);
  const s = (label: string, bytes: number) => ctx.storage(`sample ${label}`, bytes);
  const scratch: Omit<SampleScratch, 'buffers'> = {
    vocab,
    n,
    blocks,
    opts: ctx.createBuffer('sample opts', 48, GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST),
    seen: s('seen', n * 4),
    counts: s('counts', n * 4),
    z: s('z', n * 4),
    stats: s('stats', blocks * 16),
    cand: s('cand', blocks * SAMPLE_MAX_LOGPROBS * 8),
    part: s('part', 2 * blocks * SAMPLE_CANDIDATES * 4),
    state: s('state', SAMPLE_STATE_WORDS * 4),
    result: s('result', SAMPLE_RESULT_ROWS * SAMPLE_RESULT_WORDS * 4),
    dropped: s('dropped', SAMPLE_RESULT_ROWS * 4),
  };
  return { ...scratch, buffers: Object.values(scratch).filter((v): v is GPUBuffer => typeof v === 'object') };
}

/** Writes a request's options (validated by the caller; see GpuSampler.begin). */
export function writeSampleOptions(ctx: GpuContext, scratch: SampleScratch, values: SampleOptionValues): void {
  if (values.greedy === 0 && !(values.temperature > 0)) fail(`temperature ${values.temperature} must be > 0 unless greedy`);
  if (values.logprobs > SAMPLE_MAX_LOGPROBS || values.logprobs > scratch.n)
    fail(`logprobs ${values.logprobs} passes ${Math.min(SAMPLE_MAX_LOGPROBS, scratch.n)}`);
  if (values.top_k >= scratch.n) fail(`top_k ${values.top_k} must be below n = ${scratch.n} (0 = off)`);
  ctx.write(scratch.opts, 0, packParams(SampleOptions, values));
}

function checkLogits(scratch: SampleScratch, logits: GPUBuffer, row: number): void {
  if (!Number.isInteger(row) || row < 0) fail(`row = ${row} must be a non-negative integer`);
  const bytes = (row * scratch.vocab + scratch.n) * 4;
  if (logits.size < bytes) fail(`logits (${logits.label}) holds ${logits.size} bytes, needs ${bytes} for row ${row}`);
  if (scratch.buffers.includes(logits)) fail('logits must not be a scratch buffer');
}

/** Pass 1: z = penalised logits / T into scratch.z, block stats, and block top-n when logprobs are asked for. */
export function samplePrepare(ctx: GpuContext, a: { logits: GPUBuffer; scratch: SampleScratch; row?: number }): Promise<Dispatch> {
  const s = a.scratch;
  const row = a.row ?? 0;
  checkLogits(s, a.logits, row);
  return ctx.dispatch(
    samplePrepareKernel,
    undefined,
    {
      logits: a.logits,
      seen: s.seen,
      counts: s.counts,
      z: s.z,
      stats: s.stats,
      cand: s.cand,
      opts: s.opts,
      params: { n: s.n, blocks: s.blocks, row, row_stride: s.vocab, result_row: 0 },
    },
    grid(s.blocks, ctx.caps),
  );
}

/** One search level (0..16); the levels must run in order after samplePrepare. */
export function sampleSearch(ctx: GpuContext, a: { scratch: SampleScratch; level: number }): Promise<Dispatch> {
  const s = a.scratch;
  if (!Number.isInteger(a.level) || a.level < 0 || a.level >= SAMPLE_SEARCH_DISPATCHES) {
    fail(`level = ${a.level} must be an integer in [0, ${SAMPLE_SEARCH_DISPATCHES})`);
  }
  return ctx.dispatch(
    sampleSearchKernel,
    undefined,
    { z: s.z, stats: s.stats, part: s.part, state: s.state, opts: s.opts, params: { n: s.n, blocks: s.blocks, level: a.level } },
    grid(s.blocks, ctx.caps),
  );
}

/** Last pass: the token into out[row] and row `resultRow` of scratch.result; counts it and advances the RNG step. */
export function samplePick(ctx: GpuContext, a: { scratch: SampleScratch; out: GPUBuffer; row?: number; resultRow?: number }): Promise<Dispatch> {
  const s = a.scratch;
  const row = a.row ?? 0;
  const resultRow = a.resultRow ?? 0;
  if (a.out.size < (row + 1) * 4) fail(`out (${a.out.label}) holds ${a.out.size} bytes, needs ${(row + 1) * 4} for row ${row}`);
  if (!Number.isInteger(resultRow) || resultRow < 0 || resultRow >= SAMPLE_RESULT_ROWS)
    fail(`resultRow = ${resultRow} must be an integer in [0, ${SAMPLE_RESULT_ROWS})`);
  if (s.buffers.includes(a.out)) fail('out must not be a scratch buffer');
  return ctx.dispatch(
    samplePickKernel,
    undefined,
    {
      z: s.z,
      stats: s.stats,
      cand: s.cand,
      part: s.part,
      state: s.state,
      counts: s.counts,
      out: a.out,
      result: s.result,
      opts: s.opts,
      params: { n: s.n, blocks: s.blocks, row, row_stride: s.vocab, result_row: resultRow },
    },
    [1],
  );
}

/** Takes back one count of each id in scratch.dropped (picks a verification did not keep). Grid: one invocation. */
export const sampleUncountKernel = defineKernel({
  name: 'sample_uncount',
  bindings: () => [read('dropped', 'u32'), write('counts', 'u32')],
});

/** Writes `ids` (at most SAMPLE_RESULT_ROWS) to scratch.dropped, whose counts sampleUncount's dispatch then takes back. */
export function writeDropped(ctx: GpuContext, scratch: SampleScratch, ids: readonly number[]): void {
  if (ids.length > SAMPLE_RESULT_ROWS) fail(`${ids.length} dropped picks (at most ${SAMPLE_RESULT_ROWS})`);
  for (const id of ids) if (!Number.isInteger(id) || id < 0 || id >= scratch.n) fail(`dropped id ${id} is not a candidate (0..${scratch.n - 1})`);
  ctx.write(
    scratch.dropped,
    0,
    Uint32Array.from({ length: SAMPLE_RESULT_ROWS }, (_, i) => ids[i] ?? 0xffffffff),
  );
}

/** The dispatch of sample_uncount over scratch.dropped (write it first: writeDropped). */
export function sampleUncount(ctx: GpuContext, a: { scratch: SampleScratch }): Promise<Dispatch> {
  return ctx.dispatch(sampleUncountKernel, undefined, { dropped: a.scratch.dropped, counts: a.scratch.counts }, [1]);
}

/** The search levels a request needs: top-k's and top-p's when those are on, then level 16; none when greedy. */
export function sampleLevels(o: SampleOptionValues): number[] {
  if (o.greedy) return [];
  const levels: number[] = [];
  for (let l = 0; l < SAMPLE_LEVELS; l++) {
    if (o.top_k !== 0) levels.push(l);
    if (o.top_p < 1) levels.push(SAMPLE_LEVELS + l);
  }
  return [...levels.sort((a, b) => a - b), 2 * SAMPLE_LEVELS];
}

/**
 * Every pass of one sampling step, in order (encode them in one compute pass, e.g. after the step's forward):
 * prepare, the given search levels (sampleLevels of the options written to scratch.opts), pick. From logits row
 * `logitsRow` ([rows, vocab]) into out[outRow] (default 0 both: a batch's sequences have rows of their own).
 */
export async function sample(
  ctx: GpuContext,
  a: { logits: GPUBuffer; out: GPUBuffer; scratch: SampleScratch; levels: readonly number[]; logitsRow?: number; outRow?: number; resultRow?: number },
): Promise<Dispatch[]> {
  if (a.levels.some((l, i) => i > 0 && l <= a.levels[i - 1])) fail(`levels ${a.levels.join(',')} must rise`);
  return Promise.all([
    samplePrepare(ctx, { ...a, row: a.logitsRow }),
    ...a.levels.map((level) => sampleSearch(ctx, { scratch: a.scratch, level })),
    samplePick(ctx, { ...a, row: a.outRow }),
  ]);
}
