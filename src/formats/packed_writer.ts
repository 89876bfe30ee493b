import { ContractError, ModelFormatError, throwIfAborted } from '../errors.ts';
import {
  PACKED_FORMAT,
  PACKED_MANIFEST,
  PACKED_VERSION,
  RESERVED_NAMES,
  type PackedDtype,
  type PackedFileInfo,
  type PackedManifest,
  type PackedRun,
  type PackedTensorInfo,
  type PackedTensorMeta,
  checkTensorLayout,
  isPlainFileName,
  validateManifest,
} from './packed_manifest.ts';
import { type OutputSink, type SinkFile, partialName } from './packed_sink.ts';
import { Sha256 } from './sha256.ts';

export interface PackedWriterOptions {
  /** The model's Hugging Face config.json, stored in the manifest. */
  config: Record<string, unknown>;
  /** How matrices are stored (the manifest's `dtype`). */
  dtype: PackedDtype;
  /** Shards close before passing this many bytes (default 256 MiB); an item larger than this gets a shard of its own. */
  shardBytes?: number;
  signal?: AbortSignal;
}

const DEFAULT_SHARD_BYTES = 256 * 1024 * 1024;

/** Shard file names: weights-00000.bin, ... (the index is the manifest's shard number). */
export const shardName = (index: number): string => `weights-${String(index).padStart(5, '0')}.bin`;

interface OpenShard {
  index: number;
  out: SinkFile;
  bytes: number;
  hash: Sha256;
}

/**
 * Writes a packed model into a sink: tensors stream into shards as they come, hashed on the way, so host
 * memory holds only the caller's current chunk. Every file is written under a temporary name; `finish()`
 * renames them and writes the manifest last, so a folder is a model only once everything is in it.
 *
 *   const writer = new PackedWriter(sink, { config, dtype: 'q4' });
 *   for (const t of gpuTensors) await writer.addTensor({ key: t.name, dtype, shape, rowStride, itemStride }, readBack(t));
 *   await writer.addFile('tokenizer.json', bytes);
 *   const manifest = await writer.finish();
 *
 * Calls must not overlap. After an error, the writer refuses further calls; `abort()` removes what it wrote.
 */
export class PackedWriter {
  private readonly shardBytes: number;
  private readonly tensors: PackedTensorInfo[] = [];
  private readonly shards: PackedFileInfo[] = [];
  private readonly files: PackedFileInfo[] = [];
  private readonly keys = new Set<string>();
  private shard: OpenShard | undefined;
  private state: 'ready' | 'busy' | 'failed' | 'finished' = 'ready';
  private started = false;

  constructor(
    private readonly sink: OutputSink,
    private readonly options: PackedWriterOptions,
  ) {
    this.shardBytes = options.shardBytes ?? DEFAULT_SHARD_BYTES;
    if (!Number.isSafeInteger(this.shardBytes) || this.shardBytes < 1)
      throw new ContractError(`shardBytes ${this.shardBytes} is not a positive integer`, 'PackedWriter');
  }

