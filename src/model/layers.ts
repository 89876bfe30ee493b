import type { Dispatch, GpuContext } from '../gpu/context.ts';
import { type GpuTensor, leadingRows } from '../gpu/tensor.ts';
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
import { attention, defaultSplits } from '../kernels/attention.ts';
import { moeRoute } from '../kernels/moe_route.ts';
import { moeGroup } from '../kernels/moe_group.ts';
import { moeCombine } from '../kernels/moe_combine.ts';
import { dims } from './config.ts';
import { type Model, hasHead, takesIds } from './model.ts';
import type { AttentionWeights, DeltaNetWeights, DecoderLayerWeights, DenseMlpWeights, MoeWeights } from './weights.ts';
import { stageTensor, vectorBuffer } from './weights.ts';
import { type Activations, type LayerState, elementOf } from './activations.ts';
import { ContractError } from '../errors.ts';

/**
 * The Qwen3.5 forward pass as a list of GPU dispatches, in the order of modeling_qwen3_5.py:
 *   h = embed(ids)
 *   for each layer: h += mixer(norm(h))   mixer = Gated DeltaNet (3 of 4 layers) or gated attention
 *                   h += mlp(norm(h))     mlp = SwiGLU (dense) or routed experts + shared expert (MoE)
 *   x = norm(h)
 * A prefill call ('ids') processes `tokens` consecutive tokens of one sequence from the position in the step
 * uniform, with the tiled and chunked kernels. A decode call ('token') processes `tokens` rows, each the next token
 * of a sequence of its own (continuous batching; one row for one sequence) at its position in act.positions, with
 * its state at that row of the layer states, through the matrix-vector and recurrent kernels, so that a row's
 * arithmetic is the same however many rows run beside it. A prefill of one token runs as a decode row.
 */
export interface ForwardPlan {
  tokens: number;
  /** Where the token ids come from: the prompt buffer (prefill), or the tokens the sampler left (decode rows). */
  input: 'ids' | 'token';
  /**
   * Decode rows' projections through the tiled matmul (weights read once for all rows: a batch on a GPU) rather
   * than matvec (weights read once per workgroup of up to 4 rows); norms are then dispatches of their own and the
   * final norm leaves act.x for lmHead.
   */
  tiledDecode?: boolean;
  /**
   * Decode rows that are consecutive tokens of one sequence, at their act.positions (a verification of drafted
   * tokens): each row through the decode arithmetic of a step of its own, its attention over the one KV cache, its
   * DeltaNet step on the state the row before it left, each row's state kept in a slot of its own (slot r + 1 after
   * row r; slot 0, the sequence's, is read by row 0) so that the caller can keep the state after any accepted row.
   */
  oneSequence?: boolean;
}

/** A forward call's shape as its parts need it: T tokens (prefill) or T rows (decode), and how projections run. */
export interface Rows {
  T: number;
  decode: boolean;
  /** Projections through the tiled matmul (prefill on GPUs, or tiledDecode). */
  tiled: boolean;
  /** Decode rows of one sequence (ForwardPlan.oneSequence). */
  oneSequence: boolean;
}

export function forwardRows(ctx: GpuContext, plan: ForwardPlan): Rows {
  const decode = plan.tokens === 1 || plan.input === 'token';
  if (plan.oneSequence && (!decode || plan.tiledDecode)) throw new ContractError('rows of one sequence are decode rows through matvec', 'forward');
  return { T: plan.tokens, decode, tiled: decode ? Boolean(plan.tiledDecode) : !ctx.caps.cpu, oneSequence: Boolean(plan.oneSequence) };
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
  experts?: {
    layer: number;
    dispatches: Dispatch[];
    /**
     * Decode rows through matvec: each row's part of `dispatches`, which adds that row's resident experts into h, so
     * a pass must hold all of the row's experts (a row at a time when the rows need more experts than there are slots).
     */
    rows?: Dispatch[][];
  };
}

/** The segments' dispatches in order: the forward pass they cut. */
export const segmentDispatches = (segments: ForwardSegment[]): Dispatch[] => segments.flatMap((s) => [...s.dispatches, ...(s.experts?.dispatches ?? [])]);

export async function forward(ctx: GpuContext, model: Model, state: LayerState[], act: Activations, plan: ForwardPlan): Promise<Dispatch[]> {
  return segmentDispatches(await forwardSegments(ctx, model, state, act, plan));
}

