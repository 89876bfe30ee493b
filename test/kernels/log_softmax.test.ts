import { it } from 'vitest';
import { logSoftmax } from '../../src/kernels/log_softmax.ts';
import { logSoftmax as reference } from '../../src/reference/log_softmax.ts';
import { describeOnAdapters, readF32, upload } from '../helpers/gpu.ts';
import { rng } from '../helpers/random.ts';
import { expectClose } from '../helpers/compare.ts';

/** Uniform values in [-80, 80]: exp of the row's spread passes f32's range unless the max is subtracted first. */
function logits(n: number, seed: number): Float32Array {
  const r = rng(seed);
  return Float32Array.from({ length: n }, () => (r() * 2 - 1) * 80);
}

describeOnAdapters('log_softmax', (ctx) => {
  // Rows of 1,000, of the vocabulary (248,320), and rows shorter than the workgroup.
  for (const [rows, cols] of [
    [5, 1000],
    [2, 248320],
    [3, 7],
  ] as const) {
    for (const inPlace of [false, true]) {
      it(`rows=${rows} cols=${cols}${inPlace ? ' in place' : ''}`, async () => {
        const c = ctx();
        const x = logits(rows * cols, rows * 7 + cols);
        const xBuf = upload(c, x);
        const y = inPlace ? xBuf : c.storage('y', rows * cols * 4);
        c.run([await logSoftmax(c, { x: xBuf, y, rows, cols })]);
        // y reaches -160 - log(cols): f32 spacing there is 1.5e-5, so the bound is a few ulps of the result.
        expectClose(await readF32(c, y, rows * cols), reference(x, cols), 1e-5, 2e-7);
      });
    }
  }
});
