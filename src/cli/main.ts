import { open } from 'node:fs/promises';
import type { GpuContext } from '../gpu/context.ts';
import type { CapsMask } from '../gpu/caps.ts';
import { QwenError } from '../gpu/errors.ts';
import type { WeightDtype } from '../gpu/tensor.ts';
import { type Model, loadModel } from '../model/load.ts';
import { FileSource } from '../storage/file.ts';
import { HttpSource, isUrl } from '../storage/http.ts';
import { Session } from '../runtime/session.ts';
import { generateGreedy } from '../runtime/generate.ts';
import { scoreIds } from '../runtime/score.ts';
import { type Args, UsageError, choiceFlag, idsFlag, intFlag, parseArgs, stringFlag } from './args.ts';
import { progressBar } from './progress.ts';
import { runBench } from './bench.ts';

/** What a host (Node with Dawn, Deno) gives the CLI: a GPU and a terminal. */
export interface CliHost {
  createContext(options: { adapter?: string; mask?: CapsMask }): Promise<GpuContext>;
  stdout(text: string): void;
  stderr(text: string): void;
  isTTY: boolean;
}

const SWITCHES = new Set(['greedy', 'json', 'no-f16', 'no-mtp', 'ignore-eos', 'help']);

export const USAGE = `qwen-webgpu: Qwen3.5 on WebGPU

  qwen-webgpu score    --model <dir|url> --ids <id,id,...> --out <file> [--dtype f32|f16]
      writes float32 little-endian [n, vocab_size]: row t = log_softmax of the logits after ids[0..t]
  qwen-webgpu generate --model <dir|url> --prompt-ids <id,id,...> --max-tokens N --greedy [--dtype f32|f16] [--json]
      greedy generation; stops at max tokens or an eos id (--ignore-eos to go on)
  qwen-webgpu bench    (--model <dir> | --synthetic qwen3.5-0.8b|qwen3.5-9b|qwen3.5-35b-a3b [--layers N])
                       [--prompt-tokens N] [--decode-tokens N] [--dtype f32|f16]
      prefill and decode tokens/s, and weight bandwidth against the adapter's own copy bandwidth
  qwen-webgpu adapter  prints the adapter the engine would use

common: --adapter <name>   pick an adapter by name (Node/Dawn: e.g. llvmpipe, SwiftShader, NVIDIA)
        --no-f16           do not use shader-f16 even where the adapter has it
        --context N        context length (default: what the command needs)
        --no-mtp           do not load the multi-token-prediction block
`;

export async function runCli(argv: string[], host: CliHost): Promise<number> {
  let ctx: GpuContext | undefined;
  try {
    const args = parseArgs(argv, SWITCHES);
    if (args.command === 'help' || args.flags.has('help')) {
      host.stdout(USAGE);
      return 0;
    }
    const commands: Record<string, (a: Args, c: GpuContext) => Promise<void>> = {
      score: (a, c) => score(a, c, host),
      generate: (a, c) => generate(a, c, host),
      bench: (a, c) => runBench(a, c, host, (m, d) => load(m, d, a, c, host)),
      adapter: async (_a, c) => host.stdout(`${JSON.stringify(c.adapter)}\n`),
    };
    const command = commands[args.command];
    if (!command) throw new UsageError(`unknown command "${args.command}"`);
    ctx = await host.createContext({ adapter: stringFlag(args, 'adapter'), mask: args.flags.has('no-f16') ? { f16: false } : undefined });
    await command(args, ctx);
    return 0;
  } catch (error) {
    if (error instanceof UsageError) {
      host.stderr(`error: ${error.message}\n\n${USAGE}`);
      return 2;
    }
    host.stderr(`error: ${error instanceof QwenError ? error.message : (error as Error).stack ?? String(error)}\n`);
    return 1;
  } finally {
    ctx?.destroy();
  }
}

