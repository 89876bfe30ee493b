import { expect, it } from 'vitest';
import { moeRoute } from '../../src/kernels/moe_route.ts';
import { moeRoute as reference } from '../../src/reference/moe.ts';
import { describeOnAdapters, readF32, readU32, upload } from '../helpers/gpu.ts';
import { randn, rng } from '../helpers/random.ts';
import { expectClose } from '../helpers/compare.ts';

type Pattern = 'wide' | 'near-ties' | 'ties';

/** [tokens, experts + 1] logits; token 0's shared gate logit outranks every expert, so selecting it would show. */
function makeLogits(pattern: Pattern, tokens: number, experts: number, seed: number): Float32Array {
  const r = rng(seed);
  const z = randn(tokens * (experts + 1), seed + 1);
  const logits = new Float32Array(tokens * (experts + 1));
  for (let i = 0; i < logits.length; i++) {
    if (pattern === 'wide') logits[i] = z[i] * 8;
    // Gaps of 2e-4: far below the logit scale, far above f32 rounding; equal steps give exact ties too.
    else if (pattern === 'near-ties') logits[i] = 1.5 + 2e-4 * Math.floor(r() * 64);
    // Small integers: most chosen experts tie with others.
    else logits[i] = Math.round(z[i] * 1.5);
  }
  for (let t = 0; t < tokens; t++) logits[t * (experts + 1) + experts] = t === 0 ? 100 : z[t] * 3;
  return logits;
}

describeOnAdapters('moe_route', (ctx) => {
  for (const experts of [16, 256, 512]) {
    for (const topk of [4, 8, 10]) {
      for (const tokens of [1, 3, 33]) {
        it(`E=${experts} topk=${topk} T=${tokens}`, async () => {
          const c = ctx();
          for (const pattern of ['wide', 'near-ties', 'ties'] as const) {
            const logits = makeLogits(pattern, tokens, experts, experts * 7 + topk * 3 + tokens);
            const ids = c.storage('ids', tokens * topk * 4);
            const gates = c.storage('gates', tokens * (topk + 1) * 4);
            c.run([await moeRoute(c, { logits: upload(c, logits), tokens, experts, topk, ids, gates })]);
            const want = reference(logits, tokens, experts, topk);
            const gotIds = await readU32(c, ids, tokens * topk);
            const gotGates = await readF32(c, gates, tokens * (topk + 1));
            expect(Array.from(gotIds), `${pattern} ids`).toEqual(Array.from(want.ids));
            expectClose(gotGates, want.gates, 1e-6, 1e-5, `${pattern} gates`);
            for (let t = 0; t < tokens; t++) {
              const row = logits.subarray(t * (experts + 1));
              const chosen = Array.from(gotIds.subarray(t * topk, (t + 1) * topk));
              let sum = 0;
              for (let j = 0; j < topk; j++) sum += gotGates[t * (topk + 1) + j];
              expect(Math.abs(sum - 1), `${pattern} t=${t} weights sum ${sum}`).toBeLessThan(4e-6);
              // Lowest id wins a tie: no unchosen expert ties the last chosen one with a lower id.
              const last = chosen[topk - 1];
              for (let e = 0; e < last; e++) {
                if (row[e] === row[last]) expect(chosen, `${pattern} t=${t}: expert ${e} ties ${last}`).toContain(e);
              }
              for (let j = 1; j < topk; j++) {
                const [a, b] = [chosen[j - 1], chosen[j]];
                expect(row[a] > row[b] || (row[a] === row[b] && a < b), `${pattern} t=${t} order at ${j}`).toBe(true);
              }
            }
          }
        });
      }
    }
  }

  it('every expert chosen (topk = E) and equal logits', async () => {
    const c = ctx();
    const [tokens, experts, topk] = [2, 16, 16];
    const logits = new Float32Array(tokens * (experts + 1)).fill(0.25);
    const ids = c.storage('ids', tokens * topk * 4);
    const gates = c.storage('gates', tokens * (topk + 1) * 4);
    c.run([await moeRoute(c, { logits: upload(c, logits), tokens, experts, topk, ids, gates })]);
    expect(Array.from(await readU32(c, ids, tokens * topk))).toEqual([...Array(16).keys(), ...Array(16).keys()]);
    const want = reference(logits, tokens, experts, topk);
    expectClose(await readF32(c, gates, tokens * (topk + 1)), want.gates, 1e-7, 1e-6);
  });

  it('rejects bad shapes', async () => {
    const c = ctx();
    const b = c.storage('b', 1024);
    const g = c.storage('g', 1024);
    const l = c.storage('l', 1024);
    await expect(moeRoute(c, { logits: l, tokens: 1, experts: 8, topk: 9, ids: b, gates: g })).rejects.toThrow(/moe_route: topk/);
    await expect(moeRoute(c, { logits: l, tokens: 64, experts: 16, topk: 4, ids: b, gates: g })).rejects.toThrow(/moe_route: logits/);
  });
});
