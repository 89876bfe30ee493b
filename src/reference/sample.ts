/**
 * Sampling math in plain TypeScript (f64): the oracle for the sample_* kernels and GpuSampler.
 * Order (as HF's logits processors): penalties on the raw logits → temperature → top-k → top-p (on the
 * distribution renormalised after top-k) → min-p (relative to the largest probability) → draw from the
 * renormalised survivors. Ties at a threshold are kept. Logprobs are log_softmax of the penalised,
 * temperature-scaled logits before any filter (T = 0 scales by 1).
 */

export interface PenaltyOptions {
  /** HF RepetitionPenaltyLogitsProcessor over prompt + generated ids; 1 = off. */
  repetitionPenalty?: number;
  /** OpenAI presence penalty over generated ids; 0 = off. */
  presencePenalty?: number;
  /** OpenAI frequency penalty (× count) over generated ids; 0 = off. */
  frequencyPenalty?: number;
}

export interface FilterOptions {
  /** 0 = greedy (argmax, lowest id on ties). */
  temperature?: number;
  /** 0 or ≥ the candidate count = off. */
  topK?: number;
  /** 1 = off. */
  topP?: number;
  /** 0 = off. */
  minP?: number;
}

/**
 * Logits of ids < n after the penalties: repetition first (l > 0 ? l / r : l · r for ids in prompt or
 * generated), then l -= presence · [count > 0] + frequency · count over the generated ids (vLLM's order).
 */
export function penalize(logits: ArrayLike<number>, n: number, o: PenaltyOptions, prompt: ArrayLike<number>, generated: ArrayLike<number>): Float64Array {
  const r = o.repetitionPenalty ?? 1;
  const presence = o.presencePenalty ?? 0;
  const frequency = o.frequencyPenalty ?? 0;
  const seen = new Set<number>(Array.from(prompt));
  const count = new Map<number, number>();
  for (const id of Array.from(generated)) {
    seen.add(id);
    count.set(id, (count.get(id) ?? 0) + 1);
  }
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    let l = logits[i];
    if (r !== 1 && seen.has(i)) l = l > 0 ? l / r : l * r;
    const c = count.get(i) ?? 0;
    if (c > 0) l -= presence + frequency * c;
    out[i] = l;
  }
  return out;
}

/** z = l / T; T = 0 (greedy) leaves the logits as they are. */
export function scaleLogits(l: ArrayLike<number>, temperature: number): Float64Array {
  return Float64Array.from(l as ArrayLike<number>, (v) => (temperature > 0 ? v / temperature : v));
}

export function logSoftmax(z: ArrayLike<number>): Float64Array {
  let m = -Infinity;
  for (let i = 0; i < z.length; i++) m = Math.max(m, z[i]);
  let s = 0;
  for (let i = 0; i < z.length; i++) s += Math.exp(z[i] - m);
  const shift = m + Math.log(s);
  return Float64Array.from(z as ArrayLike<number>, (v) => v - shift);
}

/** Lowest index of the largest value. */
export function argmaxOf(z: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < z.length; i++) if (z[i] > z[best]) best = i;
  return best;
}

/** Indices sorted by (z descending, index ascending). */
function ranked(z: ArrayLike<number>): number[] {
  return Array.from({ length: z.length }, (_, i) => i).sort((a, b) => z[b] - z[a] || a - b);
}

/**
 * The thresholds on z that the filters imply (undefined when a filter is off): top-k keeps z ≥ kth, i.e. every
 * id with fewer than k ids strictly above it; top-p keeps every id whose strictly-greater survivors of top-k hold
 * less than topP of their mass; min-p keeps exp(z - max) ≥ minP.
 */
export function thresholds(z: ArrayLike<number>, o: FilterOptions): { topK?: number; topP?: number } {
  const order = ranked(z);
  const n = z.length;
  const m = z[order[0]];
  const out: { topK?: number; topP?: number } = {};
  const k = o.topK ?? 0;
  let kept = n;
  if (k > 0 && k < n) {
    out.topK = z[order[k - 1]];
    while (kept > 0 && z[order[kept - 1]] < out.topK) kept--;
  }
  const p = o.topP ?? 1;
  if (p < 1) {
    let total = 0;
    for (let r = 0; r < kept; r++) total += Math.exp(z[order[r]] - m);
    let above = 0;
    let r = 0;
    for (;;) {
      const v = z[order[r]];
      out.topP = v;
      let group = 0;
      for (; r < kept && z[order[r]] === v; r++) group += Math.exp(v - m);
      above += group;
      if (above >= p * total || r >= kept) break;
    }
  }
  return out;
}

