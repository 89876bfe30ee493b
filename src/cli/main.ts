import { access, constants, open, readFile, stat } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { Engine, type EngineOptions } from '../api/engine.ts';
import { collectChat } from '../api/chat.ts';
import type { ChatCompletionChunk, Reasoning } from '../api/types.ts';
import type { GpuContext } from '../gpu/context.ts';
import { QwenError, RequestError } from '../errors.ts';
import type { WeightDtype } from '../gpu/tensor.ts';
import type { Model } from '../model/model.ts';
import { openModel } from '../storage/locate.ts';
import type { Checkpoint } from '../formats/checkpoint.ts';
import type { HttpOptions } from '../storage/http.ts';
import type { HubOptions } from '../storage/hf_model.ts';
import { readGenerationConfig } from '../runtime/generation_config.ts';
import type { ExpertStats } from '../runtime/expert_cache.ts';
import { convertModel } from '../model/convert.ts';
import { exportHf } from '../model/export_hf.ts';
import { fileBitsPerWeight } from '../model/load.ts';
import { FolderSink } from '../storage/file_sink.ts';
import { Tokenizer } from '../text/tokenizer.ts';
import type { ChatMessage } from '../text/chat_template.ts';
import { renderChat } from '../text/chat_template.ts';
import { type Args, UsageError, choiceFlag, dtypeFlag, idsFlag, intFlag, numberFlag, parseArgs, positiveFlag, stringFlag } from './args.ts';
import { progressBar } from './progress.ts';
import { SAMPLING_FLAGS, samplingFromFlags } from './sampling_flags.ts';
import { runBench } from './bench.ts';
import { runBatch } from './batch.ts';
import type { CliHost } from './host.ts';
import { SERVE_FLAGS, runServe } from './serve.ts';
import { PIPELINE_FLAGS, STAGE_FLAGS, loadPipelineEngine, runStage } from './stages.ts';
import { DEFAULT_DRAFT_TOKENS, DEFAULT_DRAFT_VOCAB, MAX_DRAFT_TOKENS } from '../runtime/speculation.ts';
import { hubOptions, listModels, modelAsFlag, pull, removeModel } from './hub.ts';
import { convertedOnce } from './packed_cache.ts';
import { VERSION } from './version.ts';

/** What a host (Node with Dawn, Deno) gives the CLI: a GPU and a terminal. */

const SWITCHES = new Set([
  'greedy',
  'json',
  'verify-cost',
  'stream',
  'no-f16',
  'no-subgroups',
  'no-mtp',
  'no-think',
  'ignore-eos',
  'verify',
  'help',
  'debug',
  'host-only',
]);

