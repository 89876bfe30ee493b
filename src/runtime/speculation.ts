import type { Dispatch, GpuContext } from '../gpu/context.ts';
import { SessionError } from '../errors.ts';
import { StepParams, packParams } from '../gpu/kernel.ts';
import { type Activations, createActivations } from '../model/activations.ts';
import { lmHead } from '../model/layers.ts';
import { type MtpBuffers, createMtpBuffers, destroyMtpBuffers, mtpForward } from '../model/mtp.ts';
import { PlanCache } from './plan_cache.ts';
import { GpuSampler, type SampledToken } from './sampler.ts';
import type { SpeculativeDecoder } from './sequence.ts';
import type { Session } from './session.ts';

/**
 * Speculative decoding (spec §2.7): a drafter proposes k tokens after the pending one, the model verifies the k + 1
 * in one forward pass (Session.verify: the arithmetic of k + 1 decode steps, the weights read once), and the rows up
 * to the first draft that differs from the target picked before it are kept. The targets are picked exactly as a step
 * by step generation picks them (the same logits, the same RNG step), so the output is that generation's, token for
 * token, greedy or seeded; only how many tokens one pass yields depends on the drafts.
 */
export interface Drafter {
  /**
   * Host writes and dispatches that leave `k` drafts in act.token rows [1, k], run in the verification's submission;
   * `pending` is the token in row 0.
   */
  draft(pending: number, k: number): Promise<Dispatch[]>;
  /** After a prefill chunk of `ids` [first, first + rows) (the last one when the prompt ends there). */
  prefilled(ids: ArrayLike<number>, first: number, rows: number, last: boolean): Promise<void>;
  /** After a verification: `kept` rows from `position`, their targets `targets` (the last is the new pending token). */
  kept(position: number, targets: number[]): void;
  destroy(): void;
}

/**
 * Ids a drafter drafts from by default: [0, 32768), as EAGLE-3 and FR-Spec draft over a frequent subset of the
 * vocabulary. A draft costs the MTP layer and an LM head over its ids, and over all 248,320 the head is most of it (at
 * 0.8B three drafts would read about as many bytes as a decode step). Qwen's byte-level BPE numbers its tokens in merge
 * order, the most frequent pairs first, so the leading ids stand in for a frequency ranking. Drafts are guesses that
 * the verification checks: the subset changes how many are accepted, never the output.
 */
export const DEFAULT_DRAFT_VOCAB = 32_768;

/** Drafts of the model's own MTP block: one call over the rows kept since the last draft, then one per further draft. */
export class MtpDrafter implements Drafter {
  /** The drafter's working buffers (act.logits: the last draft call's logits). */
  readonly act: Activations;
  private readonly buffers: MtpBuffers;
  /** The position of draft call j ≥ 2 (a decode row of its own), one buffer per call so that one submission holds all. */
  private readonly positions: GPUBuffer[];
  private readonly sampler: GpuSampler;
  private readonly plans: PlanCache<Dispatch[]>;
  /** Rows run by the model whose MTP row waits for the token after them: their hidden rows, position and known tokens. */
  private waiting?: { hidden: { buffer: GPUBuffer; row: number }; position: number; tokens: number[] };

  /** Drafts are argmaxes over ids [0, vocab): the LM head runs over those rows only. */
  readonly vocab: number;

  constructor(
    readonly session: Session,
    maxDrafts: number,
    /** Ids to draft from (DEFAULT_DRAFT_VOCAB; 0: every id), at most the tokenizer's. */
    vocab = DEFAULT_DRAFT_VOCAB,
  ) {
    const { ctx, model } = session;
    if (!Number.isInteger(vocab) || vocab < 0) throw new SessionError(`a draft vocabulary of ${vocab} ids (0: every id)`);
    this.vocab = vocab === 0 ? model.tokenizerSize : Math.min(vocab, model.tokenizerSize);
    this.act = createActivations(ctx, model, session.verifyRows, session.capacity);
    this.buffers = createMtpBuffers(ctx, model, session.activations.maxTokens, session.capacity);
    this.positions = Array.from({ length: maxDrafts + 1 }, (_, j) => ctx.storage(`mtp draft ${j} position`, 4));
    this.sampler = GpuSampler.create(ctx, { vocabSize: this.vocab, tokenizerSize: this.vocab });
    this.sampler.begin({ temperature: 0 }, []);
    this.plans = new PlanCache(ctx, 16, (d) => d);
  }

