import type { Engine, EngineOptions } from '../api/engine.ts';
import type { GpuContext } from '../gpu/context.ts';
import { StageError } from '../errors.ts';
import type { WeightDtype } from '../gpu/tensor.ts';
import type { Checkpoint } from '../formats/checkpoint.ts';
import { prefillChunk } from '../model/activations.ts';
import { loadModel } from '../model/load.ts';
import { planCheckpoint } from '../model/plan.ts';
import type { LayerRange } from '../model/tensors.ts';
import { type Assign, type Hello, PROTOCOL_VERSION, layerCosts, modelIdentity, splitLayers } from '../runtime/pipeline/handshake.ts';
import { StageGroup, rangeText } from '../runtime/pipeline/group.ts';
import { FrameConnection } from '../runtime/pipeline/link.ts';
import { StagePool } from '../runtime/pipeline/stage_pool.ts';
import { serveStage } from '../runtime/pipeline/stage_worker.ts';
import { DEFAULT_DRAFT_TOKENS, DEFAULT_DRAFT_VOCAB } from '../runtime/speculation.ts';
import { type Args, UsageError, intFlag, numberFlag, positiveFlag, stringFlag } from './args.ts';
import type { CliHost } from './host.ts';

/**
 * Pipeline stages from the command line (runtime/pipeline): `serve --stages N` is stage 0 — it starts stages
 * 1..N−1 on this host, or with --stage-listen waits for them to connect from others — and `stage` is one of the
 * others, started by hand, by Slurm, or by Kubernetes' LeaderWorkerSet (whose environment gives the defaults).
 */

export const PIPELINE_FLAGS = ['stages', 'stage-listen', 'gpu-memory-gb', 'stage-timeout-s'];
export const STAGE_FLAGS = ['stage', 'stages', 'peer', 'layers', 'gpu-memory-gb'];

/** The port stages meet stage 0 on when LeaderWorkerSet's environment says only the leader's address. */
const DEFAULT_STAGE_PORT = 9400;
/** How long a stage keeps trying to reach stage 0 (pods of a group start in any order). */
const CONNECT_TRIES_MS = 300_000;
/** A restarted local stage waits this long first, so a stage that cannot start does not spin. */
const RESTART_DELAY_MS = 2000;

const GIB = 1024 ** 3;
const memoryFlag = (args: Args) => Math.round((numberFlag(args, 'gpu-memory-gb', 0) ?? 0) * GIB);

/** Flags a local stage is started with: the model, and how stage 0 itself was told to load it and use the GPU. */
function passedOn(args: Args): string[] {
  const out: string[] = [];
  for (const name of ['model', 'dtype', 'adapter', 'activations', 'http-timeout', 'gpu-memory-gb']) {
    const v = args.flags.get(name);
    if (typeof v === 'string') out.push(`--${name}`, v);
  }
  for (const name of ['no-f16', 'no-subgroups', 'verify']) if (args.flags.has(name)) out.push(`--${name}`);
  return out;
}

function parseAddress(text: string, flag: string): { hostname: string; port: number } {
  const at = text.lastIndexOf(':');
  const port = Number(text.slice(at + 1));
  const hostname = text.slice(0, at).replace(/^\[(.*)\]$/, '$1');
  if (at <= 0 || !Number.isInteger(port) || port < 0 || port > 65535) throw new UsageError(`--${flag} must be HOST:PORT, got "${text}"`);
  return { hostname, port };
}

