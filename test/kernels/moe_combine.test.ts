import { expect, it } from 'vitest';
import { moeCombine } from '../../src/kernels/moe_combine.ts';
import { moeCombine as reference } from '../../src/reference/moe.ts';
import { describeOnAdapters, readF32, upload } from '../helpers/gpu.ts';
import { randn } from '../helpers/random.ts';
import { expectClose } from '../helpers/compare.ts';

describeOnAdapters('moe_combine', (ctx) => {
  // Real topk (4, 10) and hidden (2048), and sizes that leave a partial workgroup (3 · 100).
  for (const [tokens, hidden, topk] of [
    [3, 128, 4],
    [5, 128, 10],
    [2, 2048, 10],
    [7, 2048, 4],
    [3, 100, 10],
    [1, 2048, 8],
  ] as const) {
    it(`T=${tokens} hidden=${hidden} topk=${topk}`, async () => {
      const c = ctx();
      const h0 = randn(tokens * hidden, tokens * 13 + hidden, 2);
      const out = randn(tokens * topk * hidden, hidden + topk, 1);
      // One float past h: the grid must not write beyond tokens · hidden.
      const h = upload(c, Float32Array.from([...h0, 12345]));
      c.run([await moeCombine(c, { h, out: upload(c, out), tokens, hidden, topk })]);
      const got = await readF32(c, h, tokens * hidden + 1);
      expectClose(got.subarray(0, tokens * hidden), reference(h0, out, tokens, hidden, topk), 1e-5, 1e-5);
      expect(got[tokens * hidden]).toBe(12345);
    });
  }

  it('rejects bad shapes', async () => {
    const c = ctx();
    const h = c.storage('h', 64);
    await expect(moeCombine(c, { h, out: c.storage('out', 64), tokens: 2, hidden: 8, topk: 2 })).rejects.toThrow(/moe_combine: out/);
    await expect(moeCombine(c, { h, out: h, tokens: 1, hidden: 4, topk: 1 })).rejects.toThrow(/moe_combine: h and out/);
  });
});
