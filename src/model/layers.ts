import type { Dispatch, GpuContext } from '../gpu/context.ts';
import type { GpuTensor } from '../gpu/tensor.ts';
import { embedding } from '../kernels/embedding.ts';
import { rmsNorm } from '../kernels/rms_norm.ts';
import { matvec } from '../kernels/matvec.ts';
import { matmul } from '../kernels/matmul.ts';
import { conv1dCausal } from '../kernels/conv1d_causal.ts';
import { l2norm } from '../kernels/l2norm.ts';
import { gatedDeltaNetDecode } from '../kernels/gated_delta_net_decode.ts';
import { gatedDeltaNetChunk } from '../kernels/gated_delta_net_chunk.ts';
import { gatedDeltaNetStep } from '../kernels/gated_delta_net_step.ts';
import { rmsNormGated } from '../kernels/rms_norm_gated.ts';
import { attentionPrepare } from '../kernels/attention_prepare.ts';
import { attention } from '../kernels/attention.ts';
import { moeRoute } from '../kernels/moe_route.ts';
import { moeGroup } from '../kernels/moe_group.ts';
import { moeCombine } from '../kernels/moe_combine.ts';
import { dims } from './config.ts';
import type { Model } from './model.ts';
import type { AttentionWeights, DeltaNetWeights, DecoderLayerWeights, DenseMlpWeights, MoeWeights } from './weights.ts';
import { vectorBuffer } from './weights.ts';
import { type Activations, type LayerState, elementOf } from './activations.ts';

/**
 * The Qwen3.5 forward pass as a list of GPU dispatches, in the order of modeling_qwen3_5.py:
 *   h = embed(ids)
 *   for each layer: h += mixer(norm(h))   mixer = Gated DeltaNet (3 of 4 layers) or gated attention
 *                   h += mlp(norm(h))     mlp = SwiGLU (dense) or routed experts + shared expert (MoE)
 *   x = norm(h)
 * One call processes `tokens` consecutive tokens starting at the position in the step uniform; with one
 * token the matrix-vector and recurrent kernels run, with more the tiled and chunked ones.
 */
export interface ForwardPlan {
  tokens: number;
  /** Where the token ids come from: the prompt buffer, or the previous step's sampled token. */
  input: 'ids' | 'token';
}

/**
 * The forward pass cut after each MoE layer's routing, for expert streaming: a segment ends with a layer's
 * router, top-k and (prefill) grouping; `experts` are that layer's routed-expert matmuls, which read experts
 * through the slot table and skip any that no slot holds, so the runtime can read the chosen ids back, make
 * them resident and run `experts` once per residency pass; the next segment combines them (prefill) and
 * goes on with the shared expert. Run in order, one pass each, the segments are `forward`.
 */
export interface ForwardSegment {
  dispatches: Dispatch[];
  experts?: { layer: number; dispatches: Dispatch[] };
}

export async function forward(ctx: GpuContext, model: Model, state: LayerState[], a: Activations, plan: ForwardPlan): Promise<Dispatch[]> {
  return (await forwardSegments(ctx, model, state, a, plan)).flatMap((s) => [...s.dispatches, ...(s.experts?.dispatches ?? [])]);
}

export async function forwardSegments(ctx: GpuContext, model: Model, state: LayerState[], a: Activations, plan: ForwardPlan): Promise<ForwardSegment[]> {
  const { config: c, weights: w } = model;
  const T = plan.tokens;
  const H = c.hiddenSize;
  const segments: ForwardSegment[] = [];
  let out: Dispatch[] = [];
  const add = (d: Dispatch | Dispatch[]) => out.push(...(Array.isArray(d) ? d : [d]));
  // The RMS norm in front of a block: folded into the block's projections for one token, else its own dispatch.
  const normed = async (weight: GpuTensor): Promise<Input> => {
    if (T === 1) return residualNormed(model, a, weight);
    add(await rmsNorm(ctx, { x: a.h, w: vectorBuffer(weight), y: a.x, rows: T, cols: H, eps: c.rmsNormEps }));
    return { buffer: a.x };
  };

  add(await embedding(ctx, { table: w.embed, ids: plan.input === 'token' ? a.token : a.ids, tokens: T, out: a.h }));
  for (let i = 0; i < w.layers.length; i++) {
    const layer: DecoderLayerWeights = w.layers[i];
    const x = await normed(layer.inputNorm);
    add(
      layer.mixer.kind === 'linear_attention'
        ? await deltaNet(ctx, model, layer.mixer, state[i], a, x, T)
        : await gatedAttention(ctx, model, layer.mixer, state[i], a, x, T),
    );
    const y = await normed(layer.postNorm);
    if (layer.mlp.kind === 'dense') {
      add(await denseMlp(ctx, model, layer.mlp, a, y, T));
    } else {
      add(await moeRouting(ctx, model, layer.mlp, a, y, T));
      segments.push({ dispatches: out, experts: { layer: i, dispatches: await routedExperts(ctx, model, layer.mlp, a, y, T) } });
      out = [];
      add(await moeOutput(ctx, model, layer.mlp, a, T));
    }
  }
  // Decode folds the final norm into the LM head (lmHead 'decoded'); prefill leaves the normed rows in a.x, which
  // its LM head and scoring read.
  if (plan.input === 'ids') add(await rmsNorm(ctx, { x: a.h, w: vectorBuffer(w.norm), y: a.x, rows: T, cols: H, eps: c.rmsNormEps }));
  segments.push({ dispatches: out });
  return segments;
}

