import type { Dispatch, GpuContext } from '../gpu/context.ts';
import { InternalError, throwIfAborted } from '../errors.ts';
import type { GpuTensor } from '../gpu/tensor.ts';
import type { ForwardSegment } from '../model/layers.ts';
import { type Model, NOT_RESIDENT } from '../model/model.ts';
import type { MoeWeights } from '../model/weights.ts';
import type { ExpertTensor } from '../storage/expert_source.ts';
import { type EvictionPolicy, type PolicyName, type TraceStep, createPolicy } from './expert_policy.ts';

/** Expert streaming figures since the last reset (Session.reset: one generation or scoring). */
export interface ExpertStats {
  /** Uses of an expert (distinct per layer and forward call) that found it resident, and that had to stream it. */
  hits: number;
  misses: number;
  hitRate: number;
  /** Bytes uploaded to the GPU: misses × the bytes of one expert (gate_up + down). */
  bytesStreamed: number;
  /** Wall time spent waiting for expert reads and uploads, and per token forwarded. */
  stallMs: number;
  stallMsPerToken: number;
  /** Wall time spent waiting for the chosen ids to come back (one readback per MoE layer and forward call). */
  readbackMs: number;
  /** Tokens forwarded (prompt and generated; every row of a speculative verification, drafts rejected included). */
  tokens: number;
  /** Experts read ahead from the next layer's router (decode), and how many of those that layer then chose. */
  prefetched: number;
  prefetchUsed: number;
  /** Forward calls of a layer whose distinct experts needed more than one residency pass. */
  extraPasses: number;
  /** Per layer, how many times each expert was chosen ([layer][expert]; layers without experts hold zeros). */
  usage: number[][];
}

/** Expert streaming since the model loaded, every generation summed: what a server's metrics count. */
export interface ExpertTotals {
  /** Experts each MoE layer keeps on the GPU. */
  slots: number;
  hits: number;
  misses: number;
  bytesStreamed: number;
  stallMs: number;
}

interface LayerCache {
  layer: number;
  w: MoeWeights;
  /** Expert id → slot, or -1. */
  slotOf: Int32Array;
  /** Slot → expert id, or -1. */
  expertIn: Int32Array;
  policy: EvictionPolicy;
  now: number;
  /** Reads started ahead of the layer's routing (prefetch), by expert. */
  ahead: Map<number, Promise<[Uint8Array, Uint8Array]>>;
}

const caches = new WeakMap<Model, ExpertCache>();

/** One forward pass with streamed experts (ExpertCache.forward). */
export interface StreamedForward {
  /** The rows' chosen expert ids ([rows, topk] u32, as moe_route writes them: activations.moe.ids). */
  ids: GPUBuffer;
  rows: number;
  /** The rows whose experts count (default all): a batch step's rows of sequences that decode; the others are skipped rows. */
  active?: readonly number[];
  /** Submitted with the last segment (the LM head, the picks). */
  tail: Dispatch[];
  label: string;
  /**
   * Decode of one row: the next layer's router applied to this layer's input, into ids row 1, so that its likely
   * experts are read while the GPU works (prefetch).
   */
  predict?: (layer: number) => Promise<Dispatch[]>;
  signal?: AbortSignal;
}

/**
 * The GPU expert cache of a model whose experts are streamed (model.experts): each main MoE layer's expert
 * tensors hold `slots` experts; the slot table (expert id → slot, NOT_RESIDENT for the others) is kept in
 * sync on the GPU, residency and the eviction policy's history on the CPU. One per model, shared by its sessions.
 */
export class ExpertCache {
  readonly slots: number;
  readonly expertBytes: number;
  /** When set, every layer step's distinct experts (and their use counts) are appended: for trace benchmarks. */
  trace?: TraceStep[];
  private readonly layers: LayerCache[];
  /** The current generation's figures (stats), and those of the generations before it. */
  private counters = zeroCounters();
  private earlier = zeroCounters();
  private usage: number[][] = [];
  /** The last layer run queued (runLayer): one at a time, so that no one evicts what another has made resident for its run. */
  private turn: Promise<void> = Promise.resolve();

  private constructor(
    private readonly ctx: GpuContext,
    private readonly model: Model,
    policy: PolicyName,
  ) {
    const streaming = model.experts!;
    const E = model.config.moe!.numExperts;
    this.slots = streaming.slots;
    this.expertBytes = streaming.expertBytes;
    this.layers = model.weights.layers.map((l, layer) => ({
      layer,
      w: l.mlp as MoeWeights,
      slotOf: new Int32Array(E).fill(-1),
      expertIn: new Int32Array(streaming.slots).fill(-1),
      policy: createPolicy(policy, E),
      now: 0,
      ahead: new Map(),
    }));
    this.resetStats();
  }