/** `serve --stages N`: the Engine of stage 0, its pool running requests through the other stages. */
export async function loadPipelineEngine(
  args: Args,
  host: CliHost,
  ctx: GpuContext,
  checkpoint: Checkpoint,
  dtype: WeightDtype,
  sizes: { contextLength: number; maxBatch: number; speculation: Pick<EngineOptions, 'mtp' | 'draftTokens' | 'draftVocab'> },
  load: (options: Pick<EngineOptions, 'layers' | 'pipeline'>) => Promise<Engine>,
): Promise<{ engine: Engine; stop(): void }> {
  const stages = intFlag(args, 'stages');
  const timeoutMs = (positiveFlag(args, 'stage-timeout-s') ?? 120) * 1000;
  const listenAt = stringFlag(args, 'stage-listen');
  const address = listenAt ? parseAddress(listenAt, 'stage-listen') : { hostname: '127.0.0.1', port: 0 };
  const draftTokens = pipelineDrafts(ctx, checkpoint, sizes.speculation);
  const plan = await planCheckpoint(checkpoint, { mtp: draftTokens > 0 });
  if (stages > plan.config.layerTypes.length) throw new UsageError(`--stages ${stages} is more than the model's ${plan.config.layerTypes.length} layers`);
  const heldDtype = checkpoint.packed?.dtype ?? dtype;
  const group = new StageGroup(modelIdentity(checkpoint, plan.rawConfig, heldDtype), stages, host.stderr);
  const listener = await host.listenTcp(address, (link) => void group.accept(link));
  let stopping = false;
  let serving = false;
  let startFailed: (error: Error) => void = () => {};
  const startupFailure = new Promise<never>((_, reject) => {
    startFailed = reject;
  });
  startupFailure.catch(() => {});
  const children = new Map<number, { kill(): void }>();
  const startLocal = (stage: number) => {
    const child = host.spawnCli(['stage', ...passedOn(args), '--stage', String(stage), '--stages', String(stages), '--peer', `127.0.0.1:${listener.port}`], {});
    children.set(stage, child);
    host.stderr(`started stage ${stage} (pid ${child.pid})\n`);
    void child.exited.then((code) => {
      if (stopping) return;
      // Before the group first served, a stage that exits would exit again (no GPU, an unreadable model): give up.
      if (!serving) return startFailed(new StageError(`exited (code ${code}) before the group was ready (its error is above)`, `stage ${stage}`));
      host.stderr(`stage ${stage} exited (code ${code}); starting it again\n`);
      setTimeout(() => !stopping && startLocal(stage), RESTART_DELAY_MS);
    });
  };
  const stop = () => {
    stopping = true;
    listener.close();
    for (const child of children.values()) child.kill();
  };
  try {
    if (listenAt) host.stderr(`waiting for stages 1..${stages - 1} on ${listenAt}\n`);
    else for (let s = 1; s < stages; s++) startLocal(s);
    const hellos = await Promise.race([group.hellos(), startupFailure]);
    const split = planStages(ctx, plan, heldDtype, memoryFlag(args), hellos, {
      ...sizes,
      draftTokens,
      draftVocab: sizes.speculation.draftVocab ?? DEFAULT_DRAFT_VOCAB,
    });
    host.stderr(describeSplit(split, hellos, ctx.adapter.name));
    const [own, ...others] = split.assigns;
    const connections = Promise.race([group.start(others), startupFailure]);
    const engine = await load({
      layers: own.layers,
      pipeline: async (model) => {
        const pool = new StagePool(ctx, model, await connections, {
          ...sizes,
          slots: sizes.maxBatch,
          prefillChunk: own.prefillChunk,
          callTimeoutMs: timeoutMs,
          draftTokens,
        });
        group.attach(pool);
        return pool;
      },
    });
    serving = true;
    return { engine, stop };
  } catch (error) {
    stop();
    throw error;
  }
}

/**
 * Every stage's layer range from its memory (equal shares where none was given), and the sizes all share; a stage
 * whose given memory cannot hold its share is an error before anything loads.
 */
function planStages(
  ctx: GpuContext,
  plan: Awaited<ReturnType<typeof planCheckpoint>>,
  dtype: WeightDtype,
  ownMemory: number,
  hellos: Hello[],
  sizes: { contextLength: number; maxBatch: number; draftTokens: number; draftVocab: number },
): { assigns: Assign[]; bytes: number[] } {
  const given = [ownMemory, ...hellos.map((h) => h.memoryBytes)];
  const known = given.filter((m) => m > 0);
  const fill = known.length > 0 ? known.reduce((a, b) => a + b, 0) / known.length : 1;
  const costs = layerCosts(plan, dtype, sizes.contextLength, sizes.maxBatch, ctx.activationBytes, sizes.draftTokens > 0);
  const ranges = splitLayers(
    costs,
    given.map((m) => (m > 0 ? m : fill)),
  );
  const bytes = ranges.map(
    (r, s) => costs.layers.slice(r.first, r.end).reduce((a, b) => a + b, 0) + (s === 0 ? costs.first : 0) + (s === ranges.length - 1 ? costs.last : 0),
  );
  bytes.forEach((b, s) => {
    if (given[s] > 0 && b > given[s]) {
      throw new UsageError(
        `stage ${s} needs ${gib(b)} GiB for layers ${rangeText(ranges[s])} (weights, and states of ${sizes.maxBatch} sequences of ${sizes.contextLength} tokens), more than its --gpu-memory-gb ${gib(given[s])}: use more stages, a smaller --context or --max-batch`,
      );
    }
  });
  const chunk = Math.min(prefillChunk(ctx, plan), ...hellos.map((h) => h.prefillChunk));
  const assigns = ranges.map(
    (layers): Assign => ({
      type: 'assign',
      layers,
      contextLength: sizes.contextLength,
      slots: sizes.maxBatch,
      prefillChunk: chunk,
      draftTokens: sizes.draftTokens,
      draftVocab: sizes.draftVocab,
    }),
  );
  return { assigns, bytes };
}

/**
 * Drafts per pass through the stages: as asked, or by default on GPU adapters when the checkpoint has its MTP block
 * (which the last stage then loads); 0 is none.
 */
function pipelineDrafts(ctx: GpuContext, checkpoint: Checkpoint, speculation: Pick<EngineOptions, 'mtp' | 'draftTokens'>): number {
  const hasMtp = checkpoint.packed ? checkpoint.packed.tensors.has('mtp.fc') : checkpoint.tensors.has('mtp.fc.weight');
  if (speculation.mtp === true && !hasMtp) throw new UsageError("speculative decoding needs the checkpoint's MTP block (mtp.* tensors), which it lacks");
  return hasMtp && (speculation.mtp ?? !ctx.caps.cpu) ? (speculation.draftTokens ?? DEFAULT_DRAFT_TOKENS) : 0;
}

