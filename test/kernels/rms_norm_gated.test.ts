import { it } from 'vitest';
import { rmsNormGated } from '../../src/kernels/rms_norm_gated.ts';
import { rmsNormGated as reference } from '../../src/reference/rms_norm_gated.ts';
import { describeOnAdapters, readF32, upload } from '../helpers/gpu.ts';
import { randn } from '../helpers/random.ts';
import { expectClose } from '../helpers/compare.ts';

describeOnAdapters('rms_norm_gated', (ctx) => {
  // z is read from the fused projection rows: z of token t at t*projStride + conv_dim.
  for (const [tokens, heads, dim] of [[3, 4, 128], [1, 16, 128], [5, 3, 100], [2, 2, 1]] as const) {
    it(`tokens=${tokens} heads=${heads} dim=${dim}, strided z`, async () => {
      const c = ctx();
      const rows = tokens * heads;
      const zOffset = 2 * 2 * dim + 8;
      const zTokenStride = zOffset + heads * dim + 2 * heads + 5;
      const x = randn(rows * dim, rows + dim, 2);
      const z = randn(tokens * zTokenStride, rows * 3 + dim, 2);
      const w = randn(dim, dim + 1, 0.3).map((v) => 1 + v);
      const y = c.storage('y', rows * dim * 4);
      const a = { zTokenStride, zOffset, rows, heads, dim, eps: 1e-6 };
      c.run([await rmsNormGated(c, { x: upload(c, x), z: upload(c, z), w: upload(c, w), y, ...a })]);
      expectClose(await readF32(c, y, rows * dim), reference({ x, z, w, ...a }), 1e-5, 1e-5);
    });
  }
});