  /** The cache of `model`, or undefined when all its experts are resident. */
  static of(ctx: GpuContext, model: Model, policy: PolicyName = 'lrfu'): ExpertCache | undefined {
    if (!model.experts) return undefined;
    let cache = caches.get(model);
    if (!cache) {
      cache = new ExpertCache(ctx, model, policy);
      caches.set(model, cache);
    }
    return cache;
  }

  /** Which experts of `layer` are resident (for tests and benchmarks). */
  resident(layer: number): number[] {
    return [...this.layers[layer].expertIn].filter((e) => e >= 0);
  }

  resetStats(): void {
    const [c, e] = [this.counters, this.earlier];
    for (const key of Object.keys(c) as (keyof typeof c)[]) e[key] += c[key];
    this.counters = zeroCounters();
    this.usage = this.layers.map(() => new Array<number>(this.model.config.moe!.numExperts).fill(0));
  }

  private countTokens(tokens: number, readbackMs: number): void {
    this.counters.tokens += tokens;
    this.counters.readbackMs += readbackMs;
  }

  stats(): ExpertStats {
    const c = this.counters;
    return {
      ...c,
      hitRate: c.hits / Math.max(1, c.hits + c.misses),
      bytesStreamed: c.misses * this.expertBytes,
      stallMsPerToken: c.stallMs / Math.max(1, c.tokens),
      usage: this.usage.map((row) => [...row]),
    };
  }

  totals(): ExpertTotals {
    const [c, e] = [this.counters, this.earlier];
    const misses = c.misses + e.misses;
    return { slots: this.slots, hits: c.hits + e.hits, misses, bytesStreamed: misses * this.expertBytes, stallMs: c.stallMs + e.stallMs };
  }

  /**
   * Runs a forward pass cut into segments (model/layers.ts forwardSegments) with streamed experts: after each MoE
   * layer's routing the chosen ids are read back (the one per-layer readback, and only here), missing experts are
   * read and uploaded, then the layer's experts run (in passes when the rows need more experts than there are slots).
   */
  async forward(segments: readonly ForwardSegment[], pass: StreamedForward): Promise<void> {
    const k = this.model.config.moe!.topk;
    const active = pass.active ?? Array.from({ length: pass.rows }, (_, r) => r);
    let readbackMs = 0;
    for (const seg of segments) {
      const experts = seg.experts;
      if (!experts) {
        this.ctx.run([...seg.dispatches, ...pass.tail], pass.label);
        continue;
      }
      const next = pass.predict && experts.layer + 1 < this.layers.length ? experts.layer + 1 : undefined;
      this.ctx.run([...seg.dispatches, ...(next !== undefined ? await pass.predict!(next) : [])], pass.label);
      const t0 = performance.now();
      const ids = new Uint32Array(await this.ctx.read(pass.ids, 0, (next !== undefined ? 2 : pass.rows) * k * 4));
      readbackMs += performance.now() - t0;
      if (next !== undefined) this.prefetch(next, ids.subarray(k, 2 * k), pass.signal);
      const chosenBy = (r: number) => ids.subarray(r * k, (r + 1) * k);
      const chosen = active.length === pass.rows ? ids.subarray(0, pass.rows * k) : Uint32Array.from(active.flatMap((r) => [...chosenBy(r)]));
      // Decode rows add their experts into h: a second pass would add the experts it keeps again, so rows that need
      // more experts than there are slots run one at a time (a row's topk always fit).
      const rows = experts.rows;
      if (rows && new Set(chosen).size > this.slots) {
        for (const r of active) await this.runLayer(experts.layer, chosenBy(r), () => this.ctx.run(rows[r], pass.label), pass.signal);
      } else {
        await this.runLayer(experts.layer, chosen, () => this.ctx.run(experts.dispatches, pass.label), pass.signal);
      }
    }
    this.countTokens(active.length, readbackMs);
  }

  /**
   * Runs a MoE layer's routed experts for the chosen `ids` ([tokens, topk] u32, as moe_route wrote them):
   * makes them resident and calls `run` (which submits the layer's expert dispatches). When the distinct
   * experts outnumber the slots (a prefill chunk), it runs in passes: each makes a set resident, and the
   * kernels skip every pair whose expert no slot holds; each pair is computed in exactly one pass with the
   * same arithmetic as when all experts are resident, so the layer's output is the same bit for bit. Layers run
   * one at a time (a batch's step and a prompt's prefill share the cache): `run` submits before anyone evicts.
   */
  private runLayer(layer: number, ids: Uint32Array, run: () => void, signal?: AbortSignal): Promise<void> {
    const done = this.turn.then(() => this.runLayerNow(layer, ids, run, signal));
    this.turn = done.then(
      () => {},
      () => {},
    );
    return done;
  }

