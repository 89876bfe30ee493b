import type { Dispatch, GpuContext } from '../gpu/context.ts';
import { StepParams, read, uniform, write } from '../gpu/kernel.ts';
import { defineKernel } from './define.ts';
import { checkAttentionShape } from './attention_prepare.ts';
import { checks } from './checks.ts';
import { grid } from './grid.ts';
import { type PositionLayout, type TokenPositions, positionLayout, tokenPositionsWgsl } from './rows.ts';

/** Which pass of the kernel: the whole attention for each (token, head), or the split-keys partials and their merge. */
export type AttentionStage = 'single' | 'partial' | 'merge';
export interface AttentionVariant {
  headDim: number;
  stage: AttentionStage;
  /** Each token a sequence of its own (rows), rows of one sequence at given positions, or consecutive tokens of one (step). */
  layout: PositionLayout;
}

const STAGES: Record<AttentionStage, number> = { single: 0, partial: 1, merge: 2 };
/** 64 invocations and blocks of 16 keys (4 lanes per key's dot product) measured fastest on an H100 (Vulkan). */
const WG = 64;
const KB = 16;
/** Output vec4s an invocation owns (NACC in the shader) and the q tile (256 vec4) bound headDim. */
const MAX_HEAD_DIM = 4 * 4 * WG;

/**
 * Gated causal GQA attention over the KV cache (activations: f32 or f16) with an online softmax; one workgroup per (token, head,
 * key split). The stages share one binding list so that a single shader holds all three.
 */
export const attentionKernel = defineKernel<AttentionVariant>({
  name: 'attention',
  bindings: (v) => [
    read('q', 'vec4<act>'),
    read('k_cache', 'vec4<act>'),
    read('v_cache', 'vec4<act>'),
    read('proj', 'act'),
    v.layout !== 'step' ? read('positions', 'u32') : uniform('step', StepParams),
    write('out', 'vec4<act>'),
    write('part', 'vec4<f32>'),
    uniform('params', {
      tokens: 'u32',
      nq: 'u32',
      group: 'u32',
      capacity: 'u32',
      proj_stride: 'u32',
      splits: 'u32',
      min_chunk: 'u32',
      scale: 'f32',
    }),
  ],
  helpers: (v) => tokenPositionsWgsl(v.layout, '(params.nq / params.group)', true),
  overrides: (v) => ({ WG, KB, HD: v.headDim, STAGE: STAGES[v.stage], NACC: Math.ceil(v.headDim / 4 / WG) }),
});

export type AttentionArgs = AttentionTensors & TokenPositions;

interface AttentionTensors {
  /** [tokens, nq, headDim] activations (normed and rotated by attentionPrepare). */
  q: GPUBuffer;
  /** The projection rows attentionPrepare read; the gate of head h is at h*2*headDim + headDim. */
  proj: GPUBuffer;
  projStride: number;
  tokens: number;
  nq: number;
  nkv: number;
  headDim: number;
  /** [nkv, capacity, headDim] activations each ([tokens, nkv, capacity, headDim] with positions). */
  kCache: GPUBuffer;
  vCache: GPUBuffer;
  capacity: number;
  /** [tokens, nq*headDim] activations. */
  out: GPUBuffer;
  /** Key splits per (token, head); default: enough workgroups to fill a GPU when tokens*nq is small. */
  splits?: number;
  /** A split takes at least this many keys (default 256), so short contexts use few splits. */
  minSplitKeys?: number;
  /**
   * Scratch for the split partials, of attentionScratchBytes for these shapes: owned by the caller (the session's
   * activations), so that no buffer outlives the dispatches that bind it.
   */
  scratch: GPUBuffer;
}

/**
 * Below this many (token, head) rows, keys are split across workgroups (decode, short verification batches).
 * One workgroup streams K/V at a few GB/s, so decode needs about a thousand of them: on an H100, nq 16 / nkv 4 at
 * 32k keys ran 5.6 ms with one split per head and 0.17 ms with 64.
 */