export async function forwardSegments(ctx: GpuContext, model: Model, state: LayerState[], act: Activations, plan: ForwardPlan): Promise<ForwardSegment[]> {
  const { config, weights: w } = model;
  const T = plan.tokens;
  const rows = forwardRows(ctx, plan);
  const H = config.hiddenSize;
  const segments: ForwardSegment[] = [];
  let out: Dispatch[] = [];
  const add = (dispatches: Dispatch | Dispatch[]) => out.push(...(Array.isArray(dispatches) ? dispatches : [dispatches]));
  const normed = async (weight: GpuTensor): Promise<Input> => {
    const [input, dispatches] = await blockInput(ctx, model, act, rows, weight);
    add(dispatches);
    return input;
  };

  // A pipeline stage past the first finds its input rows in act.h (runtime/pipeline writes them there).
  if (takesIds(model))
    add(await embedding(ctx, { table: stageTensor(w.embed, 'embedding'), ids: plan.input === 'token' ? act.token : act.ids, tokens: T, out: act.h }));
  for (let i = 0; i < w.layers.length; i++) {
    const layer: DecoderLayerWeights = w.layers[i];
    add(await mixerBlock(ctx, model, layer, state[i], act, await normed(layer.inputNorm), rows));
    const y = await normed(layer.postNorm);
    if (layer.mlp.kind === 'dense') {
      add(await denseMlp(ctx, model, layer.mlp, act, y, rows));
    } else {
      add(await moeRouting(ctx, model, layer.mlp, act, y, rows));
      const parts = await routedExperts(ctx, model, layer.mlp, act, y, rows);
      const perRow = rows.decode && !rows.tiled;
      segments.push({ dispatches: out, experts: { layer: i, dispatches: parts.flat(), ...(perRow && { rows: parts }) } });
      out = [];
      add(await moeOutput(ctx, model, layer.mlp, act, rows));
    }
  }
  // Decode folds the final norm into the LM head (lmHead 'decoded'); prefill (and tiled decode) leaves the normed
  // rows in act.x, which its LM head and scoring read, and so does a verification, for the MTP drafter that reads
  // them. A stage before the last leaves its output rows in act.h.
  if (hasHead(model) && (plan.input === 'ids' || rows.tiled || rows.oneSequence)) {
    add(await rmsNorm(ctx, { x: act.h, w: vectorBuffer(stageTensor(w.norm, 'final norm')), y: act.x, rows: T, cols: H, eps: config.rmsNormEps }));
  }
  segments.push({ dispatches: out });
  return segments;
}

/**
 * The input of a projection: a buffer (activations, or the normed residual stream act.x that a norm dispatch wrote),
 * or with `norm` the residual stream act.h, RMS-normed by the projection itself (decode: each row by its own norm).
 */
export interface Input {
  buffer: GPUBuffer;
  norm?: { weight: GPUBuffer; eps: number };
}

/** The RMS norm of act.h in front of a block: folded into the block's matvecs in decode, else its own dispatch into act.x. */
export async function blockInput(ctx: GpuContext, model: Model, act: Activations, rows: Rows, weight: GpuTensor): Promise<[Input, Dispatch[]]> {
  if (!rows.tiled && rows.decode) return [residualNormed(model, act, weight), []];
  const { hiddenSize: H, rmsNormEps: eps } = model.config;
  return [{ buffer: act.x }, [await rmsNorm(ctx, { x: act.h, w: vectorBuffer(weight), y: act.x, rows: rows.T, cols: H, eps })]];
}

/** A layer's token mixer (DeltaNet or gated attention) on its normed input, added to the residual stream. */
function mixerBlock(ctx: GpuContext, model: Model, layer: DecoderLayerWeights, state: LayerState, act: Activations, x: Input, rows: Rows): Promise<Dispatch[]> {
  return layer.mixer.kind === 'linear_attention'
    ? deltaNet(ctx, model, layer.mixer, state, act, x, rows)
    : gatedAttention(ctx, model, layer.mixer, state, act, x, rows);
}

/**
 * One whole decoder layer on act.h as a single list, every MoE expert resident (no segments): for a layer outside
 * the main stack, such as the MTP block's.
 */
