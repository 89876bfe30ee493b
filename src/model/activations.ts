import type { GpuContext } from '../gpu/context.ts';
import { SessionError } from '../gpu/errors.ts';
import { StepParams, paramsSize } from '../gpu/kernel.ts';
import { type ChunkScratch, createChunkScratch } from '../kernels/gated_delta_net_chunk.ts';
import { MOE_TILE_TOKENS } from '../kernels/matmul.ts';
import { type MoeGroupScratch, createMoeGroupScratch, maxMoeTiles } from '../kernels/moe_group.ts';
import { ropeTable } from '../kernels/rope.ts';
import { dims } from './config.ts';
import type { Model } from './load.ts';

/** Per-layer sequence state: DeltaNet conv window and recurrent state, or the attention KV cache. */
export interface LayerState {
  /** [K-1, conv_dim] last raw inputs of the causal conv. */
  conv?: GPUBuffer;
  /** [Nv, Dk, Dv] f32 delta-rule state. */
  recurrent?: GPUBuffer;
  /** [Nkv, capacity, Dh] f32 each. */
  keys?: GPUBuffer;
  values?: GPUBuffer;
}

export interface MoeActivations {
  ids: GPUBuffer;
  gates: GPUBuffer;
  act: GPUBuffer;
  out: GPUBuffer;
  order: GPUBuffer;
  tiles: GPUBuffer;
  args: GPUBuffer;
  groupScratch: MoeGroupScratch;
  tileTokens: number;
}

/** Working buffers of a forward call over at most `maxTokens` tokens, reused by every call. */
export interface Activations {
  maxTokens: number;
  capacity: number;
  ids: GPUBuffer;
  /** The sampled token that the next decode step embeds (written on the GPU by the sampler). */
  token: GPUBuffer;
  h: GPUBuffer;
  x: GPUBuffer;
  proj: GPUBuffer;
  mix: GPUBuffer;
  core: GPUBuffer;
  gated: GPUBuffer;
  act: GPUBuffer;
  logits: GPUBuffer;
  step: GPUBuffer;
  rope: GPUBuffer;
  chunk: ChunkScratch;
  moe?: MoeActivations;
  buffers: GPUBuffer[];
}

/** The widest activation row per token, to size buffers and bound the prefill chunk. */
function rowFloats(model: Model) {
  const c = model.config;
  const d = dims(c);
  const moe = c.moe;
  return {
    proj: Math.max(d.deltaNetProj, d.attentionProj, moe ? moe.numExperts + 1 : 0),
    mix: Math.max(d.convDim, d.attentionOut),
    core: Math.max(d.valueDim, d.attentionOut),
    act: Math.max(c.intermediateSize ?? 0, moe?.sharedIntermediate ?? 0),
    moeAct: moe ? moe.topk * moe.expertIntermediate : 0,
    moeOut: moe ? moe.topk * c.hiddenSize : 0,
  };
}

/** Prefill runs in chunks of this many tokens: large enough to fill a GPU, small enough for every binding. */
export function prefillChunk(ctx: GpuContext, model: Model, wanted = 512): number {
  const widest = Math.max(...Object.values(rowFloats(model))) * 4;
  return Math.max(1, Math.min(wanted, Math.floor(ctx.caps.maxStorageBindingBytes / widest)));
}

export function createActivations(ctx: GpuContext, model: Model, maxTokens: number, capacity: number): Activations {
  const c = model.config;
  const d = dims(c);
  const S = maxTokens;
  const f = rowFloats(model);
  const buffers: GPUBuffer[] = [];
  const storage = (label: string, floats: number) => {
    const b = ctx.storage(label, Math.max(4, floats) * 4);
    buffers.push(b);
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
    moe = {
      ids: storage('moe ids', S * k),
      gates: storage('moe gates', S * (k + 1)),
      act: storage('moe act', S * f.moeAct),
      out: storage('moe out', S * f.moeOut),
      order: storage('moe order', S * k),
      tiles: storage('moe tiles', tiles * 4),
      args,
      groupScratch,
      tileTokens: MOE_TILE_TOKENS,
    };
  }
  return {
    maxTokens: S,
    capacity,
    ids: storage('ids', S),
    token: storage('token', 4),
    h: storage('h', S * c.hiddenSize),
    x: storage('x', S * c.hiddenSize),
    proj: storage('proj', S * f.proj),
    mix: storage('mix', S * f.mix),
    core: storage('core', S * f.core),
    gated: storage('gated', S * d.valueDim),
    act: storage('act', S * f.act),
    logits: storage('logits', c.vocabSize),
    step,
    rope,
    chunk: createChunkScratch(ctx, S, c.linearValueHeads, c.linearKeyDim, c.linearValueDim),
    moe,
    buffers,
  };
}

/** Bytes of the per-layer state for a context of `capacity` tokens. */
export function stateBytes(model: Model, capacity: number): number {
  const c = model.config;
  const d = dims(c);
  return c.layerTypes.reduce(
    (sum, t) =>
      sum +
      (t === 'full_attention'
        ? 2 * c.numKvHeads * capacity * c.headDim * 4
        : ((c.convKernel - 1) * d.convDim + c.linearValueHeads * c.linearKeyDim * c.linearValueDim) * 4),
    0,
  );
}

export function createLayerStates(ctx: GpuContext, model: Model, capacity: number): LayerState[] {
  const c = model.config;
  const d = dims(c);
  const kvBytes = c.numKvHeads * capacity * c.headDim * 4;
  if (kvBytes > ctx.caps.maxStorageBindingBytes) {
    const most = Math.floor(ctx.caps.maxStorageBindingBytes / (c.numKvHeads * c.headDim * 4));
    throw new SessionError(`a context of ${capacity} tokens needs ${kvBytes} bytes of KV cache per layer; this adapter binds at most ${ctx.caps.maxStorageBindingBytes} (${most} tokens)`);
  }
  return c.layerTypes.map((t, i) =>
    t === 'full_attention'
      ? { keys: ctx.storage(`layer ${i} keys`, kvBytes), values: ctx.storage(`layer ${i} values`, kvBytes) }
      : {
          conv: ctx.storage(`layer ${i} conv state`, (c.convKernel - 1) * d.convDim * 4),
          recurrent: ctx.storage(`layer ${i} recurrent state`, c.linearValueHeads * c.linearKeyDim * c.linearValueDim * 4),
        },
  );
}
