/**
 * A full model's decode speed from a measurement of some of its layers, over S pipeline stages. At batch 1 a token
 * goes through the stages one after another, so stages add memory, not speed: one token costs every layer, the LM
 * head, and the hops between stages, each frame passing through stage 0 (stage 0 sends stage i its input rows and
 * stage i answers; the last answers with the sampled id): 2·(S − 1) hops. With S sequences in flight the stages work
 * on different ones at once, up to S times the aggregate.
 */
export function projectDecode(o: { layers: number; layerMs: number; headMs: number; hopMs: number; stages: number }) {
  const hops = 2 * (o.stages - 1);
  const tokenMs = o.layers * o.layerMs + o.headMs + hops * o.hopMs;
  return { stages: o.stages, hops, token_ms: tokenMs, tokens_per_s: 1000 / tokenMs, aggregate_tokens_per_s: (1000 * o.stages) / tokenMs };
}
