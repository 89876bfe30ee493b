import type { Engine } from '../api/engine.ts';
import type { GpuContext } from '../gpu/context.ts';
import type { WeightDtype } from '../gpu/tensor.ts';
import type { Model } from '../model/model.ts';
import { Session } from '../runtime/session.ts';
import { runSteps } from '../runtime/run_ahead.ts';
import { GpuSampler } from '../runtime/sampler.ts';
import { copyBandwidth, decodeWeightBytes } from '../bench/bandwidth.ts';
import { syntheticLayers, syntheticModel } from '../bench/synthetic.ts';
import { projectDecode } from '../bench/projection.ts';
import { roundTo } from '../bench/stats.ts';
import { type HopCost, measureHops } from './bench_hop.ts';
import { describeVerifyCost, measureHeadMs, measureVerifyCost } from './bench_verify.ts';
import { type Args, UsageError, dtypeFlag, intFlag, stringFlag } from './args.ts';
import { benchStreams } from './bench_streams.ts';
import type { CliHost } from './host.ts';

/**
 * Prints measured figures (never asserts them): prefill and decode tokens/s, and the weight bandwidth a
 * decode step achieves as a fraction of the adapter's copy bandwidth measured in the same run. A checkpoint is
 * loaded as an Engine (`load`) and timed on its session, below the text API; a synthetic model gets a session
 * of its own.
 */