export const USAGE = `qwen-webgpu: Qwen3.5 on WebGPU

  qwen-webgpu generate --model <dir|url|hub id> (--prompt TEXT | --messages FILE.json | --prompt-ids ID,ID,...)
                       [--max-tokens N] [--greedy | --temperature T --top-p P --top-k K --min-p M]
                       [--presence-penalty X] [--frequency-penalty X] [--repetition-penalty X] [--seed S]
                       [--no-think | --reasoning-budget N] [--stop TEXT] [--stream] [--json] [--no-mtp | --draft-tokens K --draft-vocab N]
      generates from a chat (--prompt is one user message) or from raw token ids, streaming text to stdout;
      --json prints the OpenAI-shaped response with prompt_ids and ids (with --stream: each chunk, then it);
      without sampling flags the model's generation_config.json settings apply; --json adds the speculative
      decoding figures (mtp_acceptance_rate, mtp_tokens_per_pass) when it ran
  qwen-webgpu tokenize --model <dir|url|hub id> (--text TEXT | --messages FILE.json [--no-think]) [--json]
      token ids of a text, or of the rendered chat prompt with the generation prompt added
      (--json: {"ids": [...], "text": the text that was tokenized})
  qwen-webgpu score    --model <dir|url|hub id> --ids ID,ID,... --out FILE
      writes float32 little-endian [n, vocab_size]: row t = log_softmax of the logits after ids[0..t]
  qwen-webgpu convert  --model <hf dir|url|file.gguf> --dtype int4|f16|f32 --out DIR [--shard-mb N] [--no-mtp]
      writes the engine's packed model (manifest with sha256 + shards); --model DIR then loads it; --no-mtp
      leaves out the multi-token-prediction block (no speculative decoding with that model then)
  qwen-webgpu export   --model <packed dir|url> --out DIR
      writes a packed model back as a Hugging Face checkpoint with the dequantised weights in f32
  qwen-webgpu bench    (--model <dir> | --synthetic qwen3.5-0.8b|qwen3.5-9b|qwen3.5-35b-a3b|qwen3.5-397b-a17b [--layers N])
                       [--prompt-tokens N] [--decode-tokens N] [--streams N,N,...] [--verify-cost [--draft-vocab N]] [--host-only]
      prefill and decode tokens/s, dispatches and host ms per decode step, and weight bandwidth against the
      adapter's own copy bandwidth (--json: one line of figures); --streams 1,4,16: aggregate decode tokens/s of
      that many concurrent streams decoding together (continuous batching), the speedup over one stream, and the
      same streams staggered as a server runs them (tokens/s and rows per decode step); a synthetic model with
      --layers below its own count adds per-layer figures, the cost of one hop between pipeline stages and the
      whole model's decode speed projected over 1, 2, 4 and 8 stages; --verify-cost adds
      what a verification pass of k + 1 tokens costs in decode steps (speculative decoding) and the speedup projected
      (--draft-vocab: drafts from ids below N, as generate takes it); --host-only runs on Dawn's null backend (Node),
      which computes nothing: the host's time per decode step and the tokens/s it alone would allow (its 512 MiB
      of memory hold the 0.8B shapes)
  qwen-webgpu batch    --model <dir|url|hub id> --in REQUESTS.jsonl --out RESULTS.jsonl [--max-batch N]
      runs an OpenAI Batch API file (lines of {"custom_id", "method": "POST", "url": "/v1/chat/completions" or
      "/v1/completions", "body"}), up to --max-batch requests decoding together (default 4), appending each result line
      as it is done; a rerun skips the custom_ids already in --out (resuming a killed run); SIGINT/SIGTERM end it
      once the requests in flight are written, a second signal aborts them
  qwen-webgpu serve    --model <dir|url|hub id> [--port 8080] [--host 127.0.0.1] [--api-key KEY] [--max-batch N] [--max-queue N]
                       [--cors ORIGIN,...] [--max-body-kb N] [--served-model-name NAME] [--context N]
      an OpenAI-compatible HTTP server: POST /v1/chat/completions and /v1/completions (stream: true sends server-sent
      events), GET /v1/models, /health and /metrics (Prometheus); --api-key (or env QWEN_API_KEY) requires
      "Authorization: Bearer KEY" on /v1/; up to --max-batch requests decode together (continuous batching, default
      4; each holds a KV cache of --context tokens); past them and --max-queue waiting (default 16) requests, 429;
      --port 0 picks a free port; prints "listening on http://HOST:PORT"; SIGINT/SIGTERM finish the running requests
      (up to 30 s) and exit 0
      --stages N [--stage-listen HOST:PORT] [--gpu-memory-gb G] [--stage-timeout-s S]: the model split into N pipeline
      stages, one process (and GPU) each: this one holds the embedding and the first layers and starts the others
      on this host, or with --stage-listen waits for them to connect (qwen-webgpu stage); the layer split follows
      each stage's --gpu-memory-gb (default equal) and is printed; a stage that fails or does not answer within
      --stage-timeout-s (default 120) fails the requests in flight and the server answers 503 until it is back
  qwen-webgpu stage    --model <dir|url|hub id> --stage I --stages N --peer HOST:PORT [--layers FIRST:END]
                       [--gpu-memory-gb G] [--dtype ...] [--adapter NAME]
      pipeline stage I of N (1..N-1), connecting to stage 0 (serve --stages N --stage-listen HOST:PORT); under
      Kubernetes' LeaderWorkerSet --stage, --stages and --peer default to LWS_WORKER_INDEX, LWS_GROUP_SIZE and
      LWS_LEADER_ADDRESS:QWEN_STAGE_PORT (default 9400); --layers refuses any other range than stage 0 assigns
  qwen-webgpu pull     ORG/NAME[@REVISION][:QUANT] [--json]
      downloads a Hugging Face hub model into the cache (see --model) with progress, prints its snapshot path
  qwen-webgpu models   [--json]   lists the cached hub models: id, revisions, size
  qwen-webgpu rm       ORG/NAME   removes a hub model from the cache (the exact id, as models lists it)
  qwen-webgpu adapter  prints the adapter the engine would use
  qwen-webgpu help     this text (also --help, -h, and --help or -h after a command)
  qwen-webgpu version  the engine's version (also --version, -V)

common: --model            a local folder or .gguf, a URL, or a Hugging Face hub id: ORG/NAME, ORG/NAME@REVISION
                           (branch, tag, commit), ORG/NAME:QUANT (the repo's GGUF whose name holds QUANT) or
                           ORG/NAME/FILE.gguf; hub models are downloaded once into the hub cache ($HF_HUB_CACHE, else
                           $HF_HOME/hub, else ~/.cache/huggingface/hub); env HF_ENDPOINT, HF_TOKEN (gated repos),
                           HF_HUB_OFFLINE=1 (the cache only); a local path of the same spelling wins
        --dtype f32|f16|int4  how weights are held on the GPU (default f16 with shader-f16, else f32; int4 quantises
                           every matrix while loading, groups of 32 with f16 scales; a packed model keeps its own; a
                           GGUF of fewer than 6 bits per weight, Q2_K to Q5_K_M, IQ4 or MXFP4, loads as int4)
        --activations f32|f16  how activations, KV cache and conv state are held (default f32; f16 needs
                           shader-f16; the residual stream, recurrent state and routed experts stay f32)
        --adapter <name>   pick an adapter by name (Node/Dawn: e.g. llvmpipe, SwiftShader, NVIDIA)
        --no-f16           do not use shader-f16 even where the adapter has it
        --no-subgroups     do not use subgroup operations even where the adapter has them
        --context N        context length (default: what the command needs, at least 4096 for chats)
        --verify           check a packed model's sha256 sums before loading it
        --expert-cache-mb N  MoE: keep at most N MiB of experts on the GPU (fractions allowed) and stream the others
                           from a packed model as routing asks for them (generate, score, bench, serve, batch;
                           default: all resident)
        --no-mtp, --draft-tokens K  (generate, serve, batch) speculative decoding: the model's multi-token-prediction
                           block drafts K tokens (1-3, default ${DEFAULT_DRAFT_TOKENS}), one forward pass verifies them, and the output is exactly
                           that of decoding token by token; on by default on GPU adapters when the model has the
                           block: for a request that runs alone (--max-batch 1, or one that finds no other running,
                           beside a batch of up to 4, until others decode there and it moves into the batch) and in
                           pipeline stages (serve --stages); --draft-tokens turns it on anywhere (CPU adapters, and
                           with --expert-cache-mb, where the block's experts stay on the GPU beside the cache),
                           --no-mtp off
        --draft-vocab N    drafts come from token ids below N (default ${DEFAULT_DRAFT_VOCAB}, the most frequent; 0: every id):
                           the drafter's LM head reads only those rows; fewer accepted drafts, never other output
        --http-timeout S   a model URL's requests fail after S seconds without data (default 30; dropped reads are
                           retried 3 times, resuming where they stopped)
        --debug            print the stack trace of an error (otherwise one line)
  each command takes only its own flags: an unknown or misspelt flag is an error
`;