function dtypeOf(args: Args, ctx: GpuContext): WeightDtype {
  return choiceFlag(args, 'dtype', ['f32', 'f16'] as const) ?? (ctx.caps.f16 ? 'f16' : 'f32');
}

async function load(model: string, dtype: WeightDtype, args: Args, ctx: GpuContext, host: CliHost): Promise<Model> {
  const source = isUrl(model) ? new HttpSource(model) : new FileSource(model);
  const bar = progressBar(host.stderr, host.isTTY, 'loading');
  const loaded = await loadModel(ctx, source, { dtype, mtp: !args.flags.has('no-mtp'), onProgress: (p) => bar.update(p.loadedBytes, p.totalBytes, p.tensor) });
  bar.done();
  if (loaded.unusedTensors.length > 0) {
    host.stderr(`warning: ${loaded.unusedTensors.length} checkpoint tensors are not used: ${loaded.unusedTensors.slice(0, 5).join(', ')}${loaded.unusedTensors.length > 5 ? ', ...' : ''}\n`);
  }
  return loaded;
}

const adapterJson = (ctx: GpuContext) => ({ name: ctx.adapter.name, backend: ctx.adapter.backend, features: ctx.adapter.features, f16: ctx.caps.f16 });

function contextFor(args: Args, needed: number): number {
  return intFlag(args, 'context', needed);
}

async function score(args: Args, ctx: GpuContext, host: CliHost): Promise<void> {
  const ids = idsFlag(args, 'ids');
  const outPath = stringFlag(args, 'out', true);
  const dtype = dtypeOf(args, ctx);
  const t0 = performance.now();
  const model = await load(stringFlag(args, 'model', true), dtype, args, ctx, host);
  const session = Session.create(ctx, model, { contextLength: contextFor(args, ids.length) });
  const t1 = performance.now();
  const file = await open(outPath, 'w');
  try {
    await scoreIds(session, ids, async (rows) => {
      await file.write(new Uint8Array(rows.buffer, rows.byteOffset, rows.byteLength));
    });
  } finally {
    await file.close();
  }
  const t2 = performance.now();
  host.stdout(
    `${JSON.stringify({
      command: 'score', tokens: ids.length, vocab_size: model.config.vocabSize, out: outPath, dtype,
      load_ms: round(t1 - t0), score_ms: round(t2 - t1), tokens_per_s: round((ids.length * 1000) / (t2 - t1)), adapter: adapterJson(ctx),
    })}\n`,
  );
  session.destroy();
  model.destroy();
}

async function generate(args: Args, ctx: GpuContext, host: CliHost): Promise<void> {
  const prompt = idsFlag(args, 'prompt-ids');
  const maxTokens = intFlag(args, 'max-tokens', 32);
  if (!args.flags.has('greedy')) throw new UsageError('generate takes --greedy (sampling comes with the text API)');
  const dtype = dtypeOf(args, ctx);
  const model = await load(stringFlag(args, 'model', true), dtype, args, ctx, host);
  const session = Session.create(ctx, model, { contextLength: contextFor(args, prompt.length + maxTokens) });
  const stopIds = args.flags.has('ignore-eos') ? [] : model.eosTokenIds;
  const result = await generateGreedy(session, prompt, { maxTokens, stopIds });
  const decoded = result.ids.length - 1;
  if (args.flags.has('json')) {
    host.stdout(
      `${JSON.stringify({
        ids: result.ids, prompt_tokens: result.promptTokens, stop_reason: result.stopped, dtype,
        prefill_tokens_per_s: round((result.promptTokens * 1000) / result.prefillMs),
        decode_tokens_per_s: decoded > 0 ? round((decoded * 1000) / result.decodeMs) : null,
        adapter: adapterJson(ctx),
      })}\n`,
    );
  } else {
    host.stdout(`${result.ids.join(',')}\n`);
  }
  session.destroy();
  model.destroy();
}

const round = (x: number) => Math.round(x * 100) / 100;
