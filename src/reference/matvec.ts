import type { Epilogue } from '../kernels/matvec.ts';
import { rmsNorm } from './rms_norm.ts';

/**
 * The matvec op on plain arrays, f64 accumulation. `w` is the logical (unpadded) row-major tensor of
 * `shape`: dense [N, K] or [I, 2, K] (swiglu), experts [E, N, K] or [E, 2I, K] (swiglu) indexed by slot.
 * Returns a copy of `y` with the outputs written (or added). With `norm`, x[xOffset ..][0, K) is RMS-normed first.
 */
export interface MatvecReferenceArgs {
  w: Float32Array;
  shape: number[];
  x: Float32Array;
  xOffset?: number;
  xStride?: number;
  y: Float32Array;
  yOffset?: number;
  yStride?: number;
  epilogue: Epilogue;
  scales?: { values: Float32Array; index: number };
  experts?: { ids: ArrayLike<number>; idsOffset?: number; slots: ArrayLike<number>; topk: number; mode: 'each' | 'sum' };
  norm?: { weight: Float32Array; eps: number };
}

const silu = (v: number) => v / (1 + Math.exp(-v));

export function matvec(args: MatvecReferenceArgs): Float32Array {
  const { w, shape, epilogue, scales, experts, norm } = args;
  const K = shape[shape.length - 1];
  const y = args.y.slice();
  const xOffset = args.xOffset ?? 0;
  const x = Float32Array.from(args.x);
  if (norm) x.set(rmsNorm(args.x.slice(xOffset, xOffset + K), norm.weight, norm.eps), xOffset);
  const yOffset = args.yOffset ?? 0;
  const swiglu = epilogue === 'swiglu';
  // Element offset of (item, row) in w, and the distance from a gate row to its up row.
  const rowsPerItem = shape.length === 3 ? shape[1] : 1;
  const N = experts ? (swiglu ? shape[1] / 2 : shape[1]) : shape[0];
  const up = experts ? N * K : K;
  const dot = (base: number, xb: number) => {
    let s = 0;
    for (let c = 0; c < K; c++) s += w[base + c] * x[xb + c];
    return s;
  };
  const rowValue = (base: number, xb: number) => (swiglu ? silu(dot(base, xb)) * dot(base + up, xb) : dot(base, xb));
  const emit = (i: number, v: number) => {
    y[i] = epilogue === 'add' ? y[i] + v : v;
  };

  if (!experts) {
    const scale = scales ? scales.values[scales.index] : 1;
    for (let r = 0; r < N; r++) emit(yOffset + r, rowValue(r * rowsPerItem * K, xOffset) * scale);
    return y;
  }
  const slotOf = (j: number) => experts.slots[experts.ids[(experts.idsOffset ?? 0) + j]];
  const scaleOf = (j: number) => (scales ? scales.values[scales.index + j] : 1);
  if (experts.mode === 'each') {
    const yStride = args.yStride ?? N;
    for (let j = 0; j < experts.topk; j++) {
      const item = slotOf(j) * rowsPerItem * K;
      for (let r = 0; r < N; r++) emit(yOffset + j * yStride + r, rowValue(item + r * K, xOffset) * scaleOf(j));
    }
    return y;
  }
  const xStride = args.xStride ?? K;
  for (let r = 0; r < N; r++) {
    let s = 0;
    for (let j = 0; j < experts.topk; j++) s += rowValue(slotOf(j) * rowsPerItem * K + r * K, xOffset + j * xStride) * scaleOf(j);
    emit(yOffset + r, s);
  }
  return y;
}