export async function decoderLayer(
  ctx: GpuContext,
  model: Model,
  layer: DecoderLayerWeights,
  state: LayerState,
  act: Activations,
  rows: Rows,
): Promise<Dispatch[]> {
  const [x, xNorm] = await blockInput(ctx, model, act, rows, layer.inputNorm);
  const mixer = await mixerBlock(ctx, model, layer, state, act, x, rows);
  const [y, yNorm] = await blockInput(ctx, model, act, rows, layer.postNorm);
  const mlp =
    layer.mlp.kind === 'dense'
      ? await denseMlp(ctx, model, layer.mlp, act, y, rows)
      : [
          ...(await moeRouting(ctx, model, layer.mlp, act, y, rows)),
          ...(await routedExperts(ctx, model, layer.mlp, act, y, rows)).flat(),
          ...(await moeOutput(ctx, model, layer.mlp, act, rows)),
        ];
  return [...xNorm, ...mixer, ...yNorm, ...mlp];
}

/** The residual stream, normed with `weight` inside whichever matvec reads it. */
export const residualNormed = (model: Model, act: Activations, weight: GpuTensor): Input => ({
  buffer: act.h,
  norm: { weight: vectorBuffer(weight), eps: model.config.rmsNormEps },
});

export interface LinearArgs {
  w: GpuTensor;
  x: Input;
  xStride: number;
  y: GPUBuffer;
  yStride: number;
  epilogue: 'store' | 'add' | 'swiglu';
  /** Routing weight of each token's output: buffer[index + t * stride]. */
  scales?: { buffer: GPUBuffer; index: number; stride: number };
}

/**
 * y (+)= x W^T for T rows: the tiled matmul (prefill on GPUs, a batch's decode rows with tiledDecode: weights read once
 * per tile of rows), else matvec, a workgroup's weights loaded once for up to 4 rows (bandwidth-bound decode; and CPU
 * adapters, where the tiled matmul runs far below what matvec reaches). Either way a row's result does not depend on
 * the rows beside it.
 */
export function linear(ctx: GpuContext, act: Activations, { T, tiled }: Rows, args: LinearArgs): Promise<Dispatch[]> {
  const { w, x, y, epilogue, scales } = args;
  const [input, output] = [elementOf(act, x.buffer), elementOf(act, y)];
  if (!tiled) {
    return matvec(ctx, { w, x: x.buffer, xStride: args.xStride, y, yStride: args.yStride, input, output, epilogue, scales, norm: x.norm, tokens: T });
  }
  if (x.norm) throw new ContractError('takes a normed input only (its norm runs as a dispatch of its own)', 'matmul');
  return matmul(ctx, { w, tokens: T, x: x.buffer, xStride: args.xStride, y, yStride: args.yStride, input, output, epilogue, scales });
}

/**
 * Qwen3_5GatedDeltaNet (spec §2.3): fused in-projection, causal conv, l2-normed delta rule, gated norm, out-projection.
 * One token (decode) runs everything between the projections in one kernel; more run each step on its own, the
 * delta rule chunked (GPUs) or token by token (CPU adapters).
 */
