import type { GpuContext } from '../gpu/context.ts';
import { ModelFormatError, throwIfAborted } from '../errors.ts';
import { type GpuTensor, type WeightDtype, planTensorLayout } from '../gpu/tensor.ts';
import { cast } from '../kernels/cast.ts';
import { placeQ4, quantizeQ4 } from '../kernels/quantize.ts';
import type { Checkpoint, SourceTensor } from '../formats/checkpoint.ts';
import { SOURCE_BYTES } from '../numeric/source_dtype.ts';
import { q4ItemWords } from '../numeric/q4.ts';
import type { Placement, TensorSpec } from './tensors.ts';
import { uploadPacked } from './load_packed.ts';

/** Bytes read and converted per upload (at most): bounds host memory whatever the tensor size. */
const PIECE_BYTES = 8 * 1024 * 1024;

/**
 * Fills the GPU tensors of `specs` from the checkpoint, PIECE_BYTES (or `pieceBytes`) at a time; yields the
 * source bytes done per piece. Host memory holds one piece; the caller owns the GPU tensors.
 */
export async function* uploadSources(
  ctx: GpuContext,
  checkpoint: Checkpoint,
  specs: TensorSpec[],
  gpu: Map<string, GpuTensor>,
  options: { pieceBytes?: number; signal?: AbortSignal } = {},
): AsyncGenerator<{ bytes: number; tensor: string }> {
  const pieceBytes = Math.min(options.pieceBytes ?? PIECE_BYTES, ctx.caps.maxStorageBindingBytes - 16);
  const packed = checkpoint.packed;
  if (packed) {
    yield* uploadPacked(ctx, packed, specs, gpu, pieceBytes, options.signal);
    return;
  }
  const uploads = specs
    .flatMap((spec) => spec.sources.map((p) => ({ tensor: gpu.get(spec.key)!, p, entry: checkpoint.tensors.get(p.source)! })))
    .sort((a, b) => (a.entry.file < b.entry.file ? -1 : a.entry.file > b.entry.file ? 1 : 0));
  const staging = ctx.storage('upload staging', pieceBytes);
  try {
    for (const u of uploads) {
      for await (const bytes of uploadPlacement(ctx, staging, u.tensor, u.p, u.entry, options.signal)) yield { bytes, tensor: u.p.source };
    }
    await ctx.sync();
  } finally {
    ctx.free(staging);
  }
}

/** GPU storage for every spec, in the dtype `dtypeOf` gives it, each split to fit the binding limit. */
export function allocateTensors(ctx: GpuContext, specs: TensorSpec[], dtypeOf: (spec: TensorSpec) => WeightDtype, owned: GPUBuffer[]): Map<string, GpuTensor> {
  const gpu = new Map<string, GpuTensor>();
  for (const spec of specs) {
    const d = dtypeOf(spec);
    const layout = planTensorLayout(spec.key, spec.shape, d, ctx.caps);
    const tensor: GpuTensor = { name: spec.key, dtype: d, shape: spec.shape, rowStride: layout.rowStride, itemStride: layout.itemStride, parts: [] };
    for (let first = 0; first < layout.items; first += layout.itemsPerPart) {
      const count = Math.min(layout.itemsPerPart, layout.items - first);
      const buffer = ctx.storage(`${spec.key}[${first}..${first + count})`, count * layout.itemBytes);
      owned.push(buffer);
      tensor.parts.push({ buffer, first, count });
    }
    gpu.set(spec.key, tensor);
  }
  return gpu;
}

/**
 * Streams one source tensor into its place: runs of source rows that land at a constant stride in one
 * part of the destination, read and converted PIECE_BYTES at a time. Yields the bytes done per piece.
 */
async function* uploadPlacement(
  ctx: GpuContext,
  staging: GPUBuffer,
  dst: GpuTensor,
  p: Placement,
  entry: SourceTensor,
  signal: AbortSignal | undefined,
): AsyncGenerator<number> {
  const cols = entry.shape[entry.shape.length - 1];
  // A file that holds the INT4 values themselves (GGUF Q4_0) is copied into place, not re-quantised.
  const readQ4 = dst.dtype === 'q4' ? entry.readQ4Rows?.bind(entry) : undefined;
  const rowBytes = readQ4 ? q4ItemWords(dst.rowStride) * 4 : cols * SOURCE_BYTES[entry.dtype!];
  // Progress counts the file's bytes (a quantized GGUF row is smaller than the f32 row it is read as).
  const fileRowBytes = entry.bytes / Math.max(1, entry.shape.reduce((a, b) => a * b, 1) / cols);
  const rowsPerPiece = Math.floor((staging.size - 4) / rowBytes);
  if (rowsPerPiece < 1) throw new ModelFormatError(`a row of ${rowBytes} bytes is larger than the adapter can bind`, entry.file, entry.name);
  const [items, rowsPerItem] = p.view;
  // A run: consecutive source rows with one destination stride inside one part.
  const runs: { srcRow: number; rows: number; dstItem: number; dstRow: number; stride: number }[] = [];
  if (rowsPerItem === 1) {
    for (let i = 0; i < items; ) {
      const dstItem = p.item + i;
      const part = dst.parts.find((q) => dstItem >= q.first && dstItem < q.first + q.count)!;
      const rows = Math.min(items - i, part.first + part.count - dstItem);
      runs.push({ srcRow: i, rows, dstItem, dstRow: p.row, stride: dst.itemStride });
      i += rows;
    }
  } else {
    for (let i = 0; i < items; i++) runs.push({ srcRow: i * rowsPerItem, rows: rowsPerItem, dstItem: p.item + i, dstRow: p.row, stride: dst.rowStride });
  }
  for (const run of runs) {
    const part = dst.parts.find((q) => run.dstItem >= q.first && run.dstItem < q.first + q.count)!;
    for (let r = 0; r < run.rows; r += rowsPerPiece) {
      throwIfAborted(signal);
      const rows = Math.min(rowsPerPiece, run.rows - r);
      const bytes = await (readQ4 ?? entry.readRows.bind(entry))(run.srcRow + r, rows, signal);
      if (bytes.length !== rows * rowBytes) throw new ModelFormatError(`read ${bytes.length} bytes for ${rows} rows of ${rowBytes}`, entry.file, entry.name);
      const padded = bytes.length % 4 === 0 ? bytes : copyPadded(bytes);
      ctx.write(staging, 0, padded);
      const base = (run.dstItem - part.first) * dst.itemStride + run.dstRow * dst.rowStride;
      const piece = {
        src: staging,
        srcDtype: entry.dtype!,
        rows,
        cols,
        dst: part.buffer,
        dstOffset: base + r * run.stride,
        dstRowStride: run.stride,
        rowStride: dst.rowStride,
        transient: true,
      };
      const d = readQ4
        ? await placeQ4(ctx, { ...piece, itemStride: dst.itemStride })
        : dst.dtype === 'q4'
          ? await quantizeQ4(ctx, { ...piece, itemStride: dst.itemStride })
          : await cast(ctx, { ...piece, dstDtype: dst.dtype });
      ctx.run([d], 'upload');
      // A piece's bind group binds the staging buffer, freed after the load: nothing is kept for it.
      ctx.release([d]);
      yield rows * fileRowBytes;
    }
  }
}

function copyPadded(bytes: Uint8Array): Uint8Array {
  const out = new Uint8Array(Math.ceil(bytes.length / 4) * 4);
  out.set(bytes);
  return out;
}
