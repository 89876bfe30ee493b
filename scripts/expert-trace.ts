/**
 * Expert-cache trace benchmark: records which experts each MoE layer chooses while a model prefills a
 * prompt and decodes greedily (per layer and forward call: the distinct experts and how many tokens chose
 * each), then replays the trace through LRU and the engine's policy (routing-weighted LRFU) at several
 * cache sizes, and prints hit rates. Prints figures; asserts nothing.
 *
 *   node --import tsx scripts/expert-trace.ts [--model PACKED_DIR] [--prompt-tokens N] [--decode-tokens N] [--adapter NAME]
 *
 * Without --model it converts the MoE test fixture (../shared/fixtures/tiny-qwen35-moe) to a packed model.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { createNodeContext } from '../src/hosts/node/gpu.ts';
import { convertModel } from '../src/model/convert.ts';
import { loadModel } from '../src/model/load.ts';
import { Session } from '../src/runtime/session.ts';
import { GpuSampler } from '../src/runtime/sampler.ts';
import { generateIds } from '../src/runtime/generation.ts';
import { LrfuPolicy, LruPolicy, type TraceStep, replayTrace } from '../src/runtime/expert_policy.ts';
import { FolderSink } from '../src/storage/file_sink.ts';
import { openModel } from '../src/storage/locate.ts';

const { values } = parseArgs({
  options: {
    model: { type: 'string' },
    'prompt-tokens': { type: 'string', default: '96' },
    'decode-tokens': { type: 'string', default: '160' },
    adapter: { type: 'string' },
  },
});
const ctx = await createNodeContext(values.adapter ? { adapter: values.adapter } : {});
let dir = values.model;
let temp: string | undefined;
if (!dir) {
  temp = dir = mkdtempSync(join(tmpdir(), 'qwen-trace-'));
  await convertModel(ctx, await openModel(new URL('../../shared/fixtures/tiny-qwen35-moe', import.meta.url).pathname), {
    dtype: 'f32',
    sink: new FolderSink(dir),
  });
}
try {
  const checkpoint = await openModel(dir);
  if (!checkpoint.packed) throw new Error(`${dir} is not a packed model (convert it first)`);
  const key = (t: string) => checkpoint.packed!.tensors.get(`layers.0.mlp.experts_${t}`);
  if (!key('gate_up')) throw new Error(`${dir} is not a MoE model`);
  const expertBytes = key('gate_up')!.itemBytes + key('down')!.itemBytes;
  const raw = (checkpoint.packed.config.text_config ?? checkpoint.packed.config) as Record<string, number>;
  const E = raw.num_experts;
  const topk = raw.num_experts_per_tok;
  const L = raw.num_hidden_layers;
  // Record at the smallest cache: the trace (routing) is the same whatever the budget, since results are exact.
  const model = await loadModel(ctx, checkpoint, { dtype: checkpoint.packed.dtype, expertCacheBytes: topk * L * expertBytes });
  const promptTokens = Number(values['prompt-tokens']);
  const decodeTokens = Number(values['decode-tokens']);
  const session = Session.create(ctx, model, { contextLength: promptTokens + decodeTokens + 1 });
  const cache = session.expertCache!;
  const trace: TraceStep[] = [];
  cache.trace = trace;
  const sampler = GpuSampler.create(ctx, { vocabSize: model.config.vocabSize, tokenizerSize: model.tokenizerSize });
  let seed = 12345;
  const prompt = Array.from({ length: promptTokens }, () => (seed = (seed * 1103515245 + 12345) >>> 0) % model.tokenizerSize);
  const t0 = performance.now();
  await generateIds(session, sampler, { promptIds: prompt, maxTokens: decodeTokens, sampling: { temperature: 0 } });
  const s = session.expertStats()!;
  console.log(
    `${dir}: ${L} layers, ${E} experts, top-${topk}, ${expertBytes} bytes per expert; ${promptTokens} prompt + ${decodeTokens} decoded tokens in ${Math.round(performance.now() - t0)} ms`,
  );
  console.log(
    `live run at ${topk} slots (lrfu + router prefetch): hit rate ${(s.hitRate * 100).toFixed(1)}%, ${(s.bytesStreamed / 1e6).toFixed(2)} MB streamed, ` +
      `stall ${s.stallMsPerToken.toFixed(3)} ms/token, readback ${(s.readbackMs / Math.max(1, s.tokens)).toFixed(3)} ms/token, prefetched ${s.prefetched} (used ${s.prefetchUsed})`,
  );
  const decodeOnly = trace.filter((step) => step.experts.length <= topk);
  const sizes = [...new Set([topk, Math.ceil(1.5 * topk), 2 * topk, Math.floor(E / 2), Math.floor((3 * E) / 4)])]
    .filter((n) => n >= topk && n < E)
    .sort((a, b) => a - b);
  const policies = [
    { name: 'lru', make: (n: number) => new LruPolicy(n) },
    ...[0, 0.02, 0.05, 0.2, 1].map((lambda) => ({ name: `lrfu λ=${lambda}`, make: (n: number) => new LrfuPolicy(n, lambda) })),
  ];
  for (const [what, steps] of [
    ['whole trace (prefill chunks + decode)', trace],
    ['decode steps only', decodeOnly],
  ] as const) {
    console.log(`\nhit rate, ${what}: ${steps.length} layer steps`);
    console.log(`${'slots/layer'.padEnd(14)}${policies.map((p) => p.name.padStart(14)).join('')}`);
    for (const slots of sizes) {
      const row = policies.map((p) => `${(replayTrace(steps, L, E, slots, p.make).hitRate * 100).toFixed(1)}%`.padStart(14));
      console.log(`${String(slots).padEnd(14)}${row.join('')}`);
    }
  }
  sampler.destroy();
  session.destroy();
  model.destroy();
} finally {
  if (temp) rmSync(temp, { recursive: true, force: true });
  ctx.destroy();
}
