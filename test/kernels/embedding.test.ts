import { expect, it } from 'vitest';
import { embedding } from '../../src/kernels/embedding.ts';
import { embedding as reference } from '../../src/reference/embedding.ts';
import { maskCaps } from '../../src/gpu/caps.ts';
import { uploadTensor } from '../helpers/upload.ts';
import { type WeightDtype, planTensorLayout } from '../../src/gpu/tensor.ts';
import { roundToF16 } from '../../src/numeric/half.ts';
import { roundToQ4 } from '../../src/numeric/q4.ts';
import { describeOnAdapters, readF32, upload } from '../helpers/gpu.ts';
import { randn, rng } from '../helpers/random.ts';
import { expectClose } from '../helpers/compare.ts';

describeOnAdapters('embedding', (ctx) => {
  // Hidden 1024 (0.8B) in one part; a width of 100 (rows padded to 104) split into parts of 37 rows.
  const cases = [
    { vocab: 1000, cols: 1024, partRows: 0 },
    { vocab: 300, cols: 100, partRows: 37 },
  ];
  for (const dtype of ['f32', 'f16', 'q4'] as WeightDtype[]) {
    for (const { vocab, cols, partRows } of cases) {
      it(`${dtype} [${vocab}, ${cols}]${partRows ? ` in parts of ${partRows} rows` : ''}`, async () => {
        const c = ctx();
        const values = randn(vocab * cols, vocab + cols, 2);
        const rowBytes = planTensorLayout('embed', [vocab, cols], dtype, c.caps).itemBytes;
        const caps = partRows ? maskCaps(c.caps, { maxStorageBindingBytes: partRows * rowBytes }) : c.caps;
        const table = uploadTensor(c, 'embed', [vocab, cols], values, dtype, caps);
        expect(table.parts.length).toBe(partRows ? Math.ceil(vocab / partRows) : 1);
        // Ids at both ends of the vocabulary and of each part, repeated; read from an offset into the ids buffer.
        const r = rng(cols);
        const ids = [0, vocab - 1, 36, 37, 36, ...Array.from({ length: 6 }, () => Math.floor(r() * vocab))];
        const idsOffset = 3;
        const idsBuf = upload(c, new Uint32Array([9, 9, 9, ...ids]));
        const out = c.storage('out', ids.length * cols * 4);
        c.run(await embedding(c, { table, ids: idsBuf, idsOffset, tokens: ids.length, out }));
        const stored = dtype === 'f16' ? roundToF16(values) : dtype === 'q4' ? roundToQ4(values, [vocab, cols]) : values;
        const want = reference(stored, cols, ids);
        expectClose(await readF32(c, out, want.length), want, 1e-30, 0, 'out (exact gather)');
      });
    }
  }

  it('an id past the vocabulary leaves its row untouched', async () => {
    const c = ctx();
    const [vocab, cols] = [50, 24];
    const values = randn(vocab * cols, 3);
    const table = uploadTensor(c, 'embed', [vocab, cols], values, 'f16', maskCaps(c.caps, { maxStorageBindingBytes: 20 * 24 * 2 }));
    const out = upload(c, new Float32Array(2 * cols).fill(-7));
    c.run(await embedding(c, { table, ids: upload(c, new Uint32Array([49, 50])), tokens: 2, out }));
    const want = new Float32Array(2 * cols).fill(-7);
    want.set(roundToF16(values).subarray(49 * cols, 50 * cols));
    expectClose(await readF32(c, out, 2 * cols), want, 1e-30, 0);
  });
});
