import type { Dispatch, GpuContext } from '../gpu/context.ts';
import type { GpuTensor } from '../gpu/tensor.ts';
import { embedding } from '../kernels/embedding.ts';
import { rmsNorm } from '../kernels/rms_norm.ts';
import { matvec } from '../kernels/matvec.ts';
import { matmul } from '../kernels/matmul.ts';
import { conv1dCausal } from '../kernels/conv1d_causal.ts';
import { l2norm } from '../kernels/l2norm.ts';
import { gatedDeltaNetStep } from '../kernels/gated_delta_net_step.ts';
import { gatedDeltaNetChunk } from '../kernels/gated_delta_net_chunk.ts';
import { rmsNormGated } from '../kernels/rms_norm_gated.ts';
import { attentionPrepare } from '../kernels/attention_prepare.ts';
import { attention } from '../kernels/attention.ts';
import { moeRoute } from '../kernels/moe_route.ts';
import { moeGroup } from '../kernels/moe_group.ts';
import { moeCombine } from '../kernels/moe_combine.ts';
import { dims } from './config.ts';
import type { Model } from './load.ts';
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
  const norm = (weight: GpuTensor) => rmsNorm(ctx, { x: a.h, w: vectorBuffer(weight), y: a.x, rows: T, cols: H, eps: c.rmsNormEps });

  add(await embedding(ctx, { table: w.embed, ids: plan.input === 'token' ? a.token : a.ids, tokens: T, out: a.h }));
  for (let i = 0; i < w.layers.length; i++) {
    const layer: DecoderLayerWeights = w.layers[i];
    add(await norm(layer.inputNorm));
    add(
      layer.mixer.kind === 'linear_attention'
        ? await deltaNet(ctx, model, layer.mixer, state[i], a, T)
        : await gatedAttention(ctx, model, layer.mixer, state[i], a, T),
    );
    add(await norm(layer.postNorm));
    if (layer.mlp.kind === 'dense') {
      add(await denseMlp(ctx, model, layer.mlp, a, T));
    } else {
      add(await moeRouting(ctx, model, layer.mlp, a, T));
      segments.push({ dispatches: out, experts: { layer: i, dispatches: await routedExperts(ctx, model, layer.mlp, a, T) } });
      out = [];
      add(await moeOutput(ctx, model, layer.mlp, a, T));
    }
  }
  add(await norm(w.norm));
  segments.push({ dispatches: out });
  return segments;
}

/** y (+)= x W^T for T rows: matvec for one token (bandwidth-bound decode), tiled matmul for more. */
function linear(
  ctx: GpuContext,
  a: Activations,
  T: number,
  w: GpuTensor,
  x: GPUBuffer,
  xStride: number,
  y: GPUBuffer,
  yStride: number,
  epilogue: 'store' | 'add' | 'swiglu',
  scales?: { buffer: GPUBuffer; index: number; stride: number },
): Promise<Dispatch[]> {
  const [input, output] = [elementOf(a, x), elementOf(a, y)];
  return T === 1
    ? matvec(ctx, { w, x, y, input, output, epilogue, scales: scales && { buffer: scales.buffer, index: scales.index } })
    : matmul(ctx, { w, tokens: T, x, xStride, y, yStride, input, output, epilogue, scales });
}

