import { expect, it } from 'vitest';
import type { GpuContext } from '../../src/gpu/context.ts';
import { createMoeGroupScratch, maxMoeTiles, moeGroup } from '../../src/kernels/moe_group.ts';
import { moeGroup as reference } from '../../src/reference/moe.ts';
import { describeOnAdapters, readU32, upload } from '../helpers/gpu.ts';
import { rng } from '../helpers/random.ts';

type Mode = 'random' | 'one' | 'few';
const SENTINEL = 0xdeadbeef;

/** [tokens, topk] expert ids: distinct per token ('random', as moe_route makes them), all one expert, or three experts. */
function makeIds(mode: Mode, tokens: number, topk: number, experts: number, seed: number): Uint32Array {
  const r = rng(seed);
  const ids = new Uint32Array(tokens * topk);
  const all = Array.from({ length: experts }, (_, e) => e);
  for (let t = 0; t < tokens; t++) {
    for (let j = 0; j < topk; j++) {
      if (mode === 'random') {
        const k = j + Math.floor(r() * (experts - j));
        [all[j], all[k]] = [all[k], all[j]];
        ids[t * topk + j] = all[j];
      } else if (mode === 'one') ids[t * topk + j] = experts - 2;
      else ids[t * topk + j] = [3, 7, experts - 1][Math.floor(r() * 3)];
    }
  }
  return ids;
}

/** Checks the contract of moe_group, then compares with the canonical grouping (tiles exactly, pairs per expert as sets). */
async function check(
  c: GpuContext,
  ids: Uint32Array,
  experts: number,
  tileTokens: number,
  maxTiles: number,
  bufs: { order: GPUBuffer; tiles: GPUBuffer; args: GPUBuffer },
  label: string,
): Promise<void> {
  const pairs = ids.length;
  const order = await readU32(c, bufs.order, pairs);
  const tiles = await readU32(c, bufs.tiles, maxTiles * 4);
  const args = await readU32(c, bufs.args, 6);
  const total = args[0];
  expect([args[1], args[2], args[3], args[4], args[5]], `${label} args`).toEqual([SENTINEL + 1, SENTINEL + 2, total, SENTINEL + 4, SENTINEL + 5]);
  expect(total, `${label} tiles`).toBeLessThanOrEqual(maxTiles);
  expect(total, `${label} tiles`).toBeGreaterThanOrEqual(Math.ceil(pairs / tileTokens));
  expect(
    Array.from(tiles.subarray(total * 4)).every((v) => v === SENTINEL),
    `${label} tiles past the count untouched`,
  ).toBe(true);
  // order is a permutation of the pairs.
  const seen = new Uint8Array(pairs);
  for (const p of order) {
    expect(p < pairs && !seen[p], `${label} order holds ${p} once`).toBe(true);
    seen[p] = 1;
  }
  // Tiles cover every slot once, with one expert and 1..tileTokens pairs each.
  const covered = new Uint8Array(pairs);
  for (let i = 0; i < total; i++) {
    const [e, start, count, zero] = tiles.subarray(i * 4, i * 4 + 4);
    expect(e < experts && count >= 1 && count <= tileTokens && start + count <= pairs && zero === 0, `${label} tile ${i} = ${[e, start, count, zero]}`).toBe(
      true,
    );
    for (let s = start; s < start + count; s++) {
      expect(covered[s], `${label} slot ${s} in two tiles`).toBe(0);
      covered[s] = 1;
      expect(ids[order[s]], `${label} tile ${i} slot ${s}`).toBe(e);
    }
  }
  expect(
    covered.every((v) => v === 1),
    `${label} every slot in a tile`,
  ).toBe(true);
  const want = reference(ids, experts, tileTokens);
  expect(Array.from(tiles.subarray(0, total * 4)), `${label} tiles vs reference`).toEqual(Array.from(want.tiles));
  // The same pairs per expert run (tiles equal the reference, so the runs line up).
  for (let i = 0; i < want.tiles.length; i += 4) {
    const [start, count] = [want.tiles[i + 1], want.tiles[i + 2]];
    if (i > 0 && want.tiles[i - 4] === want.tiles[i]) continue;
    let end = start + count;
    while (end < pairs && ids[want.order[end]] === want.tiles[i]) end++;
    expect(
      Array.from(order.subarray(start, end)).sort((x, y) => x - y),
      `${label} expert ${want.tiles[i]}`,
    ).toEqual(Array.from(want.order.subarray(start, end)));
  }
}