  private get ctx(): GpuContext {
    return this.session.ctx;
  }

  async prefilled(ids: ArrayLike<number>, first: number, rows: number, last: boolean): Promise<void> {
    const { ctx, session } = this;
    const main = session.activations;
    const H = session.model.config.hiddenSize;
    const position = session.position - rows;
    if (last) {
      // The last row's token comes with the first draft; keep its hidden row, which the pass below overwrites.
      ctx.copy([{ from: main.x, fromOffset: (rows - 1) * H * 4, to: this.buffers.hidden, size: H * 4 }], 'mtp hidden');
      this.waiting = { hidden: { buffer: this.buffers.hidden, row: 0 }, position: position + rows - 1, tokens: [] };
    }
    const known = last ? rows - 1 : rows;
    if (known === 0) return;
    // Row p of the block reads token p + 1: the chunk's ids shifted by one, in the prompt buffer the chunk has used.
    ctx.write(
      main.ids,
      0,
      Uint32Array.from({ length: known }, (_, r) => ids[first + r + 1]),
    );
    const plan = await this.plans.plan(`prompt ${known}`, () =>
      mtpForward(ctx, session.model, this.buffers, main, { tokens: known, input: 'ids' }, { hidden: { buffer: main.x, row: 0 } }),
    );
    ctx.run(plan, 'mtp prompt');
  }

  kept(position: number, targets: number[]): void {
    this.waiting = { hidden: { buffer: this.session.activations.x, row: 0 }, position, tokens: targets.slice(0, -1) };
  }

  async draft(pending: number, k: number): Promise<Dispatch[]> {
    const waiting = this.waiting;
    if (!waiting) throw new SessionError('a draft before any prefill');
    const { ctx, act } = this;
    const tokens = [...waiting.tokens, pending];
    const rows = tokens.length;
    ctx.write(act.ids, 0, Uint32Array.from(tokens));
    ctx.write(act.step, 0, packParams(StepParams, { pos: waiting.position }));
    ctx.write(act.positions, 0, Uint32Array.of(waiting.position));
    for (let j = 2; j <= k; j++) ctx.write(this.positions[j], 0, Uint32Array.of(waiting.position + rows + j - 2));
    const dispatches: Dispatch[] = [...(await this.catchUp(rows, waiting.hidden))];
    for (let j = 2; j <= k; j++) dispatches.push(...(await this.next(j, j === 2 ? rows - 1 : 0)));
    return dispatches;
  }

  /** The block over the rows waiting (their tokens now known), the draft of the row after the last into act.token[1]. */
  private catchUp(rows: number, hidden: { buffer: GPUBuffer; row: number }): Promise<Dispatch[]> {
    const key = `catch up ${rows} ${hidden.buffer.label} ${hidden.row}`;
    return this.plans.plan(key, async () => [
      ...(await mtpForward(this.ctx, this.session.model, this.buffers, this.act, { tokens: rows, input: 'ids' }, { hidden })),
      ...(await this.pick(rows - 1, 1)),
    ]);
  }

  /** Draft j ≥ 2: the block on draft j − 1 and its own output row `row` of the call before, into act.token[j]. */
  private next(j: number, row: number): Promise<Dispatch[]> {
    return this.plans.plan(`draft ${j} ${row}`, async () => {
      const main = this.session.activations;
      const act = { ...this.act, positions: this.positions[j] };
      return [
        ...(await mtpForward(
          this.ctx,
          this.session.model,
          this.buffers,
          act,
          { tokens: 1, input: 'ids' },
          {
            ids: { buffer: main.token, offset: j - 1 },
            hidden: { buffer: this.act.x, row },
          },
        )),
        ...(await this.pick(0, j)),
      ];
    });
  }

  /** The LM head over the draft vocabulary on the block's output row `row`, argmax into the main act.token[out]. */
  private async pick(row: number, out: number): Promise<Dispatch[]> {
    const act = this.act;
    return [
      ...(await lmHead(this.ctx, this.session.model, act, act.logits, { first: row, count: 1, vocab: this.vocab })),
      ...(await this.sampler.dispatches(act.logits, this.session.activations.token, { out })),
    ];
  }