/**
 * The input of a projection: a buffer (activations, or the normed residual stream a.x that a norm dispatch wrote),
 * or with `norm` the residual stream a.h, RMS-normed by the projection itself (decode).
 */
export interface Input {
  buffer: GPUBuffer;
  norm?: { weight: GPUBuffer; eps: number };
}

/** The residual stream, normed with `weight` inside whichever matvec reads it. */
export const residualNormed = (model: Model, a: Activations, weight: GpuTensor): Input => ({
  buffer: a.h, norm: { weight: vectorBuffer(weight), eps: model.config.rmsNormEps },
});

interface LinearArgs {
  w: GpuTensor;
  x: Input; xStride: number;
  y: GPUBuffer; yStride: number;
  epilogue: 'store' | 'add' | 'swiglu';
  /** Routing weight of each token's output: buffer[index + t * stride]. */
  scales?: { buffer: GPUBuffer; index: number; stride: number };
}

/**
 * y (+)= x W^T for T rows: matvec for one token (bandwidth-bound decode), tiled matmul for more; on CPU adapters,
 * where the tiled matmul runs far below what matvec reaches, matvec token after token.
 */
function linear(ctx: GpuContext, a: Activations, T: number, l: LinearArgs): Promise<Dispatch[]> {
  const { w, x, y, epilogue, scales } = l;
  const [input, output] = [elementOf(a, x.buffer), elementOf(a, y)];
  if (T === 1 || ctx.caps.cpu) {
    return matvec(ctx, { w, x: x.buffer, xStride: l.xStride, y, yStride: l.yStride, input, output, epilogue, scales, norm: x.norm, tokens: T });
  }
  if (x.norm) throw new Error('matmul takes a normed input only (its norm runs as a dispatch of its own)');
  return matmul(ctx, { w, tokens: T, x: x.buffer, xStride: l.xStride, y, yStride: l.yStride, input, output, epilogue, scales });
}

/**
 * Qwen3_5GatedDeltaNet (spec §2.3): fused in-projection, causal conv, l2-normed delta rule, gated norm, out-projection.
 * One token (decode) runs everything between the projections in one kernel; more run each step on its own, the
 * delta rule chunked (GPUs) or token by token (CPU adapters).
 */
async function deltaNet(ctx: GpuContext, model: Model, w: DeltaNetWeights, s: LayerState, a: Activations, x: Input, T: number): Promise<Dispatch[]> {
  const c = model.config;
  const d = dims(c);
  const P = d.deltaNetProj;
  const nk = c.linearKeyHeads;
  const nv = c.linearValueHeads;
  const heads = { nk, nv, dk: c.linearKeyDim, dv: c.linearValueDim };
  const gates = { bOffset: d.convDim + d.valueDim, aOffset: d.convDim + d.valueDim + nv, aLog: vectorBuffer(w.aLog), dtBias: vectorBuffer(w.dtBias) };
  const conv = { wStride: w.conv.rowStride, kernelSize: c.convKernel, step: a.step };
  const inProj = await linear(ctx, a, T, { w: w.inProj, x, xStride: c.hiddenSize, y: a.proj, yStride: P, epilogue: 'store' });
  const outProj = await linear(ctx, a, T, { w: w.outProj, x: { buffer: a.gated }, xStride: d.valueDim, y: a.h, yStride: c.hiddenSize, epilogue: 'add' });
  if (T === 1) {
    return [
      ...inProj,
      await gatedDeltaNetDecode(ctx, {
        ...heads, ...gates, ...conv, proj: a.proj, zOffset: d.convDim, convW: vectorBuffer(w.conv), convState: s.conv!,
        state: s.recurrent!, normW: vectorBuffer(w.norm), eps: c.rmsNormEps, y: a.gated,
      }),
      ...outProj,
    ];
  }
  const core = { ...heads, ...gates, tokens: T, qkv: a.mix, qkvStride: d.convDim, ba: a.proj, baStride: P, state: s.recurrent!, out: a.core };
  return [
    ...inProj,
    await conv1dCausal(ctx, { ...conv, x: a.proj, xStride: P, w: vectorBuffer(w.conv), state: s.conv!, y: a.mix, tokens: T, channels: d.convDim }),
    await l2norm(ctx, { x: a.mix, tokens: T, heads: 2 * nk, dim: c.linearKeyDim, tokenStride: d.convDim, scaledHeads: nk, scale: 1 / Math.sqrt(c.linearKeyDim) }),
    // Chunked on GPUs; token after token on CPU adapters, where the chunks' kernels compile for minutes and run slower.
    ...(ctx.caps.cpu ? await gatedDeltaNetStep(ctx, core) : await gatedDeltaNetChunk(ctx, { ...core, scratch: a.chunk })),
    await rmsNormGated(ctx, {
      x: a.core, z: a.proj, zTokenStride: P, zOffset: d.convDim, w: vectorBuffer(w.norm), y: a.gated,
      rows: T * nv, heads: nv, dim: c.linearValueDim, eps: c.rmsNormEps,
    }),
    ...outProj,
  ];
}