export async function runBench(
  args: Args,
  ctx: GpuContext,
  host: CliHost,
  load: (model: string, dtype: WeightDtype, contextLength: number) => Promise<Engine>,
): Promise<void> {
  const dtype = dtypeFlag(args, ctx.caps.f16);
  const modelPath = stringFlag(args, 'model');
  const synthetic = stringFlag(args, 'synthetic');
  if (!modelPath === !synthetic) throw new UsageError('bench takes --model <dir> or --synthetic <name>');
  const streams = streamCounts(args);
  const promptTokens = intFlag(args, 'prompt-tokens', streams ? 16 : 128);
  const decodeTokens = intFlag(args, 'decode-tokens', 32);
  const contextLength = promptTokens + decodeTokens + 1;
  const draftVocab = args.flags.has('draft-vocab') ? intFlag(args, 'draft-vocab', undefined, 0) : undefined;
  if (draftVocab !== undefined && !args.flags.has('verify-cost')) throw new UsageError('--draft-vocab is for --verify-cost');
  const hostOnly = args.flags.has('host-only');
  if (hostOnly && (streams || args.flags.has('verify-cost'))) throw new UsageError('--host-only times decode steps alone: not with --streams or --verify-cost');
  if (hostOnly && args.flags.has('adapter')) throw new UsageError("--host-only runs on Dawn's null backend: not with --adapter");
  const t0 = performance.now();
  let model: Model;
  let session: Session;
  let release: () => void;
  if (synthetic) {
    model = await syntheticModel(ctx, synthetic, {
      layers: args.flags.has('layers') ? intFlag(args, 'layers') : undefined,
      dtype,
      mtp: args.flags.has('verify-cost'),
    });
    session = Session.create(ctx, model, { contextLength });
    release = () => {
      session.destroy();
      model.destroy();
    };
  } else {
    const engine = await load(modelPath!, dtype, contextLength);
    ({ model, session } = engine);
    release = () => engine.destroy();
  }
  const loadMs = performance.now() - t0;
  if (streams) {
    try {
      await printStreams(host, args, ctx, model, { counts: streams, promptTokens, decodeTokens });
    } finally {
      release();
    }
    return;
  }
  let seed = 12345;
  const prompt = Array.from({ length: promptTokens }, () => (seed = (seed * 1103515245 + 12345) >>> 0) % model.tokenizerSize);

  const sampler = GpuSampler.create(ctx, { vocabSize: model.config.vocabSize, tokenizerSize: model.tokenizerSize });
  sampler.begin({ temperature: 0 }, prompt);

  // Warm-up compiles every pipeline of both plans; the timed runs reuse them.
  await session.prefill(prompt);
  await session.sample(sampler);
  await (await session.advance(sampler)).read();
  session.reset();

  const p0 = performance.now();
  await session.prefill(prompt);
  await session.sample(sampler);
  const prefillMs = performance.now() - p0;
  // Decode as generation runs it: steps submitted ahead of the tokens being read, as many as cover a readback.
  const d0 = performance.now();
  let hostMs = 0;
  const steps = await runSteps(session.readbackMs, decodeTokens, async () => {
    const h0 = performance.now();
    const pending = await session.advance(sampler);
    hostMs += performance.now() - h0;
    return pending;
  });
  const decodeMs = performance.now() - d0;
  const dispatches = (await session.decodeDispatches()) + (await sampler.dispatches(session.activations.logits, session.activations.token)).length;
  const decodeRate = (decodeTokens * 1000) / decodeMs;
  const stepFigures = {
    model: model.location,
    layers: model.config.numLayers,
    // As loaded: a packed model or a quantised GGUF may hold another than the default.
    dtype: model.dtype,
    adapter: ctx.adapter.name,
    backend: ctx.adapter.backend,
    load_ms: Math.round(loadMs),
    prompt_tokens: promptTokens,
    decode_tokens: decodeTokens,
    dispatches_per_step: dispatches,
    host_ms_per_step: round(hostMs / decodeTokens, 3),
    steps_in_flight: steps.deepest,
  };
  if (hostOnly) {
    // Nothing ran on a GPU: a step took what the host's work took, and decode could go no faster than that.
    const figures = { ...stepFigures, step_ms: round(decodeMs / decodeTokens, 3), host_bound_tokens_per_s: round(decodeRate) };
    host.stdout(
      args.flags.has('json')
        ? `${JSON.stringify(figures)}\n`
        : `${figures.model} (${figures.layers} layers, ${model.dtype}) on Dawn's null backend: the host's work alone, no GPU's
  decode   ${figures.host_ms_per_step} ms of host time per step (${dispatches} dispatches), ${figures.step_ms} ms per step in all: at most ${figures.host_bound_tokens_per_s} tokens/s
`,
    );
    sampler.destroy();
    release();
    return;
  }
  const copy = await copyBandwidth(ctx);
  const weightBytes = decodeWeightBytes(model);
  const achieved = weightBytes * decodeRate;
  const result = {
    ...stepFigures,
    prefill_tokens_per_s: round(promptTokens / (prefillMs / 1000)),
    decode_tokens_per_s: round(decodeRate),
    readback_ms: round(session.readbackMs, 3),
    decode_weight_bytes: weightBytes,
    weight_gb_per_s: round(achieved / 1e9),
    copy_gb_per_s: round(copy / 1e9),
    bandwidth_fraction: round(achieved / copy, 3),
    ...expertFigures(session),
  };
  const fullLayers = synthetic ? syntheticLayers(synthetic) : undefined;
  const pipeline =
    fullLayers !== undefined && model.config.numLayers < fullLayers
      ? await pipelineFigures(ctx, host, model, session, { fullLayers, decodeRate, prefillMs, promptTokens })
      : undefined;
  const verifyCost = args.flags.has('verify-cost')
    ? await measureVerifyCost(ctx, model, prompt, { ks: [1, 2, 3], decodeTokens, decodeRate, draftVocab })
    : undefined;
  host.stdout(
    args.flags.has('json')
      ? `${JSON.stringify({ ...result, ...(pipeline && { pipeline }), ...(verifyCost && { verify_cost: verifyCost }) })}\n`
      : `${result.model} (${result.layers} layers, ${model.dtype}) on ${result.adapter} [${result.backend}]
  prefill  ${result.prefill_tokens_per_s} tokens/s (${promptTokens} tokens)
  decode   ${result.decode_tokens_per_s} tokens/s (${decodeTokens} tokens; ${dispatches} dispatches and ${result.host_ms_per_step} ms of host time per step; up to ${steps.deepest} steps in flight, readback ${result.readback_ms} ms)
  weights  ${(weightBytes / 1e9).toFixed(3)} GB per decode step → ${result.weight_gb_per_s} GB/s = ${(result.bandwidth_fraction * 100).toFixed(1)}% of copy bandwidth (${result.copy_gb_per_s} GB/s)
${expertLine(session)}${pipeline ? describePipeline(pipeline) : ''}${verifyCost ? describeVerifyCost(verifyCost) : ''}`,
  );
  sampler.destroy();
  release();
}

interface PipelineFigures {
  measured_layers: number;
  full_layers: number;
  layer_decode_ms: number;
  layer_prefill_ms_per_token: number;
  lm_head_ms: number;
  hops: HopCost[];
  projection: ReturnType<typeof projectDecode>[];
}

/**
 * A model measured on some of its layers (--synthetic V --layers K): the per-layer share of a decode step (the LM
 * head timed on its own and taken out) and of prefill, one hop between pipeline stages for one row and for a prompt
 * chunk, and the whole model's decode speed projected over 1, 2, 4 and 8 stages.
 */