  destroy(): void {
    this.plans.clear();
    this.sampler.destroy();
    destroyMtpBuffers(this.ctx, this.buffers);
    this.ctx.free(...this.act.buffers, ...this.positions);
  }
}

/** Drafts per pass by default, and at most: no two rows of a pass may share a conv ring slot (Session.keepVerified). */
export const DEFAULT_DRAFT_TOKENS = 2;
export const MAX_DRAFT_TOKENS = 3;

/** `session` (created with verifyRows ≥ drafts + 1) speculating with `drafter` (default: its model's MTP block). */
export function withSpeculation(session: Session, drafts: number, drafter: Drafter = new MtpDrafter(session, drafts)): Session {
  session.speculator = new Speculator(session, drafter, drafts);
  return session;
}

/** How speculation went over a generation: passes, drafts proposed and accepted. */
export interface SpeculationStats {
  passes: number;
  drafted: number;
  accepted: number;
}

/**
 * The targets of the rows a verification keeps: row 0's, then each next row's while the draft in it (drafts[i], the
 * token of row i + 1) equals the target picked before it.
 */
export function keptTargets(drafts: ArrayLike<number>, targets: ArrayLike<number>): number[] {
  let accepted = 0;
  while (accepted < drafts.length && drafts[accepted] === targets[accepted]) accepted++;
  return Array.from({ length: accepted + 1 }, (_, i) => targets[i]);
}

/**
 * A verification of `rows` rows as it comes back (Session.verify / stageVerify): the target picked on every row, and
 * the kept ones as the sampler reports them. The drafts are rows 1.. of the readback unless given (a pipeline's last
 * stage has them from stage 0).
 */
export function readVerification(
  sampler: GpuSampler,
  bytes: ArrayBuffer,
  rows: number,
  drafts?: ArrayLike<number>,
): { picked: number[]; kept: SampledToken[] } {
  const words = new Uint32Array(bytes, 0, 2 * rows);
  const picked = Array.from(words.subarray(rows));
  const ids = keptTargets(drafts ?? words.subarray(1, rows), picked);
  return { picked, kept: sampledTargets(sampler, ids, bytes, 2 * rows * 4) };
}

/**
 * Target ids as `sampler` reports them: with logprobs, parsed from the picks' result rows (one per row from byte
 * `offset` of `results`, as Session.verify reads them back); without, the ids alone.
 */
export function sampledTargets(sampler: GpuSampler, ids: readonly number[], results: ArrayBuffer | undefined, offset = 0): SampledToken[] {
  if (!sampler.reportsLogprobs) return ids.map((id) => ({ id }));
  if (!results) throw new SessionError('a verification with logprobs came back without its results');
  return ids.map((id, i) => {
    const token = sampler.parse(results, offset + i * GpuSampler.resultStride);
    if (token.id !== id) throw new SessionError(`verified row ${i}: target ${id}, result ${token.id}`);
    return token;
  });
}

/**
 * The last pass until it is settled: its rows, the targets it would keep, how many the generation keeps, and (when
 * this process's sampler picked them) every row's pick, so that the picks of rows not kept can be taken back.
 */
interface LastPass {
  rows: number;
  targets: SampledToken[];
  kept: number;
  picks?: { sampler: GpuSampler; picked: number[] };
}

/**
 * What a speculator keeps between passes (Speculator here, PipelineSpeculator across stages): the figures, and the
 * last pass until it is settled.
 */
export abstract class PassLedger {
  /** The current (or last) generation's figures, and those of every generation so far. */
  readonly stats: SpeculationStats = { passes: 0, drafted: 0, accepted: 0 };
  readonly totals: SpeculationStats = { passes: 0, drafted: 0, accepted: 0 };
  protected last?: LastPass;

  constructor(
    /** Drafts per pass. */
    readonly drafts: number,
  ) {}

  resetStats(): void {
    this.stats.passes = this.stats.drafted = this.stats.accepted = 0;
  }

  /** Keeps only the first `count` rows (and so targets) of the last pass. */
  keep(count: number): void {
    if (!this.last || count < 1 || count > this.last.targets.length) throw new SessionError(`keeping ${count} rows of the last pass`);
    this.last.kept = count;
  }