/** Qwen3_5Attention (spec §2.4): [q | gate] per head, q/k norm, partial RoPE, causal GQA over the KV cache, sigmoid gate. */
async function gatedAttention(ctx: GpuContext, model: Model, w: AttentionWeights, s: LayerState, a: Activations, x: Input, T: number): Promise<Dispatch[]> {
  const c = model.config;
  const d = dims(c);
  const P = d.attentionProj;
  const kOffset = c.numHeads * 2 * c.headDim;
  const heads = { tokens: T, nq: c.numHeads, nkv: c.numKvHeads, headDim: c.headDim };
  const cache = { kCache: s.keys!, vCache: s.values!, capacity: a.capacity, step: a.step };
  return [
    ...(await linear(ctx, a, T, { w: w.qkvProj, x, xStride: c.hiddenSize, y: a.proj, yStride: P, epilogue: 'store' })),
    await attentionPrepare(ctx, {
      ...heads, ...cache, proj: a.proj, projStride: P, kOffset, vOffset: kOffset + c.numKvHeads * c.headDim,
      rotaryDim: c.rotaryDim, qNorm: vectorBuffer(w.qNorm), kNorm: vectorBuffer(w.kNorm), eps: c.rmsNormEps, rope: a.rope, q: a.mix,
    }),
    ...(await attention(ctx, { ...heads, ...cache, q: a.mix, proj: a.proj, projStride: P, out: a.core, scratch: a.partials })),
    ...(await linear(ctx, a, T, { w: w.oProj, x: { buffer: a.core }, xStride: d.attentionOut, y: a.h, yStride: c.hiddenSize, epilogue: 'add' })),
  ];
}

/** Qwen3_5MLP: down(silu(gate x) * up x), added to the residual. */
async function denseMlp(ctx: GpuContext, model: Model, w: DenseMlpWeights, a: Activations, x: Input, T: number): Promise<Dispatch[]> {
  const c = model.config;
  const I = c.intermediateSize!;
  return [
    ...(await linear(ctx, a, T, { w: w.gateUp, x, xStride: c.hiddenSize, y: a.act, yStride: I, epilogue: 'swiglu' })),
    ...(await linear(ctx, a, T, { w: w.down, x: { buffer: a.act }, xStride: I, y: a.h, yStride: c.hiddenSize, epilogue: 'add' })),
  ];
}

/**
 * Qwen3_5MoeSparseMoeBlock (spec §2.6), on the GPU end to end, in three steps (moeRouting, routedExperts,
 * moeOutput): router (+ shared gate logit), softmax top-k with renormalised weights and the sigmoid-gated shared
 * expert's SwiGLU; the chosen experts through the slot table; the shared expert's down projection. Routing weights are folded into the SwiGLU
 * output so the down projections just add.
 */
