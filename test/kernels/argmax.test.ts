import { expect, it } from 'vitest';
import { argmax } from '../../src/kernels/argmax.ts';
import { argmax as reference } from '../../src/reference/argmax.ts';
import { describeOnAdapters, readU32, upload } from '../helpers/gpu.ts';
import { randn } from '../helpers/random.ts';

const VOCAB = 248320;
const TOKENIZER = 248077;

describeOnAdapters('argmax', (ctx) => {
  /** Runs argmax on `row` placed at `offset` in a buffer whose head is larger than anything in the row. */
  async function run(row: Float32Array, n: number, offset = 0, outIndex = 0): Promise<number> {
    const c = ctx();
    const data = new Float32Array(offset + row.length).fill(1e30);
    data.set(row, offset);
    const out = upload(c, new Uint32Array(outIndex + 2).fill(0xdeadbeef));
    c.run([await argmax(c, { logits: upload(c, data), offset, n, out, outIndex })]);
    const got = await readU32(c, out, outIndex + 2);
    expect(got[outIndex + 1], 'the slot after outIndex is untouched').toBe(0xdeadbeef);
    if (outIndex > 0) expect(got[0]).toBe(0xdeadbeef);
    return got[outIndex];
  }

  it(`n = ${VOCAB}, random logits`, async () => {
    const row = randn(VOCAB, 1, 4);
    const want = reference(row);
    expect(want).not.toBe(0);
    expect(await run(row, VOCAB)).toBe(want);
  });

  it('n smaller than the row: a larger value in the excluded tail is not returned', async () => {
    const row = randn(VOCAB, 2, 4);
    row[TOKENIZER + 5] = 1000;
    row[123457] = 999;
    expect(reference(row, TOKENIZER)).toBe(123457);
    expect(await run(row, TOKENIZER, 37, 3)).toBe(123457);
  });

  it('ties go to the lowest index, across and within invocations', async () => {
    const row = randn(VOCAB, 3, 4);
    for (const i of [200001, 77777, 77777 + 256, 99999]) row[i] = 50;
    expect(await run(row, VOCAB)).toBe(77777);
    row[5] = 50; // index 5 and 77777 differ by a non-multiple of the workgroup
    expect(await run(row, VOCAB, 1)).toBe(5);
  });

  it('small n, negative values, -Infinity and NaN', async () => {
    expect(await run(new Float32Array([-3, -1, -2, -1, -5]), 5)).toBe(1);
    expect(await run(new Float32Array([-7]), 1, 2)).toBe(0);
    expect(await run(new Float32Array([-Infinity, -Infinity, -Infinity]), 3)).toBe(0);
    expect(await run(new Float32Array([NaN, -4, NaN, -2, -Infinity]), 5)).toBe(3);
    const row = randn(1000, 4);
    expect(await run(row, 999)).toBe(reference(row, 999));
  });
});