async function deltaNet(ctx: GpuContext, model: Model, w: DeltaNetWeights, state: LayerState, act: Activations, x: Input, rows: Rows): Promise<Dispatch[]> {
  const T = rows.T;
  const config = model.config;
  const dim = dims(config);
  const projWidth = dim.deltaNetProj;
  const nk = config.linearKeyHeads;
  const nv = config.linearValueHeads;
  const heads = { nk, nv, dk: config.linearKeyDim, dv: config.linearValueDim };
  const gates = { bOffset: dim.convDim + dim.valueDim, aOffset: dim.convDim + dim.valueDim + nv, decayParams: w.decayParams };
  const conv = { wStride: w.conv.rowStride, kernelSize: config.convKernel, step: act.step };
  const inProj = await linear(ctx, act, rows, { w: w.inProj, x, xStride: config.hiddenSize, y: act.mixerProj, yStride: projWidth, epilogue: 'store' });
  const outProj = await linear(ctx, act, rows, {
    w: w.outProj,
    x: { buffer: act.gatedNorm },
    xStride: dim.valueDim,
    y: act.h,
    yStride: config.hiddenSize,
    epilogue: 'add',
  });
  if (rows.decode) {
    // Rows of one sequence (a verification) run in order in one dispatch, leaving the state after each row in a slot.
    const step = await gatedDeltaNetDecode(ctx, {
      ...heads,
      ...gates,
      ...(rows.oneSequence ? { sequenceRows: T } : { rows: T }),
      wStride: conv.wStride,
      kernelSize: conv.kernelSize,
      positions: act.positions,
      proj: act.mixerProj,
      projStride: projWidth,
      zOffset: dim.convDim,
      convW: vectorBuffer(w.conv),
      convState: state.conv!,
      state: state.recurrent!,
      normW: vectorBuffer(w.norm),
      eps: config.rmsNormEps,
      y: act.gatedNorm,
      yStride: dim.valueDim,
    });
    return [...inProj, step, ...outProj];
  }
  const core = {
    ...heads,
    ...gates,
    tokens: T,
    qkv: act.coreInput,
    qkvStride: dim.convDim,
    ba: act.mixerProj,
    baStride: projWidth,
    state: state.recurrent!,
    out: act.coreOutput,
  };
  return [
    ...inProj,
    await conv1dCausal(ctx, {
      ...conv,
      x: act.mixerProj,
      xStride: projWidth,
      w: vectorBuffer(w.conv),
      state: state.conv!,
      y: act.coreInput,
      tokens: T,
      channels: dim.convDim,
    }),
    await l2norm(ctx, {
      x: act.coreInput,
      tokens: T,
      heads: 2 * nk,
      dim: config.linearKeyDim,
      tokenStride: dim.convDim,
      scaledHeads: nk,
      scale: 1 / Math.sqrt(config.linearKeyDim),
    }),
    // Chunked on GPUs; token after token on CPU adapters, where the chunks' kernels compile for minutes and run slower.
    ...(ctx.caps.cpu ? await gatedDeltaNetStep(ctx, core) : await gatedDeltaNetChunk(ctx, { ...core, scratch: act.chunk })),
    await rmsNormGated(ctx, {
      x: act.coreOutput,
      z: act.mixerProj,
      zTokenStride: projWidth,
      zOffset: dim.convDim,
      w: vectorBuffer(w.norm),
      y: act.gatedNorm,
      rows: T * nv,
      heads: nv,
      dim: config.linearValueDim,
      eps: config.rmsNormEps,
    }),
    ...outProj,
  ];
}

/** Qwen3_5Attention (spec §2.4): [q | gate] per head, q/k norm, partial RoPE, causal GQA over the KV cache, sigmoid gate. */
async function gatedAttention(
  ctx: GpuContext,
  model: Model,
  w: AttentionWeights,
  state: LayerState,
  act: Activations,
  x: Input,
  rows: Rows,
): Promise<Dispatch[]> {
  const T = rows.T;
  const config = model.config;
  const dim = dims(config);
  const projWidth = dim.attentionProj;
  const kOffset = config.numHeads * 2 * config.headDim;
  const heads = { tokens: T, nq: config.numHeads, nkv: config.numKvHeads, headDim: config.headDim };
  // Decode rows each attend in their own sequence's cache (or, verifying, in the one sequence's, with the key splits of
  // a single decode row, so that each row's arithmetic is a decode step's); prefill tokens are consecutive positions of one.
  const positions = rows.decode ? { positions: act.positions, oneSequence: rows.oneSequence } : { step: act.step };
  const cache = { kCache: state.keys!, vCache: state.values!, capacity: act.capacity, ...positions };
  const splits = rows.oneSequence ? defaultSplits(1, config.numHeads, act.capacity) : undefined;
  return [
    ...(await linear(ctx, act, rows, { w: w.qkvProj, x, xStride: config.hiddenSize, y: act.mixerProj, yStride: projWidth, epilogue: 'store' })),
    await attentionPrepare(ctx, {
      ...heads,
      ...cache,
      proj: act.mixerProj,
      projStride: projWidth,
      kOffset,
      vOffset: kOffset + config.numKvHeads * config.headDim,
      rotaryDim: config.rotaryDim,
      qNorm: vectorBuffer(w.qNorm),
      kNorm: vectorBuffer(w.kNorm),
      eps: config.rmsNormEps,
      rope: act.rope,
      q: act.coreInput,
    }),
    ...(await attention(ctx, {
      ...heads,
      ...cache,
      splits,
      q: act.coreInput,
      proj: act.mixerProj,
      projStride: projWidth,
      out: act.coreOutput,
      scratch: act.partials,
    })),
    ...(await linear(ctx, act, rows, {
      w: w.oProj,
      x: { buffer: act.coreOutput },
      xStride: dim.attentionOut,
      y: act.h,
      yStride: config.hiddenSize,
      epilogue: 'add',
    })),
  ];
}

