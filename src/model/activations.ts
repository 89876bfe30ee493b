import type { GpuContext } from '../gpu/context.ts';
import { SessionError } from '../errors.ts';
import { type ElementType, StepParams, paramsSize } from '../gpu/kernel.ts';
import { CHUNK, type ChunkScratch, createChunkScratch } from '../kernels/gated_delta_net_chunk.ts';
import { MOE_TILE_TOKENS } from '../kernels/matmul.ts';
import { type MoeGroupScratch, createMoeGroupScratch, maxMoeTiles } from '../kernels/moe_group.ts';
import { ropeTable } from '../kernels/rope.ts';
import { attentionScratchBytes, defaultSplits } from '../kernels/attention.ts';
import { dims } from './config.ts';
import { type Model, heldLayerTypes } from './model.ts';

/**
 * Per-layer sequence state: DeltaNet conv window and recurrent state, or the attention KV cache. "act" buffers
 * hold the context's activation type (ctx.activations: f32 or f16).
 */
export interface LayerState {
  /** [K, conv_dim] act: a ring of the causal conv's last raw inputs, slot p % K for position p (conv1d_causal.wgsl). */
  conv?: GPUBuffer;
  /** [Nv, Dk, Dv] f32 delta-rule state (f32 whatever the activations: it accumulates over the whole sequence). */
  recurrent?: GPUBuffer;
  /** [Nkv, capacity, Dh] act each. */
  keys?: GPUBuffer;
  values?: GPUBuffer;
}

export interface MoeActivations {
  /** [S, E + 1] f32: router logits (experts, then the shared expert's gate). */
  logits: GPUBuffer;
  /** u32 and f32: routing. */
  ids: GPUBuffer;
  gates: GPUBuffer;
  /** [S, topk, Im] f32: the picked experts' weighted SwiGLU outputs. */
  swiglu: GPUBuffer;
  /** [S, topk, H] f32: their down projections, summed into the residual stream. */
  out: GPUBuffer;
  order: GPUBuffer;
  tiles: GPUBuffer;
  args: GPUBuffer;
  groupScratch: MoeGroupScratch;
  tileTokens: number;
}

/**
 * Working buffers of a forward call over at most `maxTokens` tokens, reused by every call. proj through act
 * hold the activation type; ids and token u32; the residual stream h, its norm x, logits, rope, the chunk
 * scratch and the whole routed-expert path (router logits, expert activations and outputs) f32: as in
 * llama.cpp, the residual sum of every layer would lose bits in f16, and every bit lost before the router
 * can flip a near-tied expert choice, which moves a token's output by far more than rounding does.
 */
export interface Activations {
  maxTokens: number;
  capacity: number;
  ids: GPUBuffer;
  /** [S] u32: the sampled tokens that the next decode step embeds, one per row (written on the GPU by the sampler). */
  token: GPUBuffer;
  /** [S] u32: each decode row's position (layers.ts: a row is a sequence of its own), or SKIPPED_ROW. */
  positions: GPUBuffer;
  /** [S, H] f32: the residual stream. */
  h: GPUBuffer;
  /** [S, H] f32: h RMS-normed by a dispatch of its own (prefill; decode folds the norm into the matvec). */
  x: GPUBuffer;
  /** [S, proj] act: a mixer's fused in-projection, DeltaNet [qkv; z; b; a] or attention [q|gate; k; v]. */
  mixerProj: GPUBuffer;
  /** [S, mix] act: what a mixer's core reads: DeltaNet's convolved, l2-normed q, k, v; attention's normed, rotated q. */
  coreInput: GPUBuffer;
  /** [S, core] act: a mixer's core output: the delta rule's heads, or attention's gated heads (the o-projection's input). */
  coreOutput: GPUBuffer;
  /** [S, Nv·Dv] act: DeltaNet's gated RMS norm of coreOutput (the out-projection's input). */
  gatedNorm: GPUBuffer;
  /** [S, I] act: the SwiGLU of a dense MLP or of the shared expert (the down projection's input). */
  swiglu: GPUBuffer;
  /** [logitRows, V] f32: a row of logits per sequence. */
  logits: GPUBuffer;
  step: GPUBuffer;
  rope: GPUBuffer;
  /** f32 split partials of attention, sized for every token count up to maxTokens (one per session, shared by layers). */
  partials: GPUBuffer;
  chunk: ChunkScratch;
  moe?: MoeActivations;
  /** The buffers that hold the activation type; every other float buffer is f32. */
  actBuffers: Set<GPUBuffer>;
  buffers: GPUBuffer[];
}

/** How kernels declare `buffer` of `a` (see ElementType). */
export const elementOf = (a: Activations, buffer: GPUBuffer): ElementType => (a.actBuffers.has(buffer) ? 'act' : 'f32');