const TARGET_WORKGROUPS = 1024;
const MAX_SPLITS = 64;

export function defaultSplits(tokens: number, nq: number, capacity: number, minSplitKeys = 256): number {
  const rows = tokens * nq;
  if (rows >= TARGET_WORKGROUPS) return 1;
  return Math.max(1, Math.min(MAX_SPLITS, Math.ceil(TARGET_WORKGROUPS / rows), Math.ceil(capacity / minSplitKeys)));
}

/** Bytes of split partials that `tokens` tokens need (16 without splits: the binding still needs a buffer). */
function partialsBytes(tokens: number, nq: number, headDim: number, splits: number): number {
  return splits === 1 ? 16 : tokens * nq * splits * (headDim + 4) * 4;
}

/**
 * Scratch bytes for every call of up to `maxTokens` tokens (default splits, or `splits`): sized once for the
 * largest, since a call's need depends on its token count and every prompt length must fit the same buffer.
 */
export function attentionScratchBytes(s: { maxTokens: number; nq: number; capacity: number; headDim: number; splits?: number; minSplitKeys?: number }): number {
  let bytes = 16;
  for (let t = 1; t <= s.maxTokens; t++) {
    const splits = s.splits ?? defaultSplits(t, s.nq, s.capacity, s.minSplitKeys);
    bytes = Math.max(bytes, partialsBytes(t, s.nq, s.headDim, splits));
  }
  return bytes;
}

const check = checks('attention');

/**
 * out[t, h*D + d] = softmax over p ≤ pos+t (with positions: p ≤ positions[t], in token t's cache) of (q[t,h]·K[g,p] / √D) applied to V[g,p,d], times sigmoid(gate[t,h,d]),
 * g = h / (nq/nkv). One dispatch, or two (partials over key splits, then their merge).
 */
export async function attention(ctx: GpuContext, a: AttentionArgs): Promise<Dispatch[]> {
  checkAttentionShape(check, a, ctx.activationBytes);
  const { tokens, nq, nkv, headDim: D, projStride, capacity } = a;
  if (D % 4 !== 0 || D > MAX_HEAD_DIM) check.fail(`headDim ${D} must be a multiple of 4 and ≤ ${MAX_HEAD_DIM}`);
  if (nq * 2 * D > projStride) check.fail(`q|gate of ${nq} heads (${nq * 2 * D}) pass projStride ${projStride}`);
  const minSplitKeys = a.minSplitKeys ?? 256;
  check.count('minSplitKeys', minSplitKeys);
  const splits = a.splits ?? defaultSplits(tokens, nq, capacity, minSplitKeys);
  check.count('splits', splits);
  check.fits('proj', a.proj, (tokens - 1) * projStride + nq * 2 * D, ctx.activationBytes);
  check.fits('out', a.out, tokens * nq * D, ctx.activationBytes);

  const rows = tokens * nq;
  check.fits('scratch', a.scratch, partialsBytes(tokens, nq, D, splits) / 4);
  const part = a.scratch;
  const params = {
    tokens,
    nq,
    group: nq / nkv,
    capacity,
    proj_stride: projStride,
    splits,
    min_chunk: minSplitKeys,
    scale: 1 / Math.sqrt(D),
  };
  const positions: Record<string, GPUBuffer> = a.positions ? { positions: a.positions } : { step: a.step! };
  const resources = { q: a.q, k_cache: a.kCache, v_cache: a.vCache, proj: a.proj, ...positions, out: a.out, part, params };
  const variant = (stage: AttentionStage): AttentionVariant => ({ headDim: D, stage, layout: positionLayout(a) });
  if (splits === 1) {
    return [await ctx.dispatch(attentionKernel, variant('single'), resources, grid(rows, ctx.caps))];
  }
  return Promise.all([
    ctx.dispatch(attentionKernel, variant('partial'), resources, grid(rows * splits, ctx.caps)),
    ctx.dispatch(attentionKernel, variant('merge'), resources, grid(rows, ctx.caps)),
  ]);
}