  private async runLayerNow(layer: number, ids: Uint32Array, run: () => void, signal?: AbortSignal): Promise<void> {
    const L = this.layers[layer];
    const uses = new Map<number, number>();
    for (let p = 0; p < ids.length; p++) uses.set(ids[p], (uses.get(ids[p]) ?? 0) + 1);
    const now = L.now++;
    for (const [e, n] of uses) {
      L.policy.touch(e, now, n);
      this.usage[layer][e] += n;
    }
    this.trace?.push({ layer, experts: [...uses.keys()], weights: [...uses.values()] });
    let pending = [...uses.keys()];
    for (const e of pending) {
      if (L.slotOf[e] >= 0) this.counters.hits++;
      else this.counters.misses++;
    }
    let passes = 0;
    while (pending.length > 0) {
      throwIfAborted(signal);
      const resident = pending.filter((e) => L.slotOf[e] >= 0);
      // The most used missing experts first; each pass loads as many as the slots not needed by this pass allow.
      const missing = pending.filter((e) => L.slotOf[e] < 0).sort((a, b) => uses.get(b)! - uses.get(a)! || a - b);
      const load = missing.slice(0, this.slots - resident.length);
      if (load.length > 0) await this.load(L, load, new Set([...resident, ...load]), signal);
      run();
      passes++;
      const done = new Set([...resident, ...load]);
      pending = pending.filter((e) => !done.has(e));
    }
    if (passes > 1) this.counters.extraPasses++;
  }

  /**
   * Starts reading experts that `layer` will probably choose (decode: the next layer's router applied to
   * the current hidden state), so their reads overlap the GPU work before that layer's routing. Only the
   * reads: uploading would evict experts that may still be chosen.
   */
  private prefetch(layer: number, experts: Iterable<number>, signal?: AbortSignal): void {
    const L = this.layers[layer];
    if (!L) return;
    L.ahead.clear();
    for (const e of experts) {
      if (L.slotOf[e] >= 0 || L.ahead.has(e)) continue;
      const read = this.read(layer, e, signal);
      read.catch(() => {}); // an unused or aborted read must not surface as an unhandled rejection
      L.ahead.set(e, read);
      this.counters.prefetched++;
    }
  }

  private read(layer: number, expert: number, signal?: AbortSignal): Promise<[Uint8Array, Uint8Array]> {
    const source = this.model.experts!.source;
    return Promise.all([source.read(layer, 'gate_up', expert, signal), source.read(layer, 'down', expert, signal)]);
  }

  /** Reads `experts` (all at once), then puts each in a free slot or one whose expert is not in `keep`. */
  private async load(L: LayerCache, experts: number[], keep: Set<number>, signal?: AbortSignal): Promise<void> {
    const t0 = performance.now();
    const reads = experts.map((e) => {
      const ahead = L.ahead.get(e);
      if (ahead) {
        L.ahead.delete(e);
        this.counters.prefetchUsed++;
        return ahead;
      }
      return this.read(L.layer, e, signal);
    });
    const blocks = await Promise.all(reads);
    throwIfAborted(signal);
    experts.forEach((e, i) => {
      let slot = L.expertIn.indexOf(-1);
      if (slot < 0) {
        const candidates = [...L.expertIn].filter((r) => !keep.has(r));
        const victim = L.policy.victim(candidates, L.now);
        slot = L.slotOf[victim];
        L.slotOf[victim] = -1;
        L.policy.evicted(victim);
        this.ctx.write(L.w.slots, victim * 4, Uint32Array.of(NOT_RESIDENT));
      }
      this.upload(L.w.expertsGateUp, slot, blocks[i][0], 'gate_up');
      this.upload(L.w.expertsDown, slot, blocks[i][1], 'down');
      L.expertIn[slot] = e;
      L.slotOf[e] = slot;
      this.ctx.write(L.w.slots, e * 4, Uint32Array.of(slot));
    });
    this.counters.stallMs += performance.now() - t0;
  }

  /** One expert's item into slot `slot`: a plain write into the part that holds it. */
  private upload(t: GpuTensor, slot: number, bytes: Uint8Array, tensor: ExpertTensor): void {
    const part = t.parts.find((p) => slot >= p.first && slot < p.first + p.count);
    const itemBytes = this.model.experts!.source.itemBytes(tensor);
    if (!part) throw new InternalError(`internal: slot ${slot} is in no part of ${t.name}`);
    this.ctx.write(part.buffer, (slot - part.first) * itemBytes, bytes);
  }
}

function zeroCounters(): Omit<ExpertStats, 'hitRate' | 'bytesStreamed' | 'stallMsPerToken' | 'usage'> {
  return { hits: 0, misses: 0, stallMs: 0, readbackMs: 0, tokens: 0, prefetched: 0, prefetchUsed: 0, extraPasses: 0 };
}
