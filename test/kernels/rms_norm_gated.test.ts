import { it } from 'vitest';
import { rmsNormGated } from '../../src/kernels/rms_norm_gated.ts';
import { rmsNormGated as reference } from '../../src/reference/rms_norm_gated.ts';
import { actBuffer, actTolerance, describeOnAdapters, readAct, roundAct, upload, uploadAct } from '../helpers/gpu.ts';
import { randn } from '../helpers/random.ts';
import { expectClose } from '../helpers/compare.ts';

describeOnAdapters(
  'rms_norm_gated',
  (ctx) => {
    // z is read from the fused projection rows: z of token t at t*projStride + conv_dim.
    for (const [tokens, heads, dim] of [
      [3, 4, 128],
      [1, 16, 128],
      [5, 3, 100],
      [2, 2, 1],
    ] as const) {
      it(`tokens=${tokens} heads=${heads} dim=${dim}, strided z`, async () => {
        const c = ctx();
        const rows = tokens * heads;
        const zOffset = 2 * 2 * dim + 8;
        const zTokenStride = zOffset + heads * dim + 2 * heads + 5;
        const x = roundAct(c, randn(rows * dim, rows + dim, 2));
        const z = roundAct(c, randn(tokens * zTokenStride, rows * 3 + dim, 2));
        const w = randn(dim, dim + 1, 0.3).map((v) => 1 + v);
        const y = actBuffer(c, 'y', rows * dim);
        const a = { zTokenStride, zOffset, rows, heads, dim, eps: 1e-6 };
        c.run([await rmsNormGated(c, { x: uploadAct(c, x), z: uploadAct(c, z), w: upload(c, w), y, ...a })]);
        expectClose(await readAct(c, y, rows * dim), reference({ x, z, w, ...a }), ...actTolerance(c, 1e-5, 1e-5));
      });
    }
  },
  { act16: true },
);