/** Qwen3_5GatedDeltaNet (spec §2.3): fused in-projection, causal conv, l2-normed delta rule, gated norm, out-projection. */
async function deltaNet(ctx: GpuContext, model: Model, w: DeltaNetWeights, s: LayerState, a: Activations, T: number): Promise<Dispatch[]> {
  const c = model.config;
  const d = dims(c);
  const P = d.deltaNetProj;
  const nk = c.linearKeyHeads;
  const nv = c.linearValueHeads;
  const core = {
    tokens: T, nk, nv, dk: c.linearKeyDim, dv: c.linearValueDim,
    qkv: a.mix, qkvStride: d.convDim,
    ba: a.proj, baStride: P, bOffset: d.convDim + d.valueDim, aOffset: d.convDim + d.valueDim + nv,
    aLog: vectorBuffer(w.aLog), dtBias: vectorBuffer(w.dtBias), state: s.recurrent!, out: a.core,
  };
  return [
    ...(await linear(ctx, a, T, w.inProj, a.x, c.hiddenSize, a.proj, P, 'store')),
    await conv1dCausal(ctx, {
      x: a.proj, xStride: P, w: vectorBuffer(w.conv), wStride: w.conv.rowStride, kernelSize: c.convKernel,
      state: s.conv!, y: a.mix, tokens: T, channels: d.convDim,
    }),
    await l2norm(ctx, { x: a.mix, tokens: T, heads: 2 * nk, dim: c.linearKeyDim, tokenStride: d.convDim, scaledHeads: nk, scale: 1 / Math.sqrt(c.linearKeyDim) }),
    ...(T === 1 ? await gatedDeltaNetStep(ctx, core) : await gatedDeltaNetChunk(ctx, { ...core, scratch: a.chunk })),
    await rmsNormGated(ctx, {
      x: a.core, z: a.proj, zTokenStride: P, zOffset: d.convDim, w: vectorBuffer(w.norm), y: a.gated,
      rows: T * nv, heads: nv, dim: c.linearValueDim, eps: c.rmsNormEps,
    }),
    ...(await linear(ctx, a, T, w.outProj, a.gated, d.valueDim, a.h, c.hiddenSize, 'add')),
  ];
}

/** Qwen3_5Attention (spec §2.4): [q | gate] per head, q/k norm, partial RoPE, causal GQA over the KV cache, sigmoid gate. */
async function gatedAttention(ctx: GpuContext, model: Model, w: AttentionWeights, s: LayerState, a: Activations, T: number): Promise<Dispatch[]> {
  const c = model.config;
  const d = dims(c);
  const P = d.attentionProj;
  const kOffset = c.numHeads * 2 * c.headDim;
  const heads = { tokens: T, nq: c.numHeads, nkv: c.numKvHeads, headDim: c.headDim };
  const cache = { kCache: s.keys!, vCache: s.values!, capacity: a.capacity, step: a.step };
  return [
    ...(await linear(ctx, a, T, w.qkvProj, a.x, c.hiddenSize, a.proj, P, 'store')),
    await attentionPrepare(ctx, {
      ...heads, ...cache, proj: a.proj, projStride: P, kOffset, vOffset: kOffset + c.numKvHeads * c.headDim,
      rotaryDim: c.rotaryDim, qNorm: vectorBuffer(w.qNorm), kNorm: vectorBuffer(w.kNorm), eps: c.rmsNormEps, rope: a.rope, q: a.mix,
    }),
    ...(await attention(ctx, { ...heads, ...cache, q: a.mix, proj: a.proj, projStride: P, out: a.core })),
    ...(await linear(ctx, a, T, w.oProj, a.core, d.attentionOut, a.h, c.hiddenSize, 'add')),
  ];
}

/** Qwen3_5MLP: down(silu(gate x) * up x), added to the residual. */
async function denseMlp(ctx: GpuContext, model: Model, w: DenseMlpWeights, a: Activations, T: number): Promise<Dispatch[]> {
  const c = model.config;
  const I = c.intermediateSize!;
  return [
    ...(await linear(ctx, a, T, w.gateUp, a.x, c.hiddenSize, a.act, I, 'swiglu')),
    ...(await linear(ctx, a, T, w.down, a.act, I, a.h, c.hiddenSize, 'add')),
  ];
}

/**
 * Qwen3_5MoeSparseMoeBlock (spec §2.6), on the GPU end to end, in three steps (moeRouting, routedExperts,
 * moeOutput): router (+ shared gate logit), softmax top-k with renormalised weights, the chosen experts
 * through the slot table, and the sigmoid-gated shared expert. Routing weights are folded into the SwiGLU
 * output so the down projections just add.
 */
