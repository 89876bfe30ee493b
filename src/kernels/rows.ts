/**
 * Decode rows (continuous batching): in a decode step each row is the next token of a sequence of its own, at the
 * position `positions[row]`, with its state (conv ring, recurrent state, KV cache) at `row` times the state's
 * stride. A row whose position is SKIPPED_ROW belongs to no sequence this step: the kernels that write state
 * write nothing for it (its activations are computed and never read).
 */
export const SKIPPED_ROW = 0xffffffff;

export const SKIPPED_ROW_WGSL = `const SKIPPED_ROW: u32 = ${SKIPPED_ROW}u;`;

/**
 * Where the tokens of an attention call sit: `step`, the StepParams uniform (consecutive tokens of one sequence from
 * step.pos), or `positions` (rows: each token its own sequence, its cache row t of a [rows, nkv, capacity, D] cache;
 * with `oneSequence`, rows of one sequence at the positions given, in one cache: a verification of drafted tokens).
 */
export type TokenPositions =
  | { step: GPUBuffer; positions?: undefined; oneSequence?: undefined }
  | { positions: GPUBuffer; step?: undefined; oneSequence?: boolean };

export type PositionLayout = 'step' | 'rows' | 'sequence';

export const positionLayout = (p: TokenPositions): PositionLayout => (p.positions ? (p.oneSequence ? 'sequence' : 'rows') : 'step');

/**
 * WGSL `token_pos(t)` and `cache_keys0(t)` (the first key row of token t's cache) for a layout; `nkv` is the WGSL
 * expression of the kv head count. A skipped row's position is SKIPPED_ROW, or 0 with `skippedAtZero` (readers).
 */
export function tokenPositionsWgsl(layout: PositionLayout, nkv: string, skippedAtZero: boolean): string {
  if (layout === 'step') return 'fn token_pos(t: u32) -> u32 { return step.pos + t; }\nfn cache_keys0(t: u32) -> u32 { return 0u; }';
  const pos = skippedAtZero ? 'let p = positions[t]; return select(p, 0u, p == SKIPPED_ROW);' : 'return positions[t];';
  const keys0 = layout === 'rows' ? `t * ${nkv} * params.capacity` : '0u';
  return `${SKIPPED_ROW_WGSL}\nfn token_pos(t: u32) -> u32 { ${pos} }\nfn cache_keys0(t: u32) -> u32 { return ${keys0}; }`;
}
