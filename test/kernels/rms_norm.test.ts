import { it } from 'vitest';
import { rmsNorm } from '../../src/kernels/rms_norm.ts';
import { rmsNorm as reference } from '../../src/reference/rms_norm.ts';
import { describeOnAdapters, readF32, upload } from '../helpers/gpu.ts';
import { randn } from '../helpers/random.ts';
import { expectClose } from '../helpers/compare.ts';

describeOnAdapters('rms_norm', (ctx) => {
  // Real widths (attention head 256, hidden 1024 and 5120) and widths that are not multiples of the workgroup.
  for (const [rows, cols] of [
    [3, 256],
    [2, 1024],
    [1, 5120],
    [7, 100],
    [5, 1],
  ] as const) {
    it(`rows=${rows} cols=${cols}`, async () => {
      const c = ctx();
      const x = randn(rows * cols, rows * 31 + cols, 3);
      const w = randn(cols, cols, 0.5);
      const y = c.storage('y', rows * cols * 4);
      c.run([await rmsNorm(c, { x: upload(c, x), w: upload(c, w), y, rows, cols, eps: 1e-6 })]);
      expectClose(await readF32(c, y, rows * cols), reference(x, w, 1e-6), 1e-5, 1e-5);
    });
  }

  it('writes rows at yOffset + r·yStride (the second half of a [rows, 2·cols] buffer), leaving the rest alone', async () => {
    const c = ctx();
    const [rows, cols] = [3, 100];
    const x = randn(rows * cols, 5, 3);
    const w = randn(cols, 6, 0.5);
    const y = upload(c, new Float32Array(rows * 2 * cols).fill(7));
    c.run([await rmsNorm(c, { x: upload(c, x), w: upload(c, w), y, rows, cols, eps: 1e-6, yOffset: cols, yStride: 2 * cols })]);
    const out = await readF32(c, y, rows * 2 * cols);
    const normed = reference(x, w, 1e-6);
    for (let r = 0; r < rows; r++) {
      expectClose(out.slice(r * 2 * cols, r * 2 * cols + cols), new Float32Array(cols).fill(7), 1e-6);
      expectClose(out.slice(r * 2 * cols + cols, (r + 1) * 2 * cols), normed.slice(r * cols, (r + 1) * cols), 1e-5, 1e-5);
    }
  });

  it('reads rows from xOffset (rows 2 and 3 of a buffer of 5)', async () => {
    const c = ctx();
    const cols = 100;
    const x = randn(5 * cols, 8, 3);
    const w = randn(cols, 9, 0.5);
    const y = c.storage('y', 2 * cols * 4);
    c.run([await rmsNorm(c, { x: upload(c, x), w: upload(c, w), y, rows: 2, cols, eps: 1e-6, xOffset: 2 * cols })]);
    expectClose(await readF32(c, y, 2 * cols), reference(x.slice(2 * cols, 4 * cols), w, 1e-6), 1e-5, 1e-5);
  });
});
