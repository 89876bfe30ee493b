import { ContractError, ModelFormatError, throwIfAborted } from '../errors.ts';
import { checkSmallFile } from './limits.ts';
import type { WeightSource } from './source.ts';
import { PACKED_MANIFEST, type PackedDtype, type PackedFileInfo, type PackedManifest, type PackedTensorInfo, validateManifest } from './packed_manifest.ts';
import { Sha256 } from './sha256.ts';

export interface VerifyProgress {
  /** The file being hashed. */
  file: string;
  doneBytes: number;
  totalBytes: number;
}

/** A packed model opened for reading: its manifest checked, nothing else read yet. */
export interface PackedModel {
  /** A folder path or URL, for messages. */
  location: string;
  manifest: PackedManifest;
  /** The Hugging Face config.json object. */
  config: Record<string, unknown>;
  /** How matrices are stored (vectors are f32). */
  dtype: PackedDtype;
  /** Every GPU tensor by key, in the order they were written. */
  tensors: Map<string, PackedTensorInfo>;
  /** config.json (from the manifest) and the tokenizer files: what the engine reads beside the weights. */
  files: WeightSource;
  /**
   * Items [firstItem, firstItem + count) of tensor `key`, back to back (count · itemBytes bytes): reads only
   * those byte ranges. The result starts at byte 0 of its own buffer, so it can be viewed as u32 words.
   */
  readItems(key: string, firstItem: number, count: number, signal?: AbortSignal): Promise<Uint8Array>;
  /** Streams every shard and file through SHA-256; throws ModelFormatError naming the first that does not match. */
  verify(onProgress?: (p: VerifyProgress) => void, signal?: AbortSignal): Promise<void>;
}

/** Bytes hashed per read in verify(). */
const VERIFY_PIECE_BYTES = 16 * 1024 * 1024;
/** Size probes in flight at once (HTTP: one request each). */
const PROBES_IN_FLIGHT = 8;

/** Whether `source` holds a packed model (a finished one: the manifest is written last). */
export const isPackedModel = (source: WeightSource): Promise<boolean> => source.has(PACKED_MANIFEST);

/** Reads and validates a packed model's manifest (its bytes too: a store keeps them as they are). */
export async function readManifest(source: WeightSource, signal?: AbortSignal): Promise<{ manifest: PackedManifest; bytes: Uint8Array }> {
  // A manifest past its limit is refused before it is read (a 397B model's is well under 1 MB).
  const manifestBytes = await source.size(PACKED_MANIFEST);
  checkSmallFile(PACKED_MANIFEST, manifestBytes);
  // Read outside the try: a failed read (a dropped connection) is its own error, not "not valid JSON".
  const bytes = await source.read(PACKED_MANIFEST, 0, manifestBytes, signal);
  let raw: unknown;
  try {
    raw = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes));
  } catch (error) {
    throw new ModelFormatError(`not valid JSON (${(error as Error).message})`, PACKED_MANIFEST, undefined, { cause: error });
  }
  return { manifest: validateManifest(raw), bytes };
}

/**
 * Opens a packed model: reads and validates the whole manifest, then checks that every shard and file it
 * lists exists with the size it records, before the caller allocates anything from it.
 */
export async function openPacked(source: WeightSource): Promise<PackedModel> {
  if (!(await source.has(PACKED_MANIFEST))) {
    throw new ModelFormatError(`not found in ${source.location}: not a packed model, or its conversion did not finish`, PACKED_MANIFEST);
  }
  const { manifest } = await readManifest(source);
  await checkSizes(source, [...manifest.shards, ...manifest.files]);

  const tensors = new Map(manifest.tensors.map((t) => [t.key, t]));
  return {
    location: source.location,
    manifest,
    config: manifest.config,
    dtype: manifest.dtype,
    tensors,
    files: new PackedFiles(source, manifest),
    readItems: (key, firstItem, count, signal) => readItems(source, manifest, tensors, key, firstItem, count, signal),
    verify: (onProgress, signal) => verify(source, manifest, onProgress, signal),
  };
}

async function checkSizes(source: WeightSource, files: PackedFileInfo[]): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < files.length) {
      const f = files[next++];
      const actual = await source.size(f.name);
      if (actual !== f.bytes) {
        throw new ModelFormatError(`${actual} bytes, but ${PACKED_MANIFEST} records ${f.bytes} (${actual < f.bytes ? 'truncated' : 'replaced'}?)`, f.name);
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(PROBES_IN_FLIGHT, files.length) }, worker));
}

