import type { Dispatch, GpuContext } from '../gpu/context.ts';
import { ContractError } from '../errors.ts';
import { embedding } from '../kernels/embedding.ts';
import { rmsNorm } from '../kernels/rms_norm.ts';
import { type Activations, type LayerState, createAttentionState } from './activations.ts';
import { type ForwardPlan, decoderLayer, forwardRows, linear } from './layers.ts';
import type { Model } from './model.ts';
import { type MtpWeights, stageTensor, vectorBuffer } from './weights.ts';

/**
 * The multi-token-prediction block as a drafter (spec §2.7). Row p reads token x_{p+1} (act.ids, or act.token for
 * decode rows) and the main model's final-normed hidden state h_p (`hidden`), at RoPE position p:
 *   e  = embed(x_{p+1})
 *   u  = fc([RMSNorm1p(e, pre_fc_norm_embedding); RMSNorm1p(h_p, pre_fc_norm_hidden)])
 *   u  = full-attention decoder layer (u, position p), over the block's own KV cache
 *   h' = RMSNorm1p(u, mtp.norm)                       left in act.x, where lmHead reads it
 * The draft logits for x_{p+2} are then the shared LM head of h' (layers.ts lmHead, rows from 0).
 */
export interface MtpBuffers {
  /** [S, H] f32: h_p per row, the main model's final-normed hidden states. */
  hidden: GPUBuffer;
  /** [S, 2H] f32: fc's input, the normed embedding then the normed hidden state per row. */
  fcInput: GPUBuffer;
  /** The MTP layer's own KV cache. */
  state: LayerState;
}

export function mtpWeights(model: Model): MtpWeights {
  const mtp = model.weights.mtp;
  if (!mtp) throw new ContractError('needs a model loaded with its MTP block (loadModel ..., { mtp: true })', 'mtp');
  return mtp;
}

/** Buffers for drafts of up to `maxTokens` rows over a context of `capacity` tokens. */
export function createMtpBuffers(ctx: GpuContext, model: Model, maxTokens: number, capacity: number): MtpBuffers {
  mtpWeights(model);
  const H = model.config.hiddenSize;
  return {
    hidden: ctx.storage('mtp hidden', maxTokens * H * 4),
    fcInput: ctx.storage('mtp fc input', maxTokens * 2 * H * 4),
    state: createAttentionState(ctx, model, capacity, 1, 'mtp layer'),
  };
}

export function destroyMtpBuffers(ctx: GpuContext, buffers: MtpBuffers): void {
  ctx.free(buffers.hidden, buffers.fcInput, buffers.state.keys, buffers.state.values);
}

/** Where a drafter call reads its rows' tokens and hidden states, when not from act (ids or token) and buffers.hidden. */
export interface MtpInputs {
  ids?: { buffer: GPUBuffer; offset: number };
  /** [rows, H] f32 from row `row` of `buffer`. */
  hidden?: { buffer: GPUBuffer; row: number };
}

/**
 * The drafter's forward over `plan.tokens` rows, with act's working buffers: consecutive positions from the step
 * uniform (prefill), or each decode row at its act.positions entry, as the main forward places them.
 */
export async function mtpForward(
  ctx: GpuContext,
  model: Model,
  buffers: MtpBuffers,
  act: Activations,
  plan: ForwardPlan,
  inputs: MtpInputs = {},
): Promise<Dispatch[]> {
  const w = mtpWeights(model);
  const { hiddenSize: H, rmsNormEps: eps } = model.config;
  const rows = forwardRows(ctx, plan);
  const T = rows.T;
  const halves = { rows: T, cols: H, eps, y: buffers.fcInput, yStride: 2 * H };
  const ids = inputs.ids ?? { buffer: plan.input === 'token' ? act.token : act.ids, offset: 0 };
  const hidden = inputs.hidden ?? { buffer: buffers.hidden, row: 0 };
  return [
    ...(await embedding(ctx, { table: stageTensor(model.weights.embed, 'embedding'), ids: ids.buffer, idsOffset: ids.offset, tokens: T, out: act.h })),
    await rmsNorm(ctx, { ...halves, x: act.h, w: vectorBuffer(w.preFcNormEmbedding), yOffset: 0 }),
    await rmsNorm(ctx, { ...halves, x: hidden.buffer, xOffset: hidden.row * H, w: vectorBuffer(w.preFcNormHidden), yOffset: H }),
    ...(await linear(ctx, act, rows, { w: w.fc, x: { buffer: buffers.fcInput }, xStride: 2 * H, y: act.h, yStride: H, epilogue: 'store' })),
    ...(await decoderLayer(ctx, model, w.layers[0], buffers.state, act, rows)),
    await rmsNorm(ctx, { x: act.h, w: vectorBuffer(w.norm), y: act.x, rows: T, cols: H, eps }),
  ];
}