async function moeRouting(ctx: GpuContext, model: Model, w: MoeWeights, a: Activations, T: number): Promise<Dispatch[]> {
  const c = model.config;
  const { numExperts: E, topk: k } = c.moe!;
  const m = a.moe!;
  return [
    ...(await linear(ctx, a, T, w.router, a.x, c.hiddenSize, m.logits, E + 1, 'store')),
    await moeRoute(ctx, { logits: m.logits, tokens: T, experts: E, topk: k, ids: m.ids, gates: m.gates }),
    // Prefill: the T·topk (token, expert) pairs grouped by expert into tiles.
    ...(T === 1 ? [] : await moeGroup(ctx, { ids: m.ids, tokens: T, experts: E, topk: k, tileTokens: m.tileTokens, order: m.order, tiles: m.tiles, args: m.args, scratch: m.groupScratch })),
  ];
}

/** The chosen experts' SwiGLU and down projections: decode adds them into h, prefill stores one row per pair. */
async function routedExperts(ctx: GpuContext, model: Model, w: MoeWeights, a: Activations, T: number): Promise<Dispatch[]> {
  const c = model.config;
  const { topk: k, expertIntermediate: Im } = c.moe!;
  const H = c.hiddenSize;
  const m = a.moe!;
  if (T === 1) {
    const experts = { ids: m.ids, slots: w.slots, topk: k };
    return [
      ...(await matvec(ctx, { w: w.expertsGateUp, x: a.x, input: 'f32', y: m.act, output: elementOf(a, m.act), yStride: Im, epilogue: 'swiglu', scales: { buffer: m.gates, index: 0 }, experts: { ...experts, mode: 'each' } })),
      ...(await matvec(ctx, { w: w.expertsDown, x: m.act, input: elementOf(a, m.act), xStride: Im, y: a.h, output: 'f32', epilogue: 'add', experts: { ...experts, mode: 'sum' } })),
    ];
  }
  const grouped = { order: m.order, tiles: m.tiles, args: m.args, slots: w.slots, topk: k };
  return [
    ...(await matmul(ctx, {
      w: w.expertsGateUp, tokens: T, x: a.x, input: 'f32', xStride: H, y: m.act, output: elementOf(a, m.act), yStride: Im, epilogue: 'swiglu',
      scales: { buffer: m.gates, index: 0, stride: 0 }, grouped: { ...grouped, argsOffset: 0, input: 'token' },
    })),
    ...(await matmul(ctx, { w: w.expertsDown, tokens: T, x: m.act, input: elementOf(a, m.act), xStride: Im, y: m.out, output: 'f32', yStride: H, epilogue: 'store', grouped: { ...grouped, argsOffset: 12, input: 'pair' } })),
  ];
}

/** Prefill: the pairs' rows summed into h; then the sigmoid-gated shared expert, added to h. */
async function moeOutput(ctx: GpuContext, model: Model, w: MoeWeights, a: Activations, T: number): Promise<Dispatch[]> {
  const c = model.config;
  const { topk: k, sharedIntermediate: Is } = c.moe!;
  const H = c.hiddenSize;
  const m = a.moe!;
  return [
    ...(T === 1 ? [] : [await moeCombine(ctx, { h: a.h, out: m.out, tokens: T, hidden: H, topk: k })]),
    ...(await linear(ctx, a, T, w.sharedGateUp, a.x, H, a.act, Is, 'swiglu', { buffer: m.gates, index: k, stride: k + 1 })),
    ...(await linear(ctx, a, T, w.sharedDown, a.act, Is, a.h, H, 'add')),
  ];
}

/** Logits of the final-normed hidden rows [first, first + rows) into `logits` ([rows, V] f32 whatever the activations). */
export function lmHead(ctx: GpuContext, model: Model, a: Activations, first: number, rows: number, logits: GPUBuffer): Promise<Dispatch[]> {
  const H = model.config.hiddenSize;
  const V = model.config.vocabSize;
  return rows === 1
    ? matvec(ctx, { w: model.weights.lmHead, x: a.x, xOffset: first * H, input: 'f32', y: logits, output: 'f32', epilogue: 'store' })
    : matmul(ctx, { w: model.weights.lmHead, tokens: rows, x: a.x, xOffset: first * H, xStride: H, input: 'f32', y: logits, yStride: V, output: 'f32', epilogue: 'store' });
}