  /**
   * Streams one tensor's items (row by row for 2-D tensors, expert by expert for 3-D) into the shards.
   * Chunks may cut items anywhere; together they must be exactly shape[0] items of the dtype's item size.
   */
  addTensor(meta: PackedTensorMeta, items: AsyncIterable<Uint8Array> | Iterable<Uint8Array>): Promise<PackedTensorInfo> {
    return this.guard(async () => {
      const fail = (message: string): never => {
        throw new ModelFormatError(message, this.sink.location, meta.key);
      };
      if (typeof meta.key !== 'string' || meta.key.length === 0) fail('a tensor needs a non-empty key');
      if (this.keys.has(meta.key)) fail('added twice');
      const itemBytes = checkTensorLayout(meta, fail);
      const total = meta.shape[0];
      const runs: PackedRun[] = [];
      let item = 0; // items begun
      let inItem = 0; // bytes of the current item written; 0 at an item boundary
      for await (const chunk of items) {
        throwIfAborted(this.options.signal);
        let at = 0;
        while (at < chunk.length) {
          if (inItem === 0) {
            if (item === total) fail(`more data than its ${total} items of ${itemBytes} bytes`);
            const shard = await this.shardWithRoomFor(itemBytes);
            // As many whole items as this chunk holds and the shard takes, in one write.
            const fit = shard.bytes === 0 ? Math.max(1, Math.floor(this.shardBytes / itemBytes)) : Math.floor((this.shardBytes - shard.bytes) / itemBytes);
            const whole = Math.min(fit, Math.floor((chunk.length - at) / itemBytes), total - item);
            extendRun(runs, shard, item, Math.max(whole, 1));
            if (whole > 0) {
              await this.write(chunk.subarray(at, at + whole * itemBytes));
              at += whole * itemBytes;
              item += whole;
              continue;
            }
          }
          const take = Math.min(itemBytes - inItem, chunk.length - at);
          await this.write(chunk.subarray(at, at + take));
          at += take;
          inItem += take;
          if (inItem === itemBytes) {
            inItem = 0;
            item++;
          }
        }
      }
      if (item !== total || inItem !== 0) {
        fail(`got ${item} items${inItem > 0 ? ` and ${inItem} bytes` : ''}, expected ${total} items of ${itemBytes} bytes`);
      }
      const info: PackedTensorInfo = {
        key: meta.key,
        dtype: meta.dtype,
        shape: [...meta.shape],
        rowStride: meta.rowStride,
        itemStride: meta.itemStride,
        itemBytes,
        runs,
      };
      this.keys.add(meta.key);
      this.tensors.push(info);
      return info;
    });
  }

  /** Adds a file served beside the weights (tokenizer.json, generation_config.json, ...). */
  addFile(name: string, contents: Uint8Array | string): Promise<PackedFileInfo> {
    return this.guard(async () => {
      if (!isPlainFileName(name)) throw new ModelFormatError('is not a plain file name', this.sink.location, name);
      if (RESERVED_NAMES.includes(name) || name.startsWith('weights-')) {
        throw new ModelFormatError('is a name the packed format keeps for itself (config.json comes from the config option)', this.sink.location, name);
      }
      if (this.files.some((f) => f.name === name)) throw new ModelFormatError('added twice', this.sink.location, name);
      const bytes = typeof contents === 'string' ? new TextEncoder().encode(contents) : contents;
      const out = await this.sink.create(partialName(name));
      await out.write(bytes);
      await out.close();
      const info = { name, bytes: bytes.length, sha256: new Sha256().update(bytes).digest() };
      this.files.push(info);
      return info;
    });
  }

  /** Closes the last shard, gives every file its final name, then writes the manifest. */
  finish(): Promise<PackedManifest> {
    return this.guard(async () => {
      await this.closeShard();
      const manifest: PackedManifest = {
        format: PACKED_FORMAT,
        version: PACKED_VERSION,
        config: this.options.config,
        dtype: this.options.dtype,
        tensors: this.tensors,
        shards: this.shards,
        files: this.files,
      };
      // The reader's own check: a writer bug must not produce a model the reader refuses.
      validateManifest(JSON.parse(JSON.stringify(manifest)), partialName(PACKED_MANIFEST));
      for (const f of [...this.shards, ...this.files]) await this.sink.rename(partialName(f.name), f.name);
      const out = await this.sink.create(partialName(PACKED_MANIFEST));
      await out.write(new TextEncoder().encode(formatManifest(manifest)));
      await out.close();
      await this.sink.rename(partialName(PACKED_MANIFEST), PACKED_MANIFEST);
      this.state = 'finished';
      return manifest;
    });
  }

  /** Stops writing and removes the files written so far (best effort). */
  async abort(): Promise<void> {
    if (this.state === 'finished') return;
    this.state = 'failed';
    const open = this.shard;
    this.shard = undefined;
    await open?.out.close().catch(() => {});
    const written = [...this.shards.map((s) => s.name), ...(open ? [shardName(open.index)] : []), ...this.files.map((f) => f.name)];
    for (const name of written) await this.sink.remove(partialName(name)).catch(() => {});
  }

