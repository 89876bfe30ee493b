import type { Dispatch, GpuContext } from '../gpu/context.ts';
import { StepParams, defineKernel, read, uniform, write } from '../gpu/kernel.ts';
import { grid } from './grid.ts';

/**
 * Gated attention, first half: q/k RMSNorm1p over head_dim, partial RoPE (rotate-half), q out, K/V cache write.
 * Grid: one workgroup per (token, head) over nq query heads then nkv key/value heads.
 */
export const attentionPrepareKernel = defineKernel({
  name: 'attention_prepare',
  bindings: () => [
    read('proj'),
    read('q_norm'),
    read('k_norm'),
    read('rope', 'vec2<f32>'),
    uniform('step', StepParams),
    write('q'),
    write('k_cache'),
    write('v_cache'),
    uniform('params', {
      tokens: 'u32', nq: 'u32', nkv: 'u32', head_dim: 'u32', rotary_dim: 'u32', proj_stride: 'u32',
      k_offset: 'u32', v_offset: 'u32', capacity: 'u32', eps: 'f32',
    }),
  ],
  overrides: () => ({ WG: 64 }),
});

export interface AttentionPrepareArgs {
  /** [tokens, projStride] f32: per row [q_0 | gate_0 | … | q_{nq-1} | gate_{nq-1}], k at kOffset, v at vOffset. */
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
  /** StepParams uniform: position of token 0. */
  step: GPUBuffer;
  /** [tokens, nq, headDim] f32 out. */
  q: GPUBuffer;
  /** [nkv, capacity, headDim] f32 each. */
  kCache: GPUBuffer;
  vCache: GPUBuffer;
  capacity: number;
}

const isCount = (v: number) => Number.isInteger(v) && v > 0;

function need(op: string, what: string, buffer: GPUBuffer, elements: number): void {
  if (buffer.size < elements * 4) throw new Error(`${op}: ${what} holds ${buffer.size} bytes, needs ${elements * 4}`);
}

/**
 * q[t, h] = rope(RMSNorm1p(q_h)), K cache[g, pos + t] = rope(RMSNorm1p(k_g)), V cache[g, pos + t] = v_g, with
 * pos read from `step` on the GPU. Tokens at positions ≥ capacity are dropped (the caller must not get there).
 */
export function attentionPrepare(ctx: GpuContext, a: AttentionPrepareArgs): Promise<Dispatch> {
  const op = 'attentionPrepare';
  for (const k of ['tokens', 'nq', 'nkv', 'headDim', 'rotaryDim', 'projStride', 'capacity'] as const) {
    if (!isCount(a[k])) throw new Error(`${op}: ${k} = ${a[k]} must be a positive integer`);
  }
  for (const k of ['kOffset', 'vOffset'] as const) {
    if (!Number.isInteger(a[k]) || a[k] < 0) throw new Error(`${op}: ${k} = ${a[k]} must be a non-negative integer`);
  }
  const { tokens, nq, nkv, headDim: D, rotaryDim: R, projStride, capacity } = a;
  if (R % 2 !== 0 || R > D) throw new Error(`${op}: rotaryDim ${R} must be even and ≤ headDim ${D}`);
  if (nq % nkv !== 0) throw new Error(`${op}: nq ${nq} is not a multiple of nkv ${nkv}`);
  if (tokens > capacity) throw new Error(`${op}: ${tokens} tokens do not fit a cache of capacity ${capacity}`);
  if (nq * 2 * D > projStride || a.kOffset + nkv * D > projStride || a.vOffset + nkv * D > projStride) {
    throw new Error(`${op}: q|gate (${nq * 2 * D}), k (${a.kOffset}+${nkv * D}) or v (${a.vOffset}+${nkv * D}) pass projStride ${projStride}`);
  }
  if (!(a.eps > 0)) throw new Error(`${op}: eps ${a.eps} must be > 0`);
  need(op, 'proj', a.proj, tokens * projStride);
  need(op, 'qNorm', a.qNorm, D);
  need(op, 'kNorm', a.kNorm, D);
  need(op, 'rope', a.rope, capacity * R);
  need(op, 'q', a.q, tokens * nq * D);
  need(op, 'kCache', a.kCache, nkv * capacity * D);
  need(op, 'vCache', a.vCache, nkv * capacity * D);
  return ctx.dispatch(
    attentionPrepareKernel,
    undefined,
    {
      proj: a.proj, q_norm: a.qNorm, k_norm: a.kNorm, rope: a.rope, step: a.step, q: a.q, k_cache: a.kCache, v_cache: a.vCache,
      params: {
        tokens, nq, nkv, head_dim: D, rotary_dim: R, proj_stride: projStride,
        k_offset: a.kOffset, v_offset: a.vOffset, capacity, eps: a.eps,
      },
    },
    grid(tokens * (nq + nkv), ctx.caps),
  );
}
