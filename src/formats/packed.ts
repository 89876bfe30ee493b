/**
 * The engine's packed model format: the GPU tensors exactly as the engine holds them (fused, padded,
 * quantised), in shards beside a manifest (`qwen-webgpu.json`), so loading is a plain upload and one
 * expert is one contiguous byte range. `qwen-webgpu convert` writes it with PackedWriter; `--model DIR`
 * (a folder or URL) reads it with openPacked; exportHf turns it back into a Hugging Face checkpoint.
 *
 * Loading onto the GPU:
 *   const packed = await openPacked(source);               // manifest validated, shard sizes checked
 *   const config = parseConfig(await readJson(packed.files, 'config.json'));
 *   for (const t of packed.tensors.values())                // t.dtype, t.shape, t.rowStride, t.itemStride, t.itemBytes
 *     for each GPU part [first, first + count) of t:  upload(await packed.readItems(t.key, first, count, signal))
 */
export * from './packed_manifest.ts';
export * from './packed_sink.ts';
export { PackedWriter, type PackedWriterOptions, layoutPackedTensors, shardName } from './packed_writer.ts';
export { type PackedModel, type VerifyProgress, isPackedModel, openPacked } from './packed_reader.ts';