interface Command {
  gpu: boolean;
  /** Every flag the command reads (besides --help and --debug): any other is refused. */
  flags: readonly string[];
  run(args: Args, ctx: GpuContext | undefined, host: CliHost): Promise<void>;
}

const GPU_FLAGS = ['adapter', 'no-f16', 'no-subgroups', 'activations'];
/** Speculative decoding with the model's MTP block (generate, serve, batch). */
const SPECULATION_FLAGS = ['no-mtp', 'draft-tokens', 'draft-vocab'];
const LOAD_FLAGS = ['model', 'dtype', 'verify', 'expert-cache-mb', 'http-timeout'];
/** generate's flags that only a chat (--prompt, --messages) reads, and those only --prompt-ids reads. */
const CHAT_FLAGS = ['prompt', 'messages', 'no-think', 'reasoning-budget', 'stop', 'stream'];
const IDS_FLAGS = ['prompt-ids', 'ignore-eos'];

const COMMANDS: Record<string, Command> = {
  score: { gpu: true, flags: [...GPU_FLAGS, ...LOAD_FLAGS, 'ids', 'out', 'context'], run: (a, c, h) => score(a, c!, h) },
  generate: {
    gpu: true,
    flags: [
      ...GPU_FLAGS,
      ...LOAD_FLAGS,
      ...SPECULATION_FLAGS,
      ...CHAT_FLAGS,
      ...IDS_FLAGS,
      'max-tokens',
      'greedy',
      ...SAMPLING_FLAGS,
      'seed',
      'json',
      'context',
    ],
    run: (a, c, h) => (a.flags.has('prompt-ids') ? generateFromIds(a, c!, h) : generateChat(a, c!, h)),
  },
  tokenize: { gpu: false, flags: ['model', 'text', 'messages', 'no-think', 'json', 'http-timeout'], run: (a, _c, h) => tokenize(a, h) },
  convert: { gpu: true, flags: [...GPU_FLAGS, 'model', 'dtype', 'out', 'shard-mb', 'no-mtp', 'http-timeout'], run: (a, c, h) => convert(a, c!, h) },
  export: { gpu: false, flags: ['model', 'out', 'http-timeout'], run: (a, _c, h) => exportPacked(a, h) },
  bench: {
    gpu: true,
    flags: [...GPU_FLAGS, ...LOAD_FLAGS, 'synthetic', 'layers', 'prompt-tokens', 'decode-tokens', 'streams', 'verify-cost', 'draft-vocab', 'host-only', 'json'],
    // --verify-cost drafts with the model's MTP block, which a default load leaves out on CPU adapters.
    run: (a, c, h) =>
      runBench(a, c!, h, async (m, d, n) =>
        loadEngine(await openModel(m, httpOptions(a, h)), d, a, c!, h, n, undefined, a.flags.has('verify-cost') ? { mtp: true } : undefined),
      ),
  },
  batch: {
    gpu: true,
    flags: [...GPU_FLAGS, ...LOAD_FLAGS, ...SPECULATION_FLAGS, 'in', 'out', 'max-batch', 'context'],
    run: (a, c, h) => runBatch(a, h, async (maxBatch, context) => loadEngine(await openModelFlag(a, h), dtypeOf(a, c!), a, c!, h, context, maxBatch)),
  },
  serve: {
    gpu: true,
    flags: [...GPU_FLAGS, ...LOAD_FLAGS, ...SPECULATION_FLAGS, ...SERVE_FLAGS, ...PIPELINE_FLAGS],
    run: (a, c, h) =>
      runServe(a, h, async (contextLength, maxBatch) => {
        const checkpoint = await openModelFlag(a, h);
        if (intFlag(a, 'stages', 1) === 1) return { engine: await loadEngine(checkpoint, dtypeOf(a, c!), a, c!, h, contextLength, maxBatch) };
        return loadPipelineEngine(a, h, c!, checkpoint, dtypeOf(a, c!), { contextLength, maxBatch, speculation: speculationOptions(a) }, (stage) =>
          loadEngine(checkpoint, dtypeOf(a, c!), a, c!, h, contextLength, maxBatch, stage),
        );
      }),
  },
  stage: {
    gpu: true,
    flags: [...GPU_FLAGS, 'model', 'dtype', 'verify', 'http-timeout', ...STAGE_FLAGS],
    run: (a, c, h) => runStage(a, c!, h, () => openModelFlag(a, h), dtypeOf(a, c!)),
  },
  pull: { gpu: false, flags: ['model', 'json', 'http-timeout'], run: (a, _c, h) => pull(a, h, httpOptions(a, h).http.timeoutMs) },
  models: { gpu: false, flags: ['json'], run: (a, _c, h) => listModels(a, h) },
  rm: { gpu: false, flags: ['model'], run: (a, _c, h) => removeModel(a, h) },
  adapter: { gpu: true, flags: GPU_FLAGS, run: async (_a, c, h) => h.stdout(`${JSON.stringify(c!.adapter)}\n`) },
};