const gib = (bytes: number) => (bytes / GIB).toFixed(bytes < GIB ? 3 : 1);

function describeSplit({ assigns, bytes }: { assigns: Assign[]; bytes: number[] }, hellos: Hello[], adapter: string): string {
  const lines = assigns.map((a, s) => {
    const where = s === 0 ? `this process, ${adapter}` : `${hellos[s - 1].adapter}`;
    const last = s === assigns.length - 1;
    const extra = [
      s === 0 ? 'embedding' : '',
      last ? 'final norm, LM head, sampler' : '',
      last && a.draftTokens ? `MTP drafter (${a.draftTokens} drafts per pass from ${a.draftVocab ? `ids below ${a.draftVocab}` : 'every id'})` : '',
    ]
      .filter(Boolean)
      .join(', ');
    return `  stage ${s}: layers ${rangeText(a.layers)}${extra ? ` + ${extra}` : ''}, ${gib(bytes[s])} GiB (${where})`;
  });
  return `pipeline of ${assigns.length} stages:\n${lines.join('\n')}\n`;
}

/** `stage`: one stage past the first, until stage 0 closes the connection. */
export async function runStage(args: Args, ctx: GpuContext, host: CliHost, open: () => Promise<Checkpoint>, dtype: WeightDtype): Promise<void> {
  const env = (name: string) => host.env(name);
  const stage = args.flags.has('stage') ? intFlag(args, 'stage') : envInt(env, 'LWS_WORKER_INDEX', '--stage');
  const stages = args.flags.has('stages') ? intFlag(args, 'stages', undefined, 2) : envInt(env, 'LWS_GROUP_SIZE', '--stages');
  const leader = env('LWS_LEADER_ADDRESS');
  const peerText = stringFlag(args, 'peer') ?? (leader ? `${leader}:${env('QWEN_STAGE_PORT') ?? DEFAULT_STAGE_PORT}` : undefined);
  if (!peerText) throw new UsageError('--peer HOST:PORT (stage 0) is required (or LWS_LEADER_ADDRESS in the environment)');
  const peer = parseAddress(peerText, 'peer');
  const layers = stringFlag(args, 'layers');
  const wanted = layers === undefined ? undefined : parseRange(layers);
  const checkpoint = await open();
  const plan = await planCheckpoint(checkpoint);
  const name = `stage ${stage}`;
  const conn = new FrameConnection(await connectWithRetries(host, peer), `stage 0 (${peerText})`);
  const hello: Hello = {
    type: 'hello',
    protocol: PROTOCOL_VERSION,
    stage,
    stages,
    model: modelIdentity(checkpoint, plan.rawConfig, checkpoint.packed?.dtype ?? dtype),
    memoryBytes: memoryFlag(args),
    layers: wanted,
    prefillChunk: prefillChunk(ctx, plan),
    adapter: ctx.adapter.name,
  };
  await conn.send({ ...hello });
  const answer = await conn.next();
  if (answer.header.type === 'refused') throw new StageError(`stage 0 ${String(answer.header.reason)}`, name);
  if (answer.header.type !== 'assign') throw new StageError(`stage 0 sent ${answer.header.type}, not assign`, name);
  const assign = answer.header as unknown as Assign;
  host.stderr(`${name}: loading layers ${rangeText(assign.layers)} on ${ctx.adapter.name}\n`);
  // Speculating, the last stage loads the MTP block (and the embedding it drafts with).
  const mtp = (assign.draftTokens ?? 0) > 0;
  const model = await loadModel(ctx, checkpoint, { dtype, dtypeGiven: args.flags.has('dtype'), layers: assign.layers, verify: args.flags.has('verify'), mtp });
  try {
    await conn.send({ type: 'ready' });
    host.stderr(`${name}: ready\n`);
    await serveStage(ctx, model, conn, assign);
  } finally {
    model.destroy();
    conn.close();
  }
}

function envInt(env: (name: string) => string | undefined, name: string, flag: string): number {
  const v = env(name);
  const n = Number(v);
  if (v === undefined) throw new UsageError(`${flag} is required (or ${name} in the environment)`);
  if (!Number.isInteger(n) || n < 0) throw new UsageError(`${name} must be a non-negative integer, got "${v}"`);
  return n;
}

function parseRange(text: string): LayerRange {
  const m = /^(\d+):(\d+)$/.exec(text);
  if (!m || Number(m[1]) >= Number(m[2])) throw new UsageError(`--layers must be FIRST:END (0-based, END excluded), got "${text}"`);
  return { first: Number(m[1]), end: Number(m[2]) };
}

async function connectWithRetries(host: CliHost, peer: { hostname: string; port: number }) {
  const deadline = performance.now() + CONNECT_TRIES_MS;
  for (;;) {
    try {
      return await host.connect(peer.hostname, peer.port);
    } catch (error) {
      if (performance.now() > deadline) throw new StageError(`cannot reach it: ${(error as Error).message}`, `stage 0 (${peer.hostname}:${peer.port})`);
      await new Promise((r) => setTimeout(r, 500));
    }
  }
}