  private async guard<T>(body: () => Promise<T>): Promise<T> {
    if (this.state !== 'ready')
      throw new ContractError(`${this.sink.location}: ${this.state === 'busy' ? 'calls must not overlap' : `already ${this.state}`}`, 'PackedWriter');
    this.state = 'busy';
    try {
      if (!this.started) {
        // Whatever was in the folder before stops being a model now, not when the new one is complete.
        await this.sink.remove(PACKED_MANIFEST);
        this.started = true;
      }
      const result = await body();
      if (this.state === 'busy') this.state = 'ready';
      return result;
    } catch (error) {
      this.state = 'failed';
      throw error;
    }
  }

  private async shardWithRoomFor(itemBytes: number): Promise<OpenShard> {
    if (this.shard && (this.shard.bytes === 0 || this.shard.bytes + itemBytes <= this.shardBytes)) return this.shard;
    await this.closeShard();
    const index = this.shards.length;
    this.shard = { index, out: await this.sink.create(partialName(shardName(index))), bytes: 0, hash: new Sha256() };
    return this.shard;
  }

  private async write(bytes: Uint8Array): Promise<void> {
    const shard = this.shard!;
    shard.hash.update(bytes);
    await shard.out.write(bytes);
    shard.bytes += bytes.length;
  }

  private async closeShard(): Promise<void> {
    const shard = this.shard;
    if (!shard) return;
    this.shard = undefined;
    await shard.out.close();
    this.shards.push({ name: shardName(shard.index), bytes: shard.bytes, sha256: shard.hash.digest() });
  }
}

/**
 * Where the writer will put each tensor's items, and each shard's size, before anything is written: the
 * same placement as addTensor (an item goes into the open shard when it fits, else opens the next), so a
 * store that keeps records per expert item can lay out and resume a conversion it has not yet finished.
 */
export function layoutPackedTensors(
  tensors: PackedTensorMeta[],
  shardBytes = DEFAULT_SHARD_BYTES,
): { tensors: PackedTensorInfo[]; shards: { name: string; bytes: number }[] } {
  const shards: { name: string; bytes: number }[] = [];
  const infos = tensors.map((meta) => {
    const itemBytes = checkTensorLayout(meta, (message) => {
      throw new ModelFormatError(message, PACKED_MANIFEST, meta.key);
    });
    const runs: PackedRun[] = [];
    for (let item = 0; item < meta.shape[0]; ) {
      let shard = shards[shards.length - 1];
      if (!shard || (shard.bytes > 0 && shard.bytes + itemBytes > shardBytes)) {
        shard = { name: shardName(shards.length), bytes: 0 };
        shards.push(shard);
      }
      const fit = shard.bytes === 0 ? Math.max(1, Math.floor(shardBytes / itemBytes)) : Math.floor((shardBytes - shard.bytes) / itemBytes);
      const count = Math.min(fit, meta.shape[0] - item);
      const last = runs[runs.length - 1];
      if (last && last.shard === shards.length - 1) last.count += count;
      else runs.push({ shard: shards.length - 1, offset: shard.bytes, firstItem: item, count });
      shard.bytes += count * itemBytes;
      item += count;
    }
    return { ...meta, shape: [...meta.shape], itemBytes, runs };
  });
  return { tensors: infos, shards };
}

/**
 * Adds `count` items at the shard's write position: to the last run when it is in the same shard (a tensor's
 * items are written back to back, so they follow it), else as a new run.
 */
function extendRun(runs: PackedRun[], shard: OpenShard, firstItem: number, count: number): void {
  const last = runs[runs.length - 1];
  if (last && last.shard === shard.index) last.count += count;
  else runs.push({ shard: shard.index, offset: shard.bytes, firstItem, count });
}

/** One line per tensor, shard and file: readable, and diffable between conversions. */
function formatManifest(m: PackedManifest): string {
  const list = (items: unknown[]) => (items.length === 0 ? '[]' : `[\n    ${items.map((x) => JSON.stringify(x)).join(',\n    ')}\n  ]`);
  return [
    '{',
    `  "format": ${JSON.stringify(m.format)},`,
    `  "version": ${m.version},`,
    `  "dtype": ${JSON.stringify(m.dtype)},`,
    `  "config": ${JSON.stringify(m.config)},`,
    `  "shards": ${list(m.shards)},`,
    `  "files": ${list(m.files)},`,
    `  "tensors": ${list(m.tensors)}`,
    '}',
    '',
  ].join('\n');
}