async function readItems(
  source: WeightSource,
  manifest: PackedManifest,
  tensors: Map<string, PackedTensorInfo>,
  key: string,
  firstItem: number,
  count: number,
  signal: AbortSignal | undefined,
): Promise<Uint8Array> {
  const t = tensors.get(key);
  if (!t) throw new ModelFormatError('no such tensor in the packed model', PACKED_MANIFEST, key);
  if (!Number.isSafeInteger(firstItem) || !Number.isSafeInteger(count) || firstItem < 0 || count < 0 || firstItem + count > t.shape[0]) {
    throw new ContractError(`${key}: items ${firstItem}..${firstItem + count} are outside its ${t.shape[0]} items`, 'readItems');
  }
  const pieces: Promise<Uint8Array>[] = [];
  // Runs are sorted and contiguous in item space: find the first one holding firstItem, then walk on.
  let lo = 0;
  let hi = t.runs.length - 1;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (t.runs[mid].firstItem <= firstItem) lo = mid;
    else hi = mid - 1;
  }
  for (let r = lo, item = firstItem, end = firstItem + count; item < end; r++) {
    const run = t.runs[r];
    const n = Math.min(end, run.firstItem + run.count) - item;
    const offset = run.offset + (item - run.firstItem) * t.itemBytes;
    pieces.push(source.read(manifest.shards[run.shard].name, offset, n * t.itemBytes, signal));
    item += n;
  }
  const parts = await Promise.all(pieces);
  if (parts.length === 1 && parts[0].byteOffset === 0) return parts[0];
  const out = new Uint8Array(count * t.itemBytes);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

async function verify(source: WeightSource, manifest: PackedManifest, onProgress?: (p: VerifyProgress) => void, signal?: AbortSignal): Promise<void> {
  const all = [...manifest.shards, ...manifest.files];
  const totalBytes = all.reduce((sum, f) => sum + f.bytes, 0);
  let doneBytes = 0;
  for (const f of all) {
    const hash = new Sha256();
    // Read the next piece while hashing this one.
    const readAt = (offset: number) => {
      const piece = source.read(f.name, offset, Math.min(VERIFY_PIECE_BYTES, f.bytes - offset), signal);
      piece.catch(() => {}); // a read left pending by an abort must not surface as an unhandled rejection
      return piece;
    };
    let pending = f.bytes > 0 ? readAt(0) : undefined;
    for (let offset = 0; pending; ) {
      throwIfAborted(signal);
      const piece = await pending;
      offset += piece.length;
      pending = offset < f.bytes ? readAt(offset) : undefined;
      hash.update(piece);
      doneBytes += piece.length;
      onProgress?.({ file: f.name, doneBytes, totalBytes });
    }
    const actual = hash.digest();
    if (actual !== f.sha256)
      throw new ModelFormatError(`sha256 ${actual} does not match ${f.sha256} in ${PACKED_MANIFEST}: the file is corrupt or was replaced`, f.name);
  }
}

/** The files beside the weights: config.json from the manifest, the others as listed in it. */
class PackedFiles implements WeightSource {
  readonly location: string;
  private readonly config: Uint8Array;
  private readonly listed: Map<string, PackedFileInfo>;

  constructor(
    private readonly source: WeightSource,
    manifest: PackedManifest,
  ) {
    this.location = source.location;
    this.config = new TextEncoder().encode(JSON.stringify(manifest.config, null, 2));
    this.listed = new Map(manifest.files.map((f) => [f.name, f]));
  }

  async has(file: string): Promise<boolean> {
    return file === 'config.json' || this.listed.has(file);
  }

  async size(file: string): Promise<number> {
    if (file === 'config.json') return this.config.length;
    return this.entry(file).bytes;
  }

  async read(file: string, offset: number, length: number, signal?: AbortSignal): Promise<Uint8Array> {
    if (file !== 'config.json') {
      this.entry(file);
      return this.source.read(file, offset, length, signal);
    }
    if (offset < 0 || offset + length > this.config.length)
      throw new ModelFormatError(`bytes ${offset}..${offset + length} are past its end (${this.config.length})`, file);
    return this.config.slice(offset, offset + length);
  }

  async text(file: string): Promise<string> {
    if (file === 'config.json') return new TextDecoder().decode(this.config);
    checkSmallFile(file, this.entry(file).bytes);
    return new TextDecoder().decode(await this.source.read(file, 0, this.entry(file).bytes));
  }

  private entry(file: string): PackedFileInfo {
    const f = this.listed.get(file);
    if (!f) throw new ModelFormatError(`not in the packed model at ${this.location}`, file);
    return f;
  }
}