/** Refuses a flag the command does not read, naming it (and the flag it most likely meant). */
function checkFlags(command: string, args: Args): void {
  const known = new Set([...COMMANDS[command].flags, 'help', 'debug']);
  for (const name of args.flags.keys()) {
    if (known.has(name)) continue;
    const near = [...known].map((k) => [k, editDistance(name, k)] as const).sort((a, b) => a[1] - b[1])[0];
    const hint = near && near[1] <= Math.max(2, Math.floor(name.length / 3)) ? ` (did you mean --${near[0]}?)` : '';
    throw new UsageError(`unknown flag --${name} for ${command}${hint}`);
  }
}

function editDistance(a: string, b: string): number {
  let row = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const next = [i];
    for (let j = 1; j <= b.length; j++) next[j] = Math.min(row[j] + 1, next[j - 1] + 1, row[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
    row = next;
  }
  return row[b.length];
}

export async function runCli(argv: string[], host: CliHost): Promise<number> {
  let ctx: GpuContext | undefined;
  const debug = argv.includes('--debug');
  try {
    const args = parseArgs(modelAsFlag(argv), SWITCHES);
    if (args.command === 'help' || args.flags.has('help')) {
      host.stdout(USAGE);
      return 0;
    }
    if (args.command === 'version') {
      host.stdout(`qwen-webgpu ${VERSION}\n`);
      return 0;
    }
    const command = COMMANDS[args.command];
    if (!command) throw new UsageError(`unknown command "${args.command}" (${Object.keys(COMMANDS).join(', ')})`);
    checkFlags(args.command, args);
    if (command.gpu) {
      ctx = await host.createContext({
        adapter: stringFlag(args, 'adapter'),
        mask: { ...(args.flags.has('no-f16') ? { f16: false } : {}), ...(args.flags.has('no-subgroups') ? { subgroups: false } : {}) },
        activations: choiceFlag(args, 'activations', ['f32', 'f16'] as const),
        hostOnly: args.flags.has('host-only'),
      });
    }
    await command.run(args, ctx, host);
    return 0;
  } catch (error) {
    // One line naming what is wrong; the stack trace only with --debug.
    const stack = debug && error instanceof Error && error.stack ? `\n${error.stack}` : '';
    if (error instanceof UsageError) {
      host.stderr(`error: ${error.message} ("qwen-webgpu help" shows the usage)${stack}\n`);
      return 2;
    }
    const message =
      error instanceof QwenError
        ? error.message
        : error instanceof Error
          ? `${error.name}: ${error.message}${debug ? '' : ' (--debug prints the stack trace)'}`
          : String(error);
    host.stderr(`error: ${message.split('\n').join(' ')}${stack}\n`);
    return 1;
  } finally {
    ctx?.destroy();
  }
}

const dtypeOf = (args: Args, ctx: GpuContext): WeightDtype => dtypeFlag(args, ctx.caps.f16);
const expertCacheBytes = (args: Args): number | undefined => {
  const mib = numberFlag(args, 'expert-cache-mb', 0);
  return mib === undefined ? undefined : Math.floor(mib * 1024 * 1024);
};
/** Expert streaming figures for --json output (absent when every expert is resident). */
const expertJson = (source: { expertStats(): ExpertStats | undefined }) => {
  const s = source.expertStats();
  return (
    s && { expert_cache_hit_rate: round(s.hitRate * 1000) / 1000, expert_bytes_streamed: s.bytesStreamed, expert_stall_ms_per_token: round(s.stallMsPerToken) }
  );
};

/** --http-timeout as HttpSource options (model URLs), and how hub ids reach the hub and its cache. */
function httpOptions(args: Args, host: CliHost): { http: HttpOptions; hub: HubOptions } {
  const seconds = positiveFlag(args, 'http-timeout');
  const timeoutMs = seconds === undefined ? undefined : seconds * 1000;
  return { http: { timeoutMs }, hub: hubOptions(host, timeoutMs) };
}

const openModelFlag = (args: Args, host: CliHost): Promise<Checkpoint> => openModel(stringFlag(args, 'model', true), httpOptions(args, host));

/** The Engine for --model (opened once), with a progress bar on a terminal; generate and score run on it. */
async function loadEngine(
  checkpoint: Checkpoint,
  dtype: WeightDtype,
  args: Args,
  ctx: GpuContext,
  host: CliHost,
  contextLength: number,
  maxBatch?: number,
  /** A pipeline stage's layers and pool, or speculation asked for by the command itself. */
  more?: Pick<EngineOptions, 'layers' | 'pipeline' | 'mtp'>,
): Promise<Engine> {
  // Pipeline stages load an INT4 hub model by converting their own layers as they load, not through one shared cache.
  if (dtype === 'q4' && !more?.pipeline) {
    // A hub model converts to INT4 once; later runs load the packed copy.
    const bar = progressBar(host.stderr, host.isTTY, 'converting');
    checkpoint =
      (await convertedOnce(ctx, checkpoint, {
        env: (name) => host.env(name),
        onConvert: (dir) => host.stderr(`converting to int4 once, into ${dir}\n`),
        onProgress: (p) => bar.update(p.loadedBytes, p.totalBytes, p.tensor),
      })) ?? checkpoint;
    bar.done();
  }
  const bar = progressBar(host.stderr, host.isTTY, 'loading');
  const engine = await Engine.load(ctx, checkpoint, {
    dtype,
    dtypeGiven: args.flags.has('dtype'),
    verify: args.flags.has('verify'),
    contextLength,
    maxBatch,
    expertCacheBytes: expertCacheBytes(args),
    ...speculationOptions(args),
    onProgress: (p) => bar.update(p.loadedBytes, p.totalBytes, p.tensor),
    ...more,
  });
  bar.done();
  warnUnused(engine.model, host);
  if (!args.flags.has('dtype') && !checkpoint.packed && engine.model.dtype !== dtype) {
    const bits = fileBitsPerWeight(checkpoint).toFixed(1);
    host.stderr(
      `note: ${bits} bits per weight in the file: held as ${engine.model.dtype === 'q4' ? 'int4' : engine.model.dtype} (--dtype f16 keeps the file's values)\n`,
    );
  }
  return engine;
}

/**
 * --no-mtp, --draft-tokens K (which asks for speculative decoding even where it is not on by default) and
 * --draft-vocab N (how drafts are made where it runs).
 */
function speculationOptions(args: Args): Pick<EngineOptions, 'mtp' | 'draftTokens' | 'draftVocab'> {
  const draftTokens = args.flags.has('draft-tokens') ? intFlag(args, 'draft-tokens', DEFAULT_DRAFT_TOKENS) : undefined;
  const draftVocab = args.flags.has('draft-vocab') ? intFlag(args, 'draft-vocab', DEFAULT_DRAFT_VOCAB, 0) : undefined;
  if (args.flags.has('no-mtp')) {
    for (const flag of ['draft-tokens', 'draft-vocab'])
      if (args.flags.has(flag)) throw new UsageError(`--${flag} is for speculative decoding, which --no-mtp turns off`);
    return { mtp: false };
  }
  if (draftTokens !== undefined && (draftTokens < 1 || draftTokens > MAX_DRAFT_TOKENS))
    throw new UsageError(`--draft-tokens must be 1 to ${MAX_DRAFT_TOKENS}, got ${draftTokens}`);
  return { ...(draftTokens === undefined ? {} : { mtp: true, draftTokens }), ...(draftVocab === undefined ? {} : { draftVocab }) };
}

/** Speculative decoding figures for --json output (absent when the generation did not speculate). */
const speculationJson = (engine: Engine) => {
  const s = engine.speculationStats();
  return (
    s && {
      mtp_passes: s.passes,
      mtp_acceptance_rate: round((s.accepted / s.drafted) * 1000) / 1000,
      mtp_tokens_per_pass: round(((s.passes + s.accepted) / s.passes) * 100) / 100,
    }
  );
};

function warnUnused(model: Model, host: CliHost): void {
  const unused = model.unusedTensors;
  if (unused.length > 0)
    host.stderr(`warning: ${unused.length} checkpoint tensors are not used: ${unused.slice(0, 5).join(', ')}${unused.length > 5 ? ', ...' : ''}\n`);
}

const adapterJson = (ctx: GpuContext) => ({
  name: ctx.adapter.name,
  backend: ctx.adapter.backend,
  features: ctx.adapter.features,
  f16: ctx.caps.f16,
  subgroups: ctx.caps.subgroups,
  activations: ctx.activations,
});
const round = (x: number) => Math.round(x * 100) / 100;
const rate = (tokens: number, ms: number) => (tokens > 0 && ms > 0 ? round((tokens * 1000) / ms) : null);

/** Every id must be a token of the model: below vocab_size, and below the tokenizer's size (rows past it are padding). */
function checkIds(flag: string, ids: number[], model: Model): void {
  const { vocabSize } = model.config;
  ids.forEach((id, i) => {
    if (id >= vocabSize) throw new RequestError(`id ${id} (at position ${i}) is not below the model's vocab_size ${vocabSize}`, `--${flag}`);
    if (id >= model.tokenizerSize) {
      throw new RequestError(
        `id ${id} (at position ${i}) is not a token: the tokenizer has ${model.tokenizerSize} (ids ${model.tokenizerSize}..${vocabSize - 1} are padding rows)`,
        `--${flag}`,
      );
    }
  });
}

/** The output file can be written (checked before the model loads): its folder exists, it is not a folder. */
async function checkWritable(flag: string, path: string): Promise<void> {
  const info = await stat(path).catch(() => undefined);
  if (info?.isDirectory()) throw new RequestError(`${path} is a directory`, `--${flag}`);
  const dir = dirname(resolve(path));
  if (!info && !(await stat(dir).catch(() => undefined))?.isDirectory())
    throw new RequestError(`cannot write ${path}: there is no directory ${dir}`, `--${flag}`);
  await access(info ? path : dir, constants.W_OK).catch(() => {
    throw new RequestError(`cannot write ${path}: ${info ? 'the file' : `the directory ${dir}`} is not writable`, `--${flag}`);
  });
}

async function readMessages(path: string): Promise<ChatMessage[]> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (error) {
    throw new UsageError(`cannot read --messages file ${path}`, { cause: error });
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (error) {
    throw new UsageError(`${path}: ${(error as Error).message}`, { cause: error });
  }
  const messages = Array.isArray(parsed) ? parsed : (parsed as { messages?: unknown } | null)?.messages;
  if (!Array.isArray(messages)) throw new UsageError(`${path}: expected a JSON array of messages (or an object with "messages")`);
  return messages;
}

async function chatMessages(args: Args): Promise<ChatMessage[]> {
  const prompt = stringFlag(args, 'prompt');
  const file = stringFlag(args, 'messages');
  if ((prompt === undefined) === (file === undefined)) throw new UsageError('give one of --prompt, --messages or --prompt-ids');
  return prompt !== undefined ? [{ role: 'user', content: prompt }] : readMessages(file!);
}

function reasoningOf(args: Args): Reasoning {
  if (args.flags.has('no-think')) {
    if (args.flags.has('reasoning-budget')) throw new UsageError('--no-think and --reasoning-budget exclude each other');
    return 'off';
  }
  return args.flags.has('reasoning-budget') ? { budget: intFlag(args, 'reasoning-budget', undefined, 0) } : 'on';
}

async function tokenize(args: Args, host: CliHost): Promise<void> {
  const tokenizer = await Tokenizer.load((await openModelFlag(args, host)).files);
  let text = stringFlag(args, 'text');
  if (text !== undefined && args.flags.has('messages')) throw new UsageError('give --text or --messages, not both');
  if (text === undefined) {
    if (!args.flags.has('messages')) throw new UsageError('tokenize takes --text or --messages');
    if (!tokenizer.chatTemplate) throw new UsageError('the model has no chat_template in tokenizer_config.json');
    text = renderChat(tokenizer.chatTemplate, { messages: await chatMessages(args), addGenerationPrompt: true, enableThinking: !args.flags.has('no-think') });
  }
  const ids = tokenizer.encode(text);
  host.stdout(args.flags.has('json') ? `${JSON.stringify({ ids, text })}\n` : `${ids.join(',')}\n`);
}

async function score(args: Args, ctx: GpuContext, host: CliHost): Promise<void> {
  const ids = idsFlag(args, 'ids');
  const outPath = stringFlag(args, 'out', true);
  const contextLength = intFlag(args, 'context', ids.length);
  if (contextLength < ids.length) throw new UsageError(`--ids has ${ids.length} ids, more than --context ${contextLength}`);
  const dtype = dtypeOf(args, ctx);
  await checkWritable('out', outPath);
  const t0 = performance.now();
  const engine = await loadEngine(await openModelFlag(args, host), dtype, args, ctx, host, contextLength);
  try {
    checkIds('ids', ids, engine.model);
    const t1 = performance.now();
    const file = await open(outPath, 'w').catch((error: { code?: string; message: string }) => {
      throw new RequestError(`cannot write ${outPath} (${error.code ?? error.message})`, '--out');
    });
    try {
      await engine.score(ids, async (rows) => {
        await file.write(new Uint8Array(rows.buffer, rows.byteOffset, rows.byteLength));
      });
    } finally {
      await file.close();
    }
    const t2 = performance.now();
    host.stdout(
      `${JSON.stringify({
        command: 'score',
        tokens: ids.length,
        vocab_size: engine.model.config.vocabSize,
        out: outPath,
        dtype: engine.model.dtype,
        load_ms: round(t1 - t0),
        score_ms: round(t2 - t1),
        tokens_per_s: rate(ids.length, t2 - t1),
        ...expertJson(engine),
        adapter: adapterJson(ctx),
      })}\n`,
    );
  } finally {
    engine.destroy();
  }
}

/** Token ids in, token ids out: no tokenizer needed. */
async function generateFromIds(args: Args, ctx: GpuContext, host: CliHost): Promise<void> {
  for (const flag of CHAT_FLAGS) {
    if (args.flags.has(flag))
      throw new UsageError(
        flag === 'prompt' || flag === 'messages'
          ? 'give one of --prompt, --messages or --prompt-ids'
          : `--${flag} is for chats (--prompt, --messages), not --prompt-ids`,
      );
  }
  const prompt = idsFlag(args, 'prompt-ids');
  const maxTokens = intFlag(args, 'max-tokens', 256);
  const contextLength = intFlag(args, 'context', prompt.length + maxTokens);
  if (prompt.length + maxTokens > contextLength) {
    throw new UsageError(
      `--prompt-ids (${prompt.length} ids) + --max-tokens ${maxTokens} = ${prompt.length + maxTokens} tokens, more than --context ${contextLength}`,
    );
  }
  const dtype = dtypeOf(args, ctx);
  const checkpoint = await openModelFlag(args, host);
  const sampling = samplingFromFlags(args, await readGenerationConfig(checkpoint.files));
  const engine = await loadEngine(checkpoint, dtype, args, ctx, host, contextLength);
  try {
    checkIds('prompt-ids', prompt, engine.model);
    const r = await engine.generateIds({ promptIds: prompt, maxTokens, sampling, ignoreEos: args.flags.has('ignore-eos') });
    host.stdout(
      args.flags.has('json')
        ? `${JSON.stringify({
            ids: r.ids,
            prompt_tokens: r.promptTokens,
            stop_reason: r.stopped,
            dtype: engine.model.dtype,
            prefill_tokens_per_s: rate(r.promptTokens, r.prefillMs),
            decode_tokens_per_s: rate(r.ids.length - 1, r.decodeMs),
            ...expertJson(engine),
            ...speculationJson(engine),
            adapter: adapterJson(ctx),
          })}\n`
        : `${r.ids.join(',')}\n`,
    );
  } finally {
    engine.destroy();
  }
}

/** A chat through the OpenAI-shaped API, streamed to stdout. */
async function generateChat(args: Args, ctx: GpuContext, host: CliHost): Promise<void> {
  if (args.flags.has('ignore-eos')) throw new UsageError('--ignore-eos is for --prompt-ids, not chats');
  const messages = await chatMessages(args);
  const reasoning = reasoningOf(args);
  const maxTokens = intFlag(args, 'max-tokens', 256);
  const checkpoint = await openModelFlag(args, host);
  const sampling = samplingFromFlags(args, await readGenerationConfig(checkpoint.files));
  const engine = await loadEngine(checkpoint, dtypeOf(args, ctx), args, ctx, host, intFlag(args, 'context', 4096));
  const prompt = engine.renderPrompt(messages, { reasoning });
  const ids: number[] = [];
  const stop = stringFlag(args, 'stop');
  const t0 = performance.now();
  let first = 0;
  const stream = await engine.chat.completions.create({
    messages,
    reasoning,
    max_tokens: maxTokens,
    stream: true,
    stop,
    temperature: sampling.temperature,
    top_p: sampling.topP,
    top_k: sampling.topK,
    min_p: sampling.minP,
    presence_penalty: sampling.presencePenalty,
    frequency_penalty: sampling.frequencyPenalty,
    repetition_penalty: sampling.repetitionPenalty,
    seed: sampling.seed,
    onToken: (id) => {
      if (ids.push(id) === 1) first = performance.now();
    },
  });
  const json = args.flags.has('json');
  const chunks: ChatCompletionChunk[] = [];
  let inThought = false;
  for await (const chunk of stream) {
    chunks.push(chunk);
    if (json) {
      if (args.flags.has('stream')) host.stdout(`${JSON.stringify(chunk)}\n`);
      continue;
    }
    const d = chunk.choices[0].delta;
    if (d.reasoning_content) {
      if (!inThought) host.stdout('<think>\n');
      inThought = true;
      host.stdout(d.reasoning_content);
    }
    if (d.content) {
      if (inThought) host.stdout('\n</think>\n\n');
      inThought = false;
      host.stdout(d.content);
    }
    for (const call of d.tool_calls ?? []) host.stdout(`\n[tool call] ${call.function.name}(${call.function.arguments})`);
  }
  const end = performance.now();
  if (!json) host.stdout('\n');
  else {
    const response = await collectChat(
      (async function* () {
        yield* chunks;
      })(),
      false,
    );
    host.stdout(
      `${JSON.stringify({
        ...response,
        prompt_ids: prompt.ids,
        ids,
        prefill_tokens_per_s: rate(prompt.ids.length, first - t0),
        decode_tokens_per_s: rate(ids.length - 1, end - first),
        ...speculationJson(engine),
        adapter: adapterJson(ctx),
      })}\n`,
    );
  }
  engine.destroy();
}

async function convert(args: Args, ctx: GpuContext, host: CliHost): Promise<void> {
  if (!args.flags.has('dtype')) throw new UsageError('convert takes --dtype int4, f16 or f32');
  const dtype = dtypeOf(args, ctx);
  const out = stringFlag(args, 'out', true);
  const checkpoint = await openModelFlag(args, host);
  const bar = progressBar(host.stderr, host.isTTY, 'converting');
  const t0 = performance.now();
  const manifest = await convertModel(ctx, checkpoint, {
    dtype,
    sink: new FolderSink(out),
    shardBytes: intFlag(args, 'shard-mb', 256) * 1024 * 1024,
    mtp: !args.flags.has('no-mtp'),
    onProgress: (p) => bar.update(p.loadedBytes, p.totalBytes, p.tensor),
  });
  bar.done();
  const bytes = manifest.shards.reduce((sum, s) => sum + s.bytes, 0);
  host.stdout(
    `${JSON.stringify({ command: 'convert', out, dtype: manifest.dtype, tensors: manifest.tensors.length, shards: manifest.shards.length, bytes, ms: round(performance.now() - t0) })}\n`,
  );
}

async function exportPacked(args: Args, host: CliHost): Promise<void> {
  const out = stringFlag(args, 'out', true);
  const checkpoint = await openModelFlag(args, host);
  if (!checkpoint.packed) throw new UsageError(`export reads a packed model (made by convert); ${checkpoint.location} is not one`);
  const bar = progressBar(host.stderr, host.isTTY, 'exporting');
  const result = await exportHf(checkpoint.packed, new FolderSink(out), { onProgress: (p) => bar.update(p.doneBytes, p.totalBytes, p.tensor) });
  bar.done();
  host.stdout(`${JSON.stringify({ command: 'export', out, tensors: result.tensors, files: result.files, bytes: result.bytes })}\n`);
}
