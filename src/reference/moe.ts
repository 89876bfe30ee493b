/** MoE routing oracles (Qwen3_5MoeSparseMoeBlock), f64 arithmetic. */

export interface RouteResult {
  /** [tokens, topk] expert ids by descending p, ties → lower id. */
  ids: Uint32Array;
  /** [tokens, topk + 1]: renormalised weights, then sigmoid of the shared-expert gate logit. */
  gates: Float32Array;
}

/** logits: [tokens, experts + 1] (experts' logits, then the shared gate logit). Softmax over all experts, top-k, renormalise. */
export function moeRoute(logits: Float32Array, tokens: number, experts: number, topk: number): RouteResult {
  const ids = new Uint32Array(tokens * topk);
  const gates = new Float32Array(tokens * (topk + 1));
  for (let t = 0; t < tokens; t++) {
    const row = logits.subarray(t * (experts + 1), (t + 1) * (experts + 1));
    let max = -Infinity;
    for (let e = 0; e < experts; e++) max = Math.max(max, row[e]);
    const p = new Float64Array(experts);
    let sum = 0;
    for (let e = 0; e < experts; e++) sum += p[e] = Math.exp(row[e] - max);
    for (let e = 0; e < experts; e++) p[e] /= sum;
    const order = Array.from({ length: experts }, (_, e) => e).sort((a, b) => p[b] - p[a] || a - b);
    let top = 0;
    for (let j = 0; j < topk; j++) top += p[order[j]];
    for (let j = 0; j < topk; j++) {
      ids[t * topk + j] = order[j];
      gates[t * (topk + 1) + j] = p[order[j]] / top;
    }
    gates[t * (topk + 1) + topk] = 1 / (1 + Math.exp(-row[experts]));
  }
  return { ids, gates };
}

export interface GroupResult {
  /** Pair indices p = t*topk + j, grouped by ascending expert, ascending p within an expert. */
  order: Uint32Array;
  /** Tiles [expert, start, count, 0]: each expert's run of `order` cut into tiles of ≤ tileTokens, experts ascending. */
  tiles: Uint32Array;
}

/** The canonical grouping of pairs by expert (the GPU may order pairs differently within an expert). */
export function moeGroup(ids: Uint32Array, experts: number, tileTokens: number): GroupResult {
  const byExpert: number[][] = Array.from({ length: experts }, () => []);
  ids.forEach((e, p) => byExpert[e].push(p));
  const order = new Uint32Array(byExpert.flat());
  const tiles: number[] = [];
  let start = 0;
  byExpert.forEach((pairs, e) => {
    for (let i = 0; i < pairs.length; i += tileTokens) tiles.push(e, start + i, Math.min(tileTokens, pairs.length - i), 0);
    start += pairs.length;
  });
  return { order, tiles: new Uint32Array(tiles) };
}

/** h[t*hidden + c] + Σ_{j<topk} out[(t*topk + j)*hidden + c]. */
export function moeCombine(h: Float32Array, out: Float32Array, tokens: number, hidden: number, topk: number): Float32Array {
  const y = new Float32Array(tokens * hidden);
  for (let t = 0; t < tokens; t++) {
    for (let c = 0; c < hidden; c++) {
      let s = 0;
      for (let j = 0; j < topk; j++) s += out[(t * topk + j) * hidden + c];
      y[t * hidden + c] = h[t * hidden + c] + s;
    }
  }
  return y;
}
