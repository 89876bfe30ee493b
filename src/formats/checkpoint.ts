import type { WeightSource } from './source.ts';
import type { PackedModel } from './packed_reader.ts';
import type { SourceDtype } from '../numeric/source_dtype.ts';

/**
 * A checkpoint as the loader sees it, whatever its file format: Hugging Face tensor names and shapes, each
 * readable a few rows at a time (so no tensor is ever read whole), plus the JSON files (config.json,
 * tokenizer.json, tokenizer_config.json, generation_config.json) — real files, or files a format synthesises
 * from its own metadata (GGUF).
 */
export interface SourceTensor {
  /** Hugging Face name, e.g. model.language_model.layers.0.linear_attn.in_proj_qkv.weight. */
  name: string;
  /** Hugging Face shape (outermost first). */
  shape: number[];
  /** The element type readRows returns; undefined when the file's type cannot be read (then fileDtype says which). */
  dtype: SourceDtype | undefined;
  /** The type as the file names it (BF16, F32, Q4_K, ...), for messages. */
  fileDtype: string;
  /** The file types this format reads, for the message when dtype is undefined. */
  readableTypes: readonly string[];
  /** The file that holds it, for messages. */
  file: string;
  /** Bytes it takes in the file (progress). */
  bytes: number;
  /** Rows [first, first + count) of the tensor seen as [rows, cols] (cols = last dim): little-endian `dtype` elements. */
  readRows(first: number, count: number, signal?: AbortSignal): Promise<Uint8Array>;
  /**
   * Present where the file holds exactly the engine's INT4 values (GGUF Q4_0): rows [first, first + count) in the q4
   * format (src/numeric/q4.ts), each its own block of q4ItemWords(q4RowStride(cols)) words, so an int4 load copies
   * them rather than re-quantising.
   */
  readQ4Rows?(first: number, count: number, signal?: AbortSignal): Promise<Uint8Array>;
}

export interface Checkpoint {
  /** A folder path or URL, for messages. */
  location: string;
  /** config.json and the tokenizer files. */
  files: WeightSource;
  tensors: Map<string, SourceTensor>;
  /** Set for the engine's packed format: GPU tensors to upload as they are (`tensors` is then empty). */
  packed?: PackedModel;
}