async function moeRouting(ctx: GpuContext, model: Model, w: MoeWeights, a: Activations, x: Input, T: number): Promise<Dispatch[]> {
  const c = model.config;
  const { numExperts: E, topk: k } = c.moe!;
  const m = a.moe!;
  return [
    ...(await linear(ctx, a, T, { w: w.router, x, xStride: c.hiddenSize, y: m.logits, yStride: E + 1, epilogue: 'store' })),
    await moeRoute(ctx, { logits: m.logits, tokens: T, experts: E, topk: k, ids: m.ids, gates: m.gates }),
    // Prefill: the T·topk (token, expert) pairs grouped by expert into tiles.
    ...(T === 1 ? [] : await moeGroup(ctx, { ids: m.ids, tokens: T, experts: E, topk: k, tileTokens: m.tileTokens, order: m.order, tiles: m.tiles, args: m.args, scratch: m.groupScratch })),
    // The shared expert's SwiGLU, sigmoid-gated, before any expert adds into h: a decode input is h itself.
    ...(await linear(ctx, a, T, { w: w.sharedGateUp, x, xStride: c.hiddenSize, y: a.act, yStride: c.moe!.sharedIntermediate, epilogue: 'swiglu', scales: { buffer: m.gates, index: k, stride: k + 1 } })),
  ];
}

/** The chosen experts' SwiGLU and down projections: decode adds them into h, prefill stores one row per pair. */
async function routedExperts(ctx: GpuContext, model: Model, w: MoeWeights, a: Activations, x: Input, T: number): Promise<Dispatch[]> {
  const c = model.config;
  const { topk: k, expertIntermediate: Im } = c.moe!;
  const H = c.hiddenSize;
  const m = a.moe!;
  if (T === 1) {
    const experts = { ids: m.ids, slots: w.slots, topk: k };
    return [
      ...(await matvec(ctx, {
        w: w.expertsGateUp, x: x.buffer, norm: x.norm, input: 'f32', y: m.act, output: elementOf(a, m.act), yStride: Im, epilogue: 'swiglu',
        scales: { buffer: m.gates, index: 0 }, experts: { ...experts, mode: 'each' },
      })),
      ...(await matvec(ctx, { w: w.expertsDown, x: m.act, input: elementOf(a, m.act), xStride: Im, y: a.h, output: 'f32', epilogue: 'add', experts: { ...experts, mode: 'sum' } })),
    ];
  }
  const grouped = { order: m.order, tiles: m.tiles, args: m.args, slots: w.slots, topk: k };
  return [
    ...(await matmul(ctx, {
      w: w.expertsGateUp, tokens: T, x: x.buffer, input: 'f32', xStride: H, y: m.act, output: elementOf(a, m.act), yStride: Im, epilogue: 'swiglu',
      scales: { buffer: m.gates, index: 0, stride: 0 }, grouped: { ...grouped, argsOffset: 0, input: 'token' },
    })),
    ...(await matmul(ctx, { w: w.expertsDown, tokens: T, x: m.act, input: elementOf(a, m.act), xStride: Im, y: m.out, output: 'f32', yStride: H, epilogue: 'store', grouped: { ...grouped, argsOffset: 12, input: 'pair' } })),
  ];
}

/** Prefill: the pairs' rows summed into h; then the shared expert's down projection, added to h. */
async function moeOutput(ctx: GpuContext, model: Model, w: MoeWeights, a: Activations, T: number): Promise<Dispatch[]> {
  const c = model.config;
  const { topk: k, sharedIntermediate: Is } = c.moe!;
  const H = c.hiddenSize;
  const m = a.moe!;
  return [
    ...(T === 1 ? [] : [await moeCombine(ctx, { h: a.h, out: m.out, tokens: T, hidden: H, topk: k })]),
    ...(await linear(ctx, a, T, { w: w.sharedDown, x: { buffer: a.act }, xStride: Is, y: a.h, yStride: H, epilogue: 'add' })),
  ];
}

/**
 * Logits into `logits` ([rows, V] f32 whatever the activations): of the final-normed hidden rows [first, first + rows)
 * that a prefill forward left in a.x, or after a decode forward (`decoded`: one row, the final norm folded in here).
 */
export function lmHead(ctx: GpuContext, model: Model, a: Activations, logits: GPUBuffer, rows: { first: number; count: number } | 'decoded'): Promise<Dispatch[]> {
  const H = model.config.hiddenSize;
  const V = model.config.vocabSize;
  const w = model.weights.lmHead;
  if (rows === 'decoded') {
    const x = residualNormed(model, a, model.weights.norm);
    return matvec(ctx, { w, x: x.buffer, norm: x.norm, input: 'f32', y: logits, output: 'f32', epilogue: 'store' });
  }
  const { first, count } = rows;
  return count === 1 || ctx.caps.cpu
    ? matvec(ctx, { w, x: a.x, xOffset: first * H, xStride: H, input: 'f32', y: logits, yStride: V, output: 'f32', epilogue: 'store', tokens: count })
    : matmul(ctx, { w, tokens: count, x: a.x, xOffset: first * H, xStride: H, input: 'f32', y: logits, yStride: V, output: 'f32', epilogue: 'store' });
}