describeOnAdapters('moe_group', (ctx) => {
  const cases: [number, number, number, number, Mode, Mode][] = [
    [1, 8, 256, 32, 'random', 'random'],
    [37, 4, 16, 16, 'random', 'few'],
    [300, 10, 512, 32, 'random', 'random'],
    [64, 4, 16, 8, 'random', 'one'],
    [500, 10, 512, 32, 'random', 'few'], // 5000 pairs: 20 workgroups in the count and scatter passes
    [600, 8, 64, 32, 'one', 'random'], // 4800 pairs on one expert: 150 tiles
    [45, 6, 300, 16, 'few', 'random'],
    [7, 3, 16, 1, 'random', 'one'],
    [20, 16, 1024, 8, 'random', 'random'],
  ];
  for (const [tokens, topk, experts, tileTokens, first, second] of cases) {
    it(`T=${tokens} topk=${topk} E=${experts} tile=${tileTokens} ${first} then ${second}`, async () => {
      const c = ctx();
      const pairs = tokens * topk;
      const maxTiles = maxMoeTiles(tokens, topk, experts, tileTokens);
      const idsA = makeIds(first, tokens, topk, experts, pairs + experts);
      const idsB = makeIds(second, tokens, topk, experts, pairs * 3 + 1);
      const ids = upload(c, idsA);
      const order = c.storage('order', pairs * 4);
      const tiles = upload(c, new Uint32Array(maxTiles * 4).fill(SENTINEL));
      const args = c.indirect('args', 24);
      c.write(
        args,
        0,
        Uint32Array.from([0, 1, 2, 3, 4, 5], (i) => SENTINEL + i),
      );
      const scratch = createMoeGroupScratch(c, experts);
      const run = await moeGroup(c, { ids, tokens, experts, topk, tileTokens, order, tiles, args, scratch });
      c.run(run);
      await check(c, idsA, experts, tileTokens, maxTiles, { order, tiles, args }, `${first} (1st run)`);
      // Same buffers and dispatches again with other ids: the counters must have been left clean.
      c.write(ids, 0, idsB);
      c.write(tiles, 0, new Uint32Array(maxTiles * 4).fill(SENTINEL));
      c.run(run);
      await check(c, idsB, experts, tileTokens, maxTiles, { order, tiles, args }, `${second} (2nd run)`);
      expect(
        Array.from(await readU32(c, scratch.counts, experts)).every((v) => v === 0),
        'counts re-zeroed',
      ).toBe(true);
    });
  }

  it('rejects bad arguments', async () => {
    const c = ctx();
    const b = () => c.storage('b', 4096);
    const scratch = createMoeGroupScratch(c, 16);
    const base = { ids: b(), tokens: 4, experts: 16, topk: 4, tileTokens: 8, order: b(), tiles: b(), args: c.indirect('args', 24), scratch };
    await expect(moeGroup(c, { ...base, experts: 32 })).rejects.toThrow(/moe_group: scratch/);
    await expect(moeGroup(c, { ...base, args: b() })).rejects.toThrow(/moe_group: args .* INDIRECT/);
    await expect(moeGroup(c, { ...base, tokens: 400 })).rejects.toThrow(/moe_group: ids/);
    expect(() => createMoeGroupScratch(c, 2048)).toThrow(/moe_group: experts/);
  });
});