async function pipelineFigures(
  ctx: GpuContext,
  host: CliHost,
  model: Model,
  session: Session,
  o: { fullLayers: number; decodeRate: number; prefillMs: number; promptTokens: number },
): Promise<PipelineFigures> {
  const K = model.config.numLayers;
  const headMs = await measureHeadMs(ctx, model, session);
  const layerMs = Math.max(0, 1000 / o.decodeRate - headMs) / K;
  const hops = await measureHops(ctx, host, model.config.hiddenSize, [1, o.promptTokens]);
  const projection = [1, 2, 4, 8].map((stages) => projectDecode({ layers: o.fullLayers, layerMs, headMs, hopMs: hops[0].total_ms, stages }));
  return {
    measured_layers: K,
    full_layers: o.fullLayers,
    layer_decode_ms: round(layerMs, 3),
    layer_prefill_ms_per_token: round(o.prefillMs / o.promptTokens / K, 3),
    lm_head_ms: round(headMs, 3),
    hops,
    projection: projection.map((p) => ({
      ...p,
      token_ms: round(p.token_ms, 3),
      tokens_per_s: round(p.tokens_per_s),
      aggregate_tokens_per_s: round(p.aggregate_tokens_per_s),
    })),
  };
}

function describePipeline(p: PipelineFigures): string {
  const kinds = p.measured_layers < 4 ? ' (fewer than 4 layers: DeltaNet layers only, no attention layer)' : '';
  const hops = p.hops.map((h) => `${h.rows} rows ${h.total_ms} ms (readback ${h.readback_ms}, frame ${h.frame_ms}, write ${h.write_ms})`).join('; ');
  const rows = p.projection.map(
    (s) =>
      `    ${String(s.stages).padStart(2)} stages  ${String(s.tokens_per_s).padStart(8)} tokens/s per sequence  (${s.hops} hops, ${s.token_ms} ms per token; up to ${s.aggregate_tokens_per_s} tokens/s with ${s.stages} in flight)`,
  );
  return `  per layer  decode ${p.layer_decode_ms} ms, prefill ${p.layer_prefill_ms_per_token} ms per token; LM head ${p.lm_head_ms} ms (measured on ${p.measured_layers} of ${p.full_layers} layers${kinds})
  hop        ${hops}
  projected for all ${p.full_layers} layers at batch 1 (a token visits the stages one after another; every frame passes through stage 0):
${rows.join('\n')}
`;
}

/** --streams 1,4,16: concurrent stream counts, each a positive integer. */
function streamCounts(args: Args): number[] | undefined {
  const text = stringFlag(args, 'streams');
  if (text === undefined) return undefined;
  const counts = text.split(',').map((s) => Number(s.trim()));
  if (counts.length === 0 || counts.some((n) => !Number.isInteger(n) || n < 1 || n > 256))
    throw new UsageError(`--streams must be comma-separated stream counts from 1 to 256, got "${text}"`);
  return counts;
}

/** Aggregate decode tokens/s of concurrent streams (continuous batching), with the speedup over one stream. */
async function printStreams(host: CliHost, args: Args, ctx: GpuContext, model: Model, o: { counts: number[]; promptTokens: number; decodeTokens: number }) {
  const { single_tokens_per_s: single, figures } = await benchStreams(ctx, model, o);
  const head = { model: model.location, layers: model.config.numLayers, adapter: ctx.adapter.name, backend: ctx.adapter.backend, ...o };
  if (args.flags.has('json')) {
    host.stdout(`${JSON.stringify({ ...head, single_tokens_per_s: single, streams: figures })}\n`);
    return;
  }
  host.stdout(`${head.model} (${head.layers} layers) on ${head.adapter} [${head.backend}]: decode with concurrent streams (${o.decodeTokens} tokens each)\n`);
  host.stdout(`  one stream alone (matvec): ${single} tokens/s\n`);
  for (const f of figures) {
    host.stdout(
      `  ${String(f.streams).padStart(3)} streams  ${String(f.decode_tokens_per_s).padStart(9)} tokens/s  (${f.per_stream_tokens_per_s} per stream, ${f.speedup}x one stream; ${f.projections})\n`,
    );
    if (f.staggered) {
      host.stdout(
        `               staggered: ${f.staggered.tokens_per_s} tokens/s with prompts, ${f.staggered.rows_per_step} rows per step (each its own token loop, starting a step after the one before)\n`,
      );
    }
  }
}

/** Expert streaming figures of the timed run (none when every expert is resident). */
function expertFigures(session: Session) {
  const s = session.expertStats();
  return s ? { expert_cache_hit_rate: round(s.hitRate, 3), expert_bytes_streamed: s.bytesStreamed, expert_stall_ms_per_token: round(s.stallMsPerToken) } : {};
}

function expertLine(session: Session): string {
  const s = session.expertStats();
  return s
    ? `  experts  ${(s.hitRate * 100).toFixed(1)}% cache hits, ${(s.bytesStreamed / 1e6).toFixed(1)} MB streamed, ${round(s.stallMsPerToken)} ms stall per token (timed run)\n`
    : '';
}

const round = (x: number, digits = 2) => roundTo(x, digits);
