import { ModelFormatError, throwIfAborted } from '../errors.ts';
import type { WeightSource } from './source.ts';
import type { SourceTensor } from './checkpoint.ts';
import type { GgufTensorInfo } from './gguf_header.ts';
import { DEQUANTIZERS, q4_0ToQ4Row } from './gguf_quants.ts';
import { q4ItemWords, q4RowStride } from '../numeric/q4.ts';
import { ggmlRowBytes } from './gguf_types.ts';
import { SOURCE_BYTES, type SourceDtype } from '../numeric/source_dtype.ts';

/**
 * A Hugging Face tensor as a view of a GGUF tensor: a range of its rows (one expert of a stacked tensor), a
 * row or column permutation (the V-head order) and a value map (norms stored as 1 + w, ssm_a = −exp(A_log)).
 */
export interface TensorView {
  name: string;
  /** Hugging Face shape; its last dimension is the GGUF tensor's ne0. */
  shape: number[];
  info: GgufTensorInfo;
  /** File row of the view's row 0, in the GGUF tensor seen as [rows, ne0]. */
  rowBase: number;
  /** View row r reads file row rowBase + rowOf(r). */
  rowOf?: (row: number) => number;
  /** View column c reads file column colOf[c]. */
  colOf?: Int32Array;
  /** Undoes the converter's value transform. */
  value?: (x: number) => number;
}

const READABLE_TYPES = Object.keys(DEQUANTIZERS);

const RAW: Record<string, SourceDtype> = { F32: 'f32', F16: 'f16', BF16: 'bf16' };

/** A read of the file rows a request needs, and where each file row lies in it. */
interface RowBytes {
  bytes: Uint8Array;
  offsetOf(fileRow: number): number;
}