/** Qwen3_5MLP: down(silu(gate x) * up x), added to the residual. */
async function denseMlp(ctx: GpuContext, model: Model, w: DenseMlpWeights, act: Activations, x: Input, rows: Rows): Promise<Dispatch[]> {
  const config = model.config;
  const I = config.intermediateSize!;
  return [
    ...(await linear(ctx, act, rows, { w: w.gateUp, x, xStride: config.hiddenSize, y: act.swiglu, yStride: I, epilogue: 'swiglu' })),
    ...(await linear(ctx, act, rows, { w: w.down, x: { buffer: act.swiglu }, xStride: I, y: act.h, yStride: config.hiddenSize, epilogue: 'add' })),
  ];
}

/**
 * Qwen3_5MoeSparseMoeBlock (spec §2.6), on the GPU end to end, in three steps (moeRouting, routedExperts,
 * moeOutput): router (+ shared gate logit), softmax top-k with renormalised weights and the sigmoid-gated shared
 * expert's SwiGLU; the chosen experts through the slot table; the shared expert's down projection. Routing weights are folded into the SwiGLU
 * output so the down projections just add.
 */
async function moeRouting(ctx: GpuContext, model: Model, w: MoeWeights, act: Activations, x: Input, rows: Rows): Promise<Dispatch[]> {
  const T = rows.T;
  const config = model.config;
  const { numExperts: E, topk: k } = config.moe!;
  const moeAct = act.moe!;
  return [
    ...(await linear(ctx, act, rows, { w: w.router, x, xStride: config.hiddenSize, y: moeAct.logits, yStride: E + 1, epilogue: 'store' })),
    await moeRoute(ctx, { logits: moeAct.logits, tokens: T, experts: E, topk: k, ids: moeAct.ids, gates: moeAct.gates }),
    // Prefill and tiled decode: the T·topk (token, expert) pairs grouped by expert into tiles.
    ...(rows.decode && !rows.tiled
      ? []
      : await moeGroup(ctx, {
          ids: moeAct.ids,
          tokens: T,
          experts: E,
          topk: k,
          tileTokens: moeAct.tileTokens,
          order: moeAct.order,
          tiles: moeAct.tiles,
          args: moeAct.args,
          scratch: moeAct.groupScratch,
        })),
    // The shared expert's SwiGLU, sigmoid-gated, before any expert adds into h: a decode input is h itself.
    ...(await linear(ctx, act, rows, {
      w: w.sharedGateUp,
      x,
      xStride: config.hiddenSize,
      y: act.swiglu,
      yStride: config.moe!.sharedIntermediate,
      epilogue: 'swiglu',
      scales: { buffer: moeAct.gates, index: k, stride: k + 1 },
    })),
  ];
}

/**
 * The chosen experts' SwiGLU and down projections: decode adds them into h (each row through its own picks, two
 * dispatches per row, a list per row); prefill and tiled decode store one row per (token, expert) pair, grouped by
 * expert so that an expert's weights are read once for every row that picked it (one list).
 */
