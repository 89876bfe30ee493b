/**
 * layoutPackedTensors predicts what PackedWriter writes (the browser's store lays out and resumes a
 * conversion from it): the same runs and shard sizes as the manifest, whatever the shard size.
 */
import { expect, test } from 'vitest';
import { layoutPackedTensors } from '../../src/formats/packed.ts';
import { writeRandomPacked } from './packed_helpers.ts';

test.each([64, 700, 1000, 4096, 1 << 20])('shards of %i bytes: the layout is the manifest the writer writes', async (shardBytes) => {
  const { manifest } = await writeRandomPacked(shardBytes);
  const metas = manifest.tensors.map(({ key, dtype, shape, rowStride, itemStride }) => ({ key, dtype, shape, rowStride, itemStride }));
  const layout = layoutPackedTensors(metas, shardBytes);
  expect(layout.tensors).toEqual(manifest.tensors);
  expect(layout.shards).toEqual(manifest.shards.map(({ name, bytes }) => ({ name, bytes })));
});