/** 1 for the ids that survive top-k, top-p and min-p (greedy: only the argmax). */
export function keepMask(z: ArrayLike<number>, o: FilterOptions): Uint8Array {
  const keep = new Uint8Array(z.length);
  if ((o.temperature ?? 1) === 0) {
    keep[argmaxOf(z)] = 1;
    return keep;
  }
  const t = thresholds(z, o);
  const floor = Math.max(t.topK ?? -Infinity, t.topP ?? -Infinity);
  let m = -Infinity;
  for (let i = 0; i < z.length; i++) m = Math.max(m, z[i]);
  const minP = o.minP ?? 0;
  for (let i = 0; i < z.length; i++) keep[i] = z[i] >= floor && Math.exp(z[i] - m) >= minP ? 1 : 0;
  return keep;
}

/** The distribution sampled from: softmax(z) restricted to the kept ids and renormalised. */
export function samplingProbs(z: ArrayLike<number>, o: FilterOptions): Float64Array {
  const keep = keepMask(z, o);
  let m = -Infinity;
  for (let i = 0; i < z.length; i++) m = Math.max(m, z[i]);
  const p = Float64Array.from(z as ArrayLike<number>, (v, i) => (keep[i] ? Math.exp(v - m) : 0));
  const s = p.reduce((a, b) => a + b, 0);
  return p.map((v) => v / s);
}

/** lowbias32 (Wellons): the mixer of the counter-based RNG. */
export function sampleHash(x: number): number {
  let h = x >>> 0;
  h ^= h >>> 16;
  h = Math.imul(h, 0x7feb352d) >>> 0;
  h ^= h >>> 15;
  h = Math.imul(h, 0x846ca68b) >>> 0;
  h ^= h >>> 16;
  return h >>> 0;
}

/** The uniform in [0, 1) of step `step` of a request with this seed (24 bits, exact in f32). */
export function sampleUniform(seed: number, step: number): number {
  const h = sampleHash((sampleHash((seed ^ 0x5851f42d) >>> 0) + Math.imul(step >>> 0, 0x9e3779b9)) >>> 0);
  return (h >>> 8) / 16777216;
}

/** Inverse CDF in index order: the first kept id whose running mass passes u · total (the GPU's rule). */
export function pickByUniform(z: ArrayLike<number>, keep: ArrayLike<number>, u: number): number {
  let m = -Infinity;
  for (let i = 0; i < z.length; i++) m = Math.max(m, z[i]);
  let total = 0;
  for (let i = 0; i < z.length; i++) if (keep[i]) total += Math.exp(z[i] - m);
  const r = u * total;
  let c = 0;
  let last = -1;
  for (let i = 0; i < z.length; i++) {
    if (!keep[i]) continue;
    const w = Math.exp(z[i] - m);
    c += w;
    if (w > 0) last = i;
    if (w > 0 && c > r) return i;
  }
  return last;
}

export interface ReferenceSample {
  id: number;
  logprob: number;
  top: { id: number; logprob: number }[];
}

/**
 * One sampling step: `logits` rows ≥ n (padding) are ignored; `generated` are the ids sampled or forced so
 * far in the request; `step` is the RNG counter (the number of ids sampled before this one).
 */
export function sampleStep(
  logits: ArrayLike<number>,
  n: number,
  o: PenaltyOptions & FilterOptions & { seed?: number; logprobs?: number },
  prompt: ArrayLike<number>,
  generated: ArrayLike<number>,
  step: number,
): ReferenceSample {
  const z = scaleLogits(penalize(logits, n, o, prompt, generated), o.temperature ?? 1);
  const keep = keepMask(z, o);
  const id = (o.temperature ?? 1) === 0 ? argmaxOf(z) : pickByUniform(z, keep, sampleUniform(o.seed ?? 0, step));
  const lp = logSoftmax(z);
  const top = ranked(z)
    .slice(0, o.logprobs ?? 0)
    .map((i) => ({ id: i, logprob: lp[i] }));
  return { id, logprob: lp[id], top };
}

/** Counts after the picks of `dropped` are taken back (sample_uncount): one each, in order, never below 0. */
export function uncount(counts: ArrayLike<number>, dropped: readonly number[]): Uint32Array {
  const out = Uint32Array.from(counts);
  for (const id of dropped) if (out[id] > 0) out[id]--;
  return out;
}
