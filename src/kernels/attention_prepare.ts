import type { Dispatch, GpuContext } from '../gpu/context.ts';
import { StepParams, read, uniform, write } from '../gpu/kernel.ts';
import { defineKernel } from './define.ts';
import { workgroupSumF32 } from '../gpu/wgsl.ts';
import { type Checks, checks } from './checks.ts';
import { grid } from './grid.ts';
import { type PositionLayout, type TokenPositions, positionLayout, tokenPositionsWgsl } from './rows.ts';

/**
 * Gated attention, first half: q/k RMSNorm1p over head_dim, partial RoPE (rotate-half), q out, K/V cache write.
 * Grid: one workgroup per (token, head) over nq query heads then nkv key/value heads.
 */
export const attentionPrepareKernel = defineKernel<{ layout: PositionLayout }>({
  name: 'attention_prepare',
  bindings: (v) => [
    read('proj', 'act'),
    read('q_norm'),
    read('k_norm'),
    read('rope', 'vec2<f32>'),
    v.layout !== 'step' ? read('positions', 'u32') : uniform('step', StepParams),
    write('q', 'act'),
    write('k_cache', 'act'),
    write('v_cache', 'act'),
    uniform('params', {
      tokens: 'u32',
      nq: 'u32',
      nkv: 'u32',
      head_dim: 'u32',
      rotary_dim: 'u32',
      proj_stride: 'u32',
      k_offset: 'u32',
      v_offset: 'u32',
      capacity: 'u32',
      eps: 'f32',
    }),
  ],
  helpers: (v, caps) => `${workgroupSumF32(caps)}\n${tokenPositionsWgsl(v.layout, 'params.nkv', false)}`,
  overrides: () => ({ WG: 64 }),
});

export type AttentionPrepareArgs = AttentionPrepareTensors & TokenPositions;

interface AttentionPrepareTensors {
  /** [tokens, projStride] activations: per row [q_0 | gate_0 | … | q_{nq-1} | gate_{nq-1}], k at kOffset, v at vOffset. */
  proj: GPUBuffer;
  projStride: number;
  kOffset: number;
  vOffset: number;
  tokens: number;
  nq: number;
  nkv: number;
  headDim: number;
  rotaryDim: number;
  /** [headDim] f32 RMSNorm1p weights (zero-centred: scale is 1 + w). */
  qNorm: GPUBuffer;
  kNorm: GPUBuffer;
  eps: number;
  /** ropeTable(capacity' ≥ capacity, rotaryDim, θ). */
  rope: GPUBuffer;
  /** [tokens, nq, headDim] activations out. */
  q: GPUBuffer;
  /** [nkv, capacity, headDim] activations each ([tokens, nkv, capacity, headDim] with positions). */
  kCache: GPUBuffer;
  vCache: GPUBuffer;
  capacity: number;
}

/** What attentionPrepare writes and attention reads: q [tokens, nq, headDim] and the cache, per kv head [capacity, headDim]. */
export interface AttentionShape {
  tokens: number;
  nq: number;
  nkv: number;
  headDim: number;
  projStride: number;
  capacity: number;
  q: GPUBuffer;
  kCache: GPUBuffer;
  vCache: GPUBuffer;
  /** Rows of sequences of their own (a positions buffer), each with its own cache (unless oneSequence); else one sequence. */
  positions?: GPUBuffer;
  oneSequence?: boolean;
}

/** The checks both attention kernels make of that layout (activations of `actBytes`); errors name `check`'s op. */
export function checkAttentionShape(check: Checks, a: AttentionShape, actBytes: number): void {
  const { tokens, nq, nkv, headDim: D, projStride, capacity } = a;
  check.counts({ tokens, nq, nkv, headDim: D, projStride, capacity });
  if (nq % nkv !== 0) check.fail(`nq ${nq} is not a multiple of nkv ${nkv}`);
  const caches = a.positions && !a.oneSequence ? tokens : 1;
  if (!a.positions && tokens > capacity) check.fail(`${tokens} tokens do not fit a cache of capacity ${capacity}`);
  check.fits('q', a.q, tokens * nq * D, actBytes);
  check.fits('kCache', a.kCache, caches * nkv * capacity * D, actBytes);
  check.fits('vCache', a.vCache, caches * nkv * capacity * D, actBytes);
  if (a.positions) check.fits('positions', a.positions, tokens);
}

const check = checks('attentionPrepare');

/**
 * q[t, h] = rope(RMSNorm1p(q_h)), K cache[g, pos + t] = rope(RMSNorm1p(k_g)), V cache[g, pos + t] = v_g, with
 * pos read from `step` on the GPU (or each row's from `positions`, into its own cache). Tokens at positions ≥
 * capacity are dropped (the caller must not get there; a skipped row is one).
 */
export function attentionPrepare(ctx: GpuContext, a: AttentionPrepareArgs): Promise<Dispatch> {
  checkAttentionShape(check, a, ctx.activationBytes);
  check.count('rotaryDim', a.rotaryDim);
  check.index('kOffset', a.kOffset);
  check.index('vOffset', a.vOffset);
  const { tokens, nq, nkv, headDim: D, rotaryDim: R, projStride, capacity } = a;
  if (R % 2 !== 0 || R > D) check.fail(`rotaryDim ${R} must be even and ≤ headDim ${D}`);
  if (nq * 2 * D > projStride || a.kOffset + nkv * D > projStride || a.vOffset + nkv * D > projStride) {
    check.fail(`q|gate (${nq * 2 * D}), k (${a.kOffset}+${nkv * D}) or v (${a.vOffset}+${nkv * D}) pass projStride ${projStride}`);
  }
  if (!(a.eps > 0)) check.fail(`eps ${a.eps} must be > 0`);
  check.fits('proj', a.proj, tokens * projStride, ctx.activationBytes);
  check.fits('qNorm', a.qNorm, D);
  check.fits('kNorm', a.kNorm, D);
  check.fits('rope', a.rope, capacity * R);
  return ctx.dispatch(
    attentionPrepareKernel,
    { layout: positionLayout(a) },
    {
      proj: a.proj,
      q_norm: a.qNorm,
      k_norm: a.kNorm,
      rope: a.rope,
      ...(a.positions ? { positions: a.positions } : { step: a.step! }),
      q: a.q,
      k_cache: a.kCache,
      v_cache: a.vCache,
      params: {
        tokens,
        nq,
        nkv,
        head_dim: D,
        rotary_dim: R,
        proj_stride: projStride,
        k_offset: a.kOffset,
        v_offset: a.vOffset,
        capacity,
        eps: a.eps,
      },
    },
    grid(tokens * (nq + nkv), ctx.caps),
  );
}