/** The widest activation row per token, to size buffers and bound the prefill chunk. */
function rowFloats(model: Pick<Model, 'config'>) {
  const c = model.config;
  const d = dims(c);
  const moe = c.moe;
  return {
    proj: Math.max(d.deltaNetProj, d.attentionProj),
    mix: Math.max(d.convDim, d.attentionOut),
    core: Math.max(d.valueDim, d.attentionOut),
    act: Math.max(c.intermediateSize ?? 0, moe?.sharedIntermediate ?? 0),
  };
}

/** Prefill runs in chunks of this many tokens: large enough to fill a GPU, small enough for every binding. */
export function prefillChunk(ctx: GpuContext, model: Pick<Model, 'config'>, wanted = 512): number {
  const c = model.config;
  // The f32 DeltaNet chunk scratch (U|W rows, states per chunk) can be wider than f16 activation rows.
  const scratch = c.layerTypes.includes('linear_attention')
    ? c.linearValueHeads * Math.max(c.linearKeyDim + c.linearValueDim, CHUNK, Math.ceil((c.linearKeyDim * c.linearValueDim) / CHUNK)) * 4
    : 0;
  const m = c.moe;
  const f32Rows = Math.max(c.hiddenSize, m ? Math.max(m.numExperts + 1, m.topk * c.hiddenSize, m.topk * m.expertIntermediate) : 0) * 4;
  const widest = Math.max(Math.max(...Object.values(rowFloats(model))) * ctx.activationBytes, f32Rows, scratch);
  return Math.max(1, Math.min(wanted, Math.floor(ctx.caps.maxStorageBindingBytes / widest)));
}

/**
 * Working buffers for forward calls of up to `maxTokens` tokens (or decode rows), with `logitRows` rows of logits; with
 * `verifyRows`, also for verifications of that many rows of one sequence (ForwardPlan.oneSequence).
 */
export function createActivations(ctx: GpuContext, model: Model, maxTokens: number, capacity: number, logitRows = 1, verifyRows = 0): Activations {
  const c = model.config;
  const d = dims(c);
  const S = maxTokens;
  const f = rowFloats(model);
  const buffers: GPUBuffer[] = [];
  const storage = (label: string, floats: number, bytes = 4) => {
    const b = ctx.storage(label, Math.max(4, floats) * bytes);
    buffers.push(b);
    return b;
  };
  const actBuffers = new Set<GPUBuffer>();
  const act = (label: string, elements: number) => {
    const b = storage(label, elements, ctx.activationBytes);
    actBuffers.add(b);
    return b;
  };
  const step = ctx.createBuffer('step', paramsSize(StepParams), GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST);
  buffers.push(step);
  const table = ropeTable(capacity, c.rotaryDim, c.ropeTheta);
  if (table.byteLength > ctx.caps.maxStorageBindingBytes) {
    throw new SessionError(`a context of ${capacity} tokens needs a ${table.byteLength}-byte RoPE table, more than the adapter binds`);
  }
  const rope = storage('rope', table.length);
  ctx.write(rope, 0, table);
  let moe: MoeActivations | undefined;
  if (c.moe) {
    const { numExperts: E, topk: k } = c.moe;
    const tiles = maxMoeTiles(S, k, E, MOE_TILE_TOKENS);
    const args = ctx.indirect('moe args', 6 * 4);
    buffers.push(args);
    const groupScratch = createMoeGroupScratch(ctx, E);
    buffers.push(groupScratch.counts, groupScratch.cursor);
    moe = {
      logits: storage('moe logits', S * (E + 1)),
      ids: storage('moe ids', S * k),
      gates: storage('moe gates', S * (k + 1)),
      swiglu: storage('moe swiglu', S * k * c.moe.expertIntermediate),
      out: storage('moe out', S * k * c.hiddenSize),
      order: storage('moe order', S * k),
      tiles: storage('moe tiles', tiles * 4),
      args,
      groupScratch,
      tileTokens: MOE_TILE_TOKENS,
    };
  }
  const chunk = createChunkScratch(ctx, S, c.linearValueHeads, c.linearKeyDim, c.linearValueDim);
  // Every buffer here is the session's to free (Session.destroy frees `buffers`).
  buffers.push(chunk.uw, chunk.attn, chunk.gate, chunk.hs);
  return {
    maxTokens: S,
    capacity,
    ids: storage('ids', S),
    token: storage('token', S),
    positions: storage('positions', S),
    h: storage('h', S * c.hiddenSize),
    x: storage('x', S * c.hiddenSize),
    mixerProj: act('mixer projection', S * f.proj),
    coreInput: act('core input', S * f.mix),
    coreOutput: act('core output', S * f.core),
    gatedNorm: act('gated norm', S * d.valueDim),
    swiglu: act('swiglu', S * f.act),
    logits: storage('logits', logitRows * c.vocabSize),
    actBuffers,
    step,
    rope,
    partials: storage('attention partials', c.layerTypes.includes('full_attention') ? partialsFloats(model, S, capacity, verifyRows) : 4),
    chunk,
    moe,
    buffers,
  };
}