async function routedExperts(ctx: GpuContext, model: Model, w: MoeWeights, act: Activations, x: Input, rows: Rows): Promise<Dispatch[][]> {
  const T = rows.T;
  const config = model.config;
  const { topk: k, expertIntermediate: Im } = config.moe!;
  const H = config.hiddenSize;
  const moeAct = act.moe!;
  if (rows.decode && !rows.tiled) {
    const row = async (r: number) => {
      const experts = { ids: moeAct.ids, idsOffset: r * k, slots: w.slots, topk: k };
      return [
        ...(await matvec(ctx, {
          w: w.expertsGateUp,
          x: x.buffer,
          xOffset: r * H,
          norm: x.norm,
          input: 'f32',
          y: moeAct.swiglu,
          yOffset: r * k * Im,
          output: elementOf(act, moeAct.swiglu),
          yStride: Im,
          epilogue: 'swiglu',
          scales: { buffer: moeAct.gates, index: r * (k + 1) },
          experts: { ...experts, mode: 'each' },
        })),
        ...(await matvec(ctx, {
          w: w.expertsDown,
          x: moeAct.swiglu,
          xOffset: r * k * Im,
          input: elementOf(act, moeAct.swiglu),
          xStride: Im,
          y: act.h,
          yOffset: r * H,
          output: 'f32',
          epilogue: 'add',
          experts: { ...experts, mode: 'sum' },
        })),
      ];
    };
    return Promise.all(Array.from({ length: T }, (_, r) => row(r)));
  }
  const grouped = { order: moeAct.order, tiles: moeAct.tiles, args: moeAct.args, slots: w.slots, topk: k };
  return [
    [
      ...(await matmul(ctx, {
        w: w.expertsGateUp,
        tokens: T,
        x: x.buffer,
        input: 'f32',
        xStride: H,
        y: moeAct.swiglu,
        output: elementOf(act, moeAct.swiglu),
        yStride: Im,
        epilogue: 'swiglu',
        scales: { buffer: moeAct.gates, index: 0, stride: 0 },
        grouped: { ...grouped, argsOffset: 0, input: 'token' },
      })),
      ...(await matmul(ctx, {
        w: w.expertsDown,
        tokens: T,
        x: moeAct.swiglu,
        input: elementOf(act, moeAct.swiglu),
        xStride: Im,
        y: moeAct.out,
        output: 'f32',
        yStride: H,
        epilogue: 'store',
        grouped: { ...grouped, argsOffset: 12, input: 'pair' },
      })),
    ],
  ];
}

/** Prefill and tiled decode: the pairs' rows summed into h; then the shared expert's down projection, added to h. */
async function moeOutput(ctx: GpuContext, model: Model, w: MoeWeights, act: Activations, rows: Rows): Promise<Dispatch[]> {
  const T = rows.T;
  const config = model.config;
  const { topk: k, sharedIntermediate: Is } = config.moe!;
  const H = config.hiddenSize;
  const moeAct = act.moe!;
  return [
    ...(rows.decode && !rows.tiled ? [] : [await moeCombine(ctx, { h: act.h, out: moeAct.out, tokens: T, hidden: H, topk: k })]),
    ...(await linear(ctx, act, rows, { w: w.sharedDown, x: { buffer: act.swiglu }, xStride: Is, y: act.h, yStride: H, epilogue: 'add' })),
  ];
}

/**
 * Logits into `logits` ([rows, V] f32 whatever the activations): of the final-normed hidden rows [first, first + rows)
 * that a prefill forward (or a tiled decode) left in act.x — through the tiled matmul with `tiled`, so that a row's
 * logits do not depend on how many rows there are — or of the rows of a decode forward (`decoded`: their count; the
 * final norm folded in here). With `vocab`, only the logits of ids [0, vocab) ([rows, vocab]: a drafter's).
 */
export function lmHead(
  ctx: GpuContext,
  model: Model,
  act: Activations,
  logits: GPUBuffer,
  rows: { first: number; count: number; tiled?: boolean; vocab?: number } | { decoded: number },
): Promise<Dispatch[]> {
  const H = model.config.hiddenSize;
  const head = stageTensor(model.weights.lmHead, 'LM head');
  const vocab = 'vocab' in rows ? rows.vocab : undefined;
  const w = vocab === undefined ? head : leadingRows(head, vocab);
  const V = vocab ?? model.config.vocabSize;
  if ('decoded' in rows) {
    const x = residualNormed(model, act, stageTensor(model.weights.norm, 'final norm'));
    const tokens = rows.decoded;
    return matvec(ctx, { w, x: x.buffer, xStride: H, norm: x.norm, input: 'f32', y: logits, yStride: V, output: 'f32', epilogue: 'store', tokens });
  }
  const { first, count } = rows;
  return !rows.tiled && (count === 1 || ctx.caps.cpu)
    ? matvec(ctx, { w, x: act.x, xOffset: first * H, xStride: H, input: 'f32', y: logits, yStride: V, output: 'f32', epilogue: 'store', tokens: count })
    : matmul(ctx, { w, tokens: count, x: act.x, xOffset: first * H, xStride: H, input: 'f32', y: logits, yStride: V, output: 'f32', epilogue: 'store' });
}