/** The view as a SourceTensor: readRows reads only the rows asked for (their blocks) and decodes them on the CPU. */
export function ggufSourceTensor(source: WeightSource, file: string, view: TensorView): SourceTensor {
  const { info, shape } = view;
  const cols = shape[shape.length - 1];
  const rows = shape.slice(0, -1).reduce((a, b) => a * b, 1);
  const fileRowBytes = ggmlRowBytes(info.type, info.dims[0]);
  const dequantize = DEQUANTIZERS[info.type.name];
  const raw = view.colOf === undefined && view.value === undefined ? RAW[info.type.name] : undefined;
  const dtype: SourceDtype | undefined = dequantize === undefined ? undefined : (raw ?? 'f32');

  const fileRow = (r: number) => view.rowBase + (view.rowOf ? view.rowOf(r) : r);
  const q4Blocks = info.type.name === 'Q4_0' && view.value === undefined ? wholeBlocks(view.colOf, cols) : undefined;

  async function readFileRows(first: number, count: number, signal?: AbortSignal): Promise<RowBytes> {
    let lo = Infinity;
    let hi = -1;
    for (let r = first; r < first + count; r++) {
      const f = fileRow(r);
      lo = Math.min(lo, f);
      hi = Math.max(hi, f);
    }
    // A permutation inside a small span (V heads, a few gate rows) is one read of the span.
    if (hi - lo + 1 <= 2 * count + 64) {
      const bytes = await source.read(file, info.offset + lo * fileRowBytes, (hi - lo + 1) * fileRowBytes, signal);
      return { bytes, offsetOf: (f) => (f - lo) * fileRowBytes };
    }
    // Otherwise one read per run of consecutive file rows.
    const bytes = new Uint8Array(count * fileRowBytes);
    const at = new Map<number, number>();
    for (let r = first; r < first + count; ) {
      throwIfAborted(signal);
      const start = fileRow(r);
      let n = 1;
      while (r + n < first + count && fileRow(r + n) === start + n) n++;
      const offset = (r - first) * fileRowBytes;
      bytes.set(await source.read(file, info.offset + start * fileRowBytes, n * fileRowBytes, signal), offset);
      for (let i = 0; i < n; i++) at.set(start + i, offset + i * fileRowBytes);
      r += n;
    }
    return { bytes, offsetOf: (f) => at.get(f)! };
  }

  const checkRows = (first: number, count: number) => {
    if (!Number.isInteger(first) || !Number.isInteger(count) || first < 0 || count < 0 || first + count > rows) {
      throw new ModelFormatError(`rows [${first}, ${first + count}) are outside the tensor's ${rows} rows`, file, view.name);
    }
  };

  async function readQ4Rows(first: number, count: number, signal?: AbortSignal): Promise<Uint8Array> {
    checkRows(first, count);
    if (count === 0) return new Uint8Array(0);
    const rowWords = q4ItemWords(q4RowStride(cols));
    const out = new Uint32Array(count * rowWords);
    const { bytes, offsetOf } = await readFileRows(first, count, signal);
    throwIfAborted(signal);
    for (let i = 0; i < count; i++) {
      const at = offsetOf(fileRow(first + i));
      q4_0ToQ4Row(bytes.subarray(at, at + fileRowBytes), cols / 32, out.subarray(i * rowWords, (i + 1) * rowWords), q4Blocks);
    }
    return new Uint8Array(out.buffer);
  }

  return {
    name: view.name,
    shape,
    dtype,
    fileDtype: info.type.name,
    readableTypes: READABLE_TYPES,
    file,
    bytes: rows * fileRowBytes,
    readQ4Rows: q4Blocks === undefined ? undefined : readQ4Rows,
    async readRows(first, count, signal) {
      checkRows(first, count);
      if (dtype === undefined) throw new ModelFormatError(`ggml type ${info.type.name} cannot be decoded (${READABLE_TYPES.join(', ')})`, file, view.name);
      if (count === 0) return new Uint8Array(0);
      const identity = view.rowOf === undefined;
      if (raw !== undefined && identity) {
        return source.read(file, info.offset + (view.rowBase + first) * fileRowBytes, count * fileRowBytes, signal);
      }
      const { bytes, offsetOf } = await readFileRows(first, count, signal);
      throwIfAborted(signal);
      if (raw !== undefined) {
        const rowBytes = cols * SOURCE_BYTES[raw];
        const out = new Uint8Array(count * rowBytes);
        for (let i = 0; i < count; i++) {
          const at = offsetOf(fileRow(first + i));
          out.set(bytes.subarray(at, at + rowBytes), i * rowBytes);
        }
        return out;
      }
      const out = new Float32Array(count * cols);
      const decoded = view.colOf || view.value ? new Float32Array(cols) : undefined;
      const blocks = cols / info.type.blockSize;
      for (let i = 0; i < count; i++) {
        const at = offsetOf(fileRow(first + i));
        const row = bytes.subarray(at, at + fileRowBytes);
        if (!decoded) {
          dequantize!(row, out.subarray(i * cols, (i + 1) * cols), blocks);
          continue;
        }
        dequantize!(row, decoded, blocks);
        const base = i * cols;
        const { colOf, value } = view;
        for (let c = 0; c < cols; c++) {
          const x = decoded[colOf ? colOf[c] : c];
          out[base + c] = value ? value(x) : x;
        }
      }
      return new Uint8Array(out.buffer);
    },
  };
}

/**
 * For a Q4_0 view: the file block of each group of 32 columns, when every group is a whole file block (no column
 * permutation, or one of whole blocks, as the V-head order of 128-wide heads); else undefined (dequantised instead).
 */
function wholeBlocks(colOf: Int32Array | undefined, cols: number): Int32Array | undefined {
  const groups = cols / 32;
  if (!colOf) return Int32Array.from({ length: groups }, (_, g) => g);
  const blocks = new Int32Array(groups);
  for (let g = 0; g < groups; g++) {
    const c0 = colOf[32 * g];
    if (c0 % 32 !== 0) return undefined;
    for (let i = 1; i < 32; i++) if (colOf[32 * g + i] !== c0 + i) return undefined;
    blocks[g] = c0 / 32;
  }
  return blocks;
}