/** Attention split partials for every call of up to `maxTokens` tokens, and for verifications (a decode row's splits). */
function partialsFloats(model: Model, maxTokens: number, capacity: number, verifyRows: number): number {
  const shape = { nq: model.config.numHeads, capacity, headDim: model.config.headDim };
  const verify = verifyRows > 0 ? attentionScratchBytes({ ...shape, maxTokens: verifyRows, splits: defaultSplits(1, shape.nq, capacity) }) : 0;
  return Math.max(attentionScratchBytes({ ...shape, maxTokens }), verify) / 4;
}

/** Bytes of the per-layer state for a context of `capacity` tokens, with activations of `activationBytes` (2 or 4). */
export function stateBytes(model: Pick<Model, 'config' | 'layers'>, capacity: number, activationBytes = 4): number {
  const c = model.config;
  const d = dims(c);
  return heldLayerTypes(model).reduce(
    (sum, t) =>
      sum +
      (t === 'full_attention'
        ? 2 * c.numKvHeads * capacity * c.headDim * activationBytes
        : c.convKernel * d.convDim * activationBytes + c.linearValueHeads * c.linearKeyDim * c.linearValueDim * 4),
    0,
  );
}

/**
 * The layers' states for `sequences` sequences of `capacity` tokens each, sequence after sequence in each buffer
 * (decode row r uses sequence r's: kernels/rows.ts); with `verifyRows` (one sequence), that many more recurrent state
 * slots, where a verification leaves the state after each of its rows, and verifyRows − 1 conv ring slots, where it
 * leaves the raw inputs of its rows after the first (ForwardPlan.oneSequence, kernels/gated_delta_net_decode.ts).
 */
export function createLayerStates(ctx: GpuContext, model: Model, capacity: number, sequences = 1, verifyRows = 0): LayerState[] {
  const c = model.config;
  const d = dims(c);
  const ab = ctx.activationBytes;
  checkKvBytes(ctx, model, capacity, sequences);
  const recurrentBytes = (sequences + verifyRows) * c.linearValueHeads * c.linearKeyDim * c.linearValueDim * 4;
  if (recurrentBytes > ctx.caps.maxStorageBindingBytes) {
    throw new SessionError(
      `${sequences} sequences need ${recurrentBytes} bytes of DeltaNet state per layer; this adapter binds at most ${ctx.caps.maxStorageBindingBytes}`,
    );
  }
  return heldLayerTypes(model).map((t, i) =>
    t === 'full_attention'
      ? createAttentionState(ctx, model, capacity, sequences, `layer ${model.layers.first + i}`)
      : {
          conv: ctx.storage(`layer ${model.layers.first + i} conv state`, (sequences * c.convKernel + Math.max(0, verifyRows - 1)) * d.convDim * ab),
          recurrent: ctx.storage(`layer ${model.layers.first + i} recurrent state`, recurrentBytes),
        },
  );
}

/** An attention layer's KV cache for `sequences` sequences of `capacity` tokens (a main layer's, or the MTP block's own). */
export function createAttentionState(ctx: GpuContext, model: Model, capacity: number, sequences: number, label: string): LayerState {
  const kvBytes = checkKvBytes(ctx, model, capacity, sequences);
  return { keys: ctx.storage(`${label} keys`, kvBytes), values: ctx.storage(`${label} values`, kvBytes) };
}

/** Bytes of one layer's keys (or values), checked against what the adapter binds. */
function checkKvBytes(ctx: GpuContext, model: Model, capacity: number, sequences: number): number {
  const c = model.config;
  const ab = ctx.activationBytes;
  const kvBytes = sequences * c.numKvHeads * capacity * c.headDim * ab;
  if (kvBytes > ctx.caps.maxStorageBindingBytes) {
    const most = Math.floor(ctx.caps.maxStorageBindingBytes / (sequences * c.numKvHeads * c.headDim * ab));
    const what = sequences > 1 ? `${sequences} sequences of ${capacity} tokens need` : `a context of ${capacity} tokens needs`;
    throw new SessionError(
      `${what} ${kvBytes} bytes of KV cache per layer; this adapter binds at most ${ctx.caps.maxStorageBindingBytes} (${most} tokens${sequences > 1 ? ' each' : ''})`,
    );
  }
  return kvBytes;
}