  /** A pass of `rows` rows whose verification keeps the rows of `targets`: counted, and all kept unless `keep` says fewer. */
  protected record(rows: number, targets: SampledToken[], picks?: LastPass['picks']): SampledToken[] {
    for (const s of [this.stats, this.totals]) {
      s.passes++;
      s.drafted += this.drafts;
      s.accepted += targets.length - 1;
    }
    this.last = { rows, targets, kept: targets.length, picks };
    return targets;
  }

  /** The last pass, to settle (once). */
  protected takeLast(): LastPass | undefined {
    const last = this.last;
    this.last = undefined;
    return last;
  }
}

/**
 * One sequence's speculative decoding: drafts, a verification, and the rows kept. A pass yields the targets of the
 * rows kept: every draft that equals the target picked before it, then the target after the last (the next pending
 * token, not yet run). The generation may keep fewer (a stop, a length, a thinking budget) with `keep`.
 */
export class Speculator extends PassLedger implements SpeculativeDecoder {
  constructor(
    readonly session: Session,
    readonly drafter: Drafter,
    drafts: number,
  ) {
    super(drafts);
    const K = session.model.config.convKernel;
    if (!Number.isInteger(drafts) || drafts < 1 || drafts + 1 > Math.min(session.verifyRows, K))
      throw new SessionError(
        `${drafts} draft tokens: 1 to ${Math.min(session.verifyRows, K) - 1} (a verification of drafts + 1 rows fits the session and the conv kernel of ${K})`,
      );
  }

  /** Starts a request, before its prompt's prefill: the drafter follows every prefill chunk from here. */
  begin(): void {
    this.last = undefined;
    this.resetStats();
    this.session.chunkObserver = (ids, first, rows) => this.drafter.prefilled(ids, first, rows, first + rows === ids.length);
  }

  /** Whether a pass fits the context from here (the rows of the last pass kept). */
  get fits(): boolean {
    return this.session.position + (this.last?.kept ?? 0) + this.drafts + 1 <= this.session.capacity;
  }

  /**
   * A pass from `pending` (the last token picked, its row not run; `draws` tokens picked so far, it included): drafts,
   * verifies, and returns the targets of the rows it would keep (at least one), all kept unless `keep` says fewer
   * before the next pass. Every row's target is picked as step-by-step decoding would pick it after the rows before
   * it: the same RNG step, and the counts the penalties read include the targets before it.
   */
  async pass(sampler: GpuSampler, pending: number, draws: number, signal?: AbortSignal): Promise<SampledToken[]> {
    await this.settle();
    const { session } = this;
    sampler.setDraws(draws);
    const rows = this.drafts + 1;
    session.ctx.write(session.activations.token, 0, Uint32Array.of(pending));
    // The signal reaches into the pass only where it reads experts in (streamed experts).
    const result = await session.verify(sampler, rows, await this.drafter.draft(pending, this.drafts), signal);
    const { picked, kept } = readVerification(sampler, await result.bytes(), rows);
    return this.record(rows, kept, { sampler, picked });
  }

  /**
   * Makes the last pass's kept rows the sequence's: before the next pass, or before the generation goes on without
   * speculation (the pending token is then in act.token[0], as a pick leaves it, and `sampler` draws next what
   * step-by-step decoding would: its `draws`-th pick). The picks of the rows dropped no longer count for penalties.
   */
  async settle(sampler?: GpuSampler, draws?: number): Promise<void> {
    const last = this.takeLast();
    if (!last) return;
    const { session } = this;
    const position = session.position;
    session.keepVerified(last.rows, last.kept);
    const targets = last.targets.slice(0, last.kept).map((t) => t.id);
    this.drafter.kept(position, targets);
    session.ctx.write(session.activations.token, 0, Uint32Array.of(targets[targets.length - 1]));
    if (last.picks) await last.picks.sampler.unpick(last.picks.picked.slice(last.kept));
    if (sampler && draws !== undefined) sampler.setDraws(draws);
  }

  end(): void {
    this.session.chunkObserver = undefined;
  }

  destroy(): void {
    this.drafter.destroy();
  }
}
