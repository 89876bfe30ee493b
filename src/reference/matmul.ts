/** Reference linear layers (nn.Linear y = x @ Wᵀ, SwiGLU, MoE experts per pair); f64 accumulation. */
export type MatmulEpilogue = 'store' | 'add' | 'swiglu';

export interface MatmulRefOptions {
  /** 'add': the values Y held before ([rows, N]). */
  y0?: Float32Array;
  /** Dense: one factor per token. Grouped: [T, topk + 1], pair p = t * topk + j uses [t, j]. */
  scales?: Float32Array;
}

function dot(x: Float32Array, xo: number, w: Float32Array, wo: number, k: number): number {
  let s = 0;
  for (let i = 0; i < k; i++) s += x[xo + i] * w[wo + i];
  return s;
}

const silu = (g: number) => g / (1 + Math.exp(-g));

/** One output row: `gate`/`up` are the offsets of the W rows (up < 0 when not swiglu). */
function outputRow(
  x: Float32Array,
  xo: number,
  w: Float32Array,
  rowsOf: (n: number) => [number, number],
  n: number,
  k: number,
  epilogue: MatmulEpilogue,
): Float32Array {
  const out = new Float32Array(n);
  for (let c = 0; c < n; c++) {
    const [g, u] = rowsOf(c);
    const acc = dot(x, xo, w, g, k);
    out[c] = epilogue === 'swiglu' ? silu(acc) * dot(x, xo, w, u, k) : acc;
  }
  return out;
}

/** Dense: x [T, K] contiguous; w [N, K] (store/add) or [I, 2, K] (swiglu: row 0 gate, row 1 up). Returns Y [T, N]. */
export function matmulDense(
  x: Float32Array,
  w: Float32Array,
  shape: number[],
  tokens: number,
  epilogue: MatmulEpilogue,
  options: MatmulRefOptions = {},
): Float32Array {
  const k = shape[shape.length - 1];
  const n = shape[0];
  const rowsOf = (c: number): [number, number] => (epilogue === 'swiglu' ? [2 * c * k, (2 * c + 1) * k] : [c * k, -1]);
  const y = new Float32Array(tokens * n);
  for (let t = 0; t < tokens; t++) {
    const row = outputRow(x, t * k, w, rowsOf, n, k, epilogue);
    const s = options.scales ? options.scales[t] : 1;
    for (let c = 0; c < n; c++) y[t * n + c] = (epilogue === 'add' ? options.y0![t * n + c] : 0) + row[c] * s;
  }
  return y;
}

/**
 * Grouped experts: w [E, N, K] (store/add) or [E, 2I, K] (swiglu: gate rows 0..I-1, up rows I..2I-1), indexed by
 * expert id. ids [T * topk]: pair p = t * topk + j uses expert ids[p] and X row t ('token') or p ('pair').
 * Returns Y [T * topk, N].
 */
export function matmulGrouped(
  x: Float32Array,
  w: Float32Array,
  shape: number[],
  ids: ArrayLike<number>,
  topk: number,
  input: 'token' | 'pair',
  epilogue: MatmulEpilogue,
  options: MatmulRefOptions = {},
): Float32Array {
  const k = shape[2];
  const n = epilogue === 'swiglu' ? shape[1] / 2 : shape[1];
  const y = new Float32Array(ids.length * n);
  for (let p = 0; p < ids.length; p++) {
    const base = ids[p] * shape[1] * k;
    const rowsOf = (c: number): [number, number] => [base + c * k, base + (n + c) * k];
    const xr = input === 'token' ? Math.floor(p / topk) : p;
    const row = outputRow(x, xr * k, w, rowsOf, n, k, epilogue);
    const s = options.scales ? options.scales[Math.floor(p / topk) * (topk + 1) + (p % topk)] : 1;
    for (let c = 0; c < n; c++) y[p * n + c] = (epilogue === 'add' ? options.y0![p * n + c] : 0) + row[c] * s;
  }
  return y;
}
