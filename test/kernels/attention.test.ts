import { describe, expect, it } from 'vitest';
import type { GpuContext } from '../../src/gpu/context.ts';
import { attentionPrepare } from '../../src/kernels/attention_prepare.ts';
import { attention, attentionScratchBytes, defaultSplits } from '../../src/kernels/attention.ts';
import { ropeTable } from '../../src/kernels/rope.ts';
import { SKIPPED_ROW } from '../../src/kernels/rows.ts';
import * as ref from '../../src/reference/attention.ts';
import { actBuffer, actTolerance, describeOnAdapters, readAct, roundAct, upload, uploadAct, writeAct } from '../helpers/gpu.ts';
import { randn } from '../helpers/random.ts';
import { expectClose } from '../helpers/compare.ts';

const THETA = 1e7;
const EPS = 1e-6;

interface Shape {
  nq: number;
  nkv: number;
  headDim: number;
  rotaryDim: number;
  capacity: number;
}

/** A layer's attention state on the GPU and its CPU twin, advanced one forward call at a time. */
function layer(c: GpuContext, s: Shape, seed: number) {
  const { nq, nkv, headDim: D, rotaryDim: R, capacity } = s;
  const kOffset = 2 * nq * D;
  const vOffset = kOffset + nkv * D;
  const projStride = vOffset + nkv * D + 3; // padded, and not a multiple of 4
  const qNorm = randn(D, seed + 1, 0.3);
  const kNorm = randn(D, seed + 2, 0.3);
  const cacheLen = nkv * capacity * D;
  const cpu = { kCache: new Float32Array(cacheLen), vCache: new Float32Array(cacheLen) };
  const gpu = {
    kCache: actBuffer(c, 'k', cacheLen),
    vCache: actBuffer(c, 'v', cacheLen),
    qNorm: upload(c, qNorm),
    kNorm: upload(c, kNorm),
    rope: upload(c, ropeTable(capacity, R, THETA)),
    step: c.createBuffer('step', 16, GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST),
  };
  let call = 0;
  return {
    cpu,
    gpu,
    /**
     * One forward call: `tokens` new tokens at `pos`; compares q, both caches and the output. The twin then takes q and
     * the K cache as the GPU stored them (checked just before), so attention is judged on its own inputs: with f16
     * activations a 1-ulp difference in one q element moves a short context's output by ~1e-4.
     */
    async forward(pos: number, tokens: number, opts: { splits?: number; minSplitKeys?: number } = {}) {
      const proj = roundAct(c, randn(tokens * projStride, seed * 100 + ++call, 1.5));
      const qExact = ref.attentionPrepare({
        proj,
        projStride,
        kOffset,
        vOffset,
        tokens,
        nq,
        nkv,
        headDim: D,
        rotaryDim: R,
        theta: THETA,
        qNorm,
        kNorm,
        eps: EPS,
        pos,
        kCache: cpu.kCache,
        vCache: cpu.vCache,
        capacity,
      });
      c.write(gpu.step, 0, new Uint32Array([pos, 0, 0, 0]));
      const projBuf = uploadAct(c, proj);
      const qBuf = actBuffer(c, 'q', tokens * nq * D);
      const out = actBuffer(c, 'out', tokens * nq * D);
      const common = { proj: projBuf, projStride, tokens, nq, nkv, headDim: D, kCache: gpu.kCache, vCache: gpu.vCache, capacity, step: gpu.step };
      const prep = await attentionPrepare(c, {
        ...common,
        kOffset,
        vOffset,
        rotaryDim: R,
        qNorm: gpu.qNorm,
        kNorm: gpu.kNorm,
        eps: EPS,
        rope: gpu.rope,
        q: qBuf,
      });
      const scratch = c.storage('partials', attentionScratchBytes({ maxTokens: tokens, nq, capacity, headDim: D, ...opts }));
      const att = await attention(c, { ...common, q: qBuf, out, scratch, ...opts });
      c.run([prep, ...att]);
      const q = await readAct(c, qBuf, qExact.length);
      const kCache = await readAct(c, gpu.kCache, cacheLen);
      expectClose(q, qExact, ...actTolerance(c, 1e-5, 1e-5), 'q');
      expectClose(kCache, cpu.kCache, ...actTolerance(c, 1e-5, 1e-5), 'k cache');
      expectClose(await readAct(c, gpu.vCache, cacheLen), cpu.vCache, 1e-30, 0, 'v cache (exact copy)');
      cpu.kCache.set(kCache);
      const want = ref.attention({ q, proj, projStride, tokens, nq, nkv, headDim: D, kCache: cpu.kCache, vCache: cpu.vCache, capacity, pos });
      expectClose(await readAct(c, out, want.length), want, ...actTolerance(c, 1e-5, 1e-4), 'out');
      return att.length;
    },
  };
}

describe('ropeTable', () => {
  it('matches cos/sin of p·θ^(-2i/R), far positions included', () => {
    const t = ropeTable(262144, 64, THETA);
    for (const p of [0, 1, 45, 100000, 262143]) {
      for (const i of [0, 1, 17, 31]) {
        const a = p * THETA ** (-i / 32);
        expect(t[(p * 32 + i) * 2]).toBeCloseTo(Math.cos(a), 6);
        expect(t[(p * 32 + i) * 2 + 1]).toBeCloseTo(Math.sin(a), 6);
      }
    }
  });
});

describeOnAdapters(
  'attention',
  (ctx) => {
    // Real Qwen3.5 heads (D 256, R 64) with the GQA ratios of the family, and a head of 100 (not a multiple of the workgroup).
    const shapes: Shape[] = [
      { nq: 2, nkv: 1, headDim: 256, rotaryDim: 64, capacity: 64 },
      { nq: 4, nkv: 2, headDim: 256, rotaryDim: 64, capacity: 64 },
      { nq: 8, nkv: 2, headDim: 256, rotaryDim: 64, capacity: 64 },
      { nq: 3, nkv: 3, headDim: 256, rotaryDim: 64, capacity: 64 },
      { nq: 4, nkv: 2, headDim: 100, rotaryDim: 20, capacity: 50 },
    ];
    shapes.forEach((s, n) => {
      const name = `nq=${s.nq} nkv=${s.nkv} D=${s.headDim}`;
      for (const tokens of [1, 7, 40]) {
        it(`${name}: prefill T=${tokens} at pos 0`, async () => {
          await layer(ctx(), s, 10 * n + tokens).forward(0, tokens);
        });
      }
      it(`${name}: T=40, then pos 40 with T=1 and T=5 reading the cache`, async () => {
        const l = layer(ctx(), s, 10 * n + 5);
        await l.forward(0, 40);
        await l.forward(40, 1);
        await l.forward(40, 5); // re-verification: overwrites position 40
      });
    });

    it('forced key splits merge to the same result (decode and T=5)', async () => {
      const l = layer(ctx(), { nq: 8, nkv: 2, headDim: 256, rotaryDim: 64, capacity: 64 }, 77);
      expect(await l.forward(0, 40, { splits: 1 })).toBe(1);
      expect(await l.forward(40, 1, { splits: 3, minSplitKeys: 1 })).toBe(2); // chunks of 16, 16, 9 keys
      expect(await l.forward(41, 5, { splits: 7, minSplitKeys: 1 })).toBe(2); // some splits are empty
    });

    it('long context: decode at pos 700 with default splits, single pass and T=3', async () => {
      const c = ctx();
      const s: Shape = { nq: 8, nkv: 2, headDim: 256, rotaryDim: 64, capacity: 768 };
      const l = layer(c, s, 99);
      // Fill positions 0..699 directly (as earlier calls would have), both on the CPU and the GPU.
      const filled = s.nkv * s.capacity * s.headDim;
      const k = randn(filled, 5, 1);
      const v = randn(filled, 6, 1);
      for (let g = 0; g < s.nkv; g++) k.fill(0, (g * s.capacity + 700) * s.headDim, (g + 1) * s.capacity * s.headDim);
      l.cpu.kCache.set(roundAct(c, k));
      l.cpu.vCache.set(
        roundAct(
          c,
          v.map((x, i) => (k[i] === 0 ? 0 : x)),
        ),
      );
      writeAct(c, l.gpu.kCache, l.cpu.kCache);
      writeAct(c, l.gpu.vCache, l.cpu.vCache);
      expect(defaultSplits(1, 8, 768)).toBe(3);
      expect(await l.forward(700, 1)).toBe(2);
      expect(await l.forward(700, 1, { splits: 1 })).toBe(1);
      expect(await l.forward(700, 3, { splits: 4, minSplitKeys: 16 })).toBe(2);
    });

    // A verification: rows of one sequence at the positions given, one cache; each row sees the rows before it.
    for (const splits of [1, 3]) {
      it(`rows of one sequence at positions 12..15 in one cache equal four tokens at 12 (splits ${splits})`, async () => {
        const c = ctx();
        const s: Shape = { nq: 4, nkv: 2, headDim: 256, rotaryDim: 64, capacity: 40 };
        const { nq, nkv, headDim: D, rotaryDim: R, capacity } = s;
        const rows = 4;
        const kOffset = 2 * nq * D;
        const vOffset = kOffset + nkv * D;
        const projStride = vOffset + nkv * D + 3;
        const cacheLen = nkv * capacity * D;
        const cpuK = roundAct(c, randn(cacheLen, 300, 1));
        const cpuV = roundAct(c, randn(cacheLen, 301, 1));
        const kCache = uploadAct(c, cpuK, 'k');
        const vCache = uploadAct(c, cpuV, 'v');
        const proj = roundAct(c, randn(rows * projStride, 302, 1.5));
        const qNorm = randn(D, 303, 0.3);
        const kNorm = randn(D, 304, 0.3);
        const qBuf = actBuffer(c, 'q', rows * nq * D);
        const out = actBuffer(c, 'out', rows * nq * D);
        const common = {
          proj: uploadAct(c, proj),
          projStride,
          tokens: rows,
          nq,
          nkv,
          headDim: D,
          kCache,
          vCache,
          capacity,
          positions: upload(c, Uint32Array.from([12, 13, 14, 15]), 'positions'),
          oneSequence: true,
        };
        const prep = await attentionPrepare(c, {
          ...common,
          kOffset,
          vOffset,
          rotaryDim: R,
          qNorm: upload(c, qNorm),
          kNorm: upload(c, kNorm),
          eps: EPS,
          rope: upload(c, ropeTable(capacity, R, THETA)),
          q: qBuf,
        });
        const scratch = c.storage('partials', attentionScratchBytes({ maxTokens: rows, nq, capacity, headDim: D, splits, minSplitKeys: 1 }));
        c.run([prep, ...(await attention(c, { ...common, q: qBuf, out, scratch, splits, minSplitKeys: 1 }))]);
        const q = ref.attentionPrepare({
          proj,
          projStride,
          kOffset,
          vOffset,
          tokens: rows,
          nq,
          nkv,
          headDim: D,
          rotaryDim: R,
          theta: THETA,
          qNorm,
          kNorm,
          eps: EPS,
          pos: 12,
          kCache: cpuK,
          vCache: cpuV,
          capacity,
        });
        const gotQ = await readAct(c, qBuf, rows * nq * D);
        const gotK = await readAct(c, kCache, cacheLen);
        expectClose(gotQ, q, ...actTolerance(c, 1e-5, 1e-5), 'q');
        expectClose(gotK, cpuK, ...actTolerance(c, 1e-5, 1e-5), 'k cache');
        expectClose(await readAct(c, vCache, cacheLen), cpuV, 1e-30, 0, 'v cache');
        const want = ref.attention({ q: gotQ, proj, projStride, tokens: rows, nq, nkv, headDim: D, kCache: gotK, vCache: cpuV, capacity, pos: 12 });
        expectClose(await readAct(c, out, rows * nq * D), want, ...actTolerance(c, 1e-5, 1e-4), 'out');
      });
    }

    // Continuous batching: each row the next token of a sequence of its own, in its own cache; a skipped row writes nothing.
    for (const splits of [1, 3]) {
      it(`rows: three sequences at positions 5, skipped, 30 (splits ${splits})`, async () => {
        const c = ctx();
        const s: Shape = { nq: 4, nkv: 2, headDim: 256, rotaryDim: 64, capacity: 40 };
        const { nq, nkv, headDim: D, rotaryDim: R, capacity } = s;
        const rows = 3;
        const positions = [5, SKIPPED_ROW, 30];
        const kOffset = 2 * nq * D;
        const vOffset = kOffset + nkv * D;
        const projStride = vOffset + nkv * D + 3;
        const cacheLen = nkv * capacity * D;
        const kCaches = [0, 1, 2].map((r) => roundAct(c, randn(cacheLen, 200 + r, 1)));
        const vCaches = [0, 1, 2].map((r) => roundAct(c, randn(cacheLen, 210 + r, 1)));
        const concat = (parts: Float32Array[]) => Float32Array.from(parts.flatMap((a) => Array.from(a)));
        const kCache = uploadAct(c, concat(kCaches), 'k');
        const vCache = uploadAct(c, concat(vCaches), 'v');
        const proj = roundAct(c, randn(rows * projStride, 220, 1.5));
        const qNorm = randn(D, 221, 0.3);
        const kNorm = randn(D, 222, 0.3);
        const qBuf = actBuffer(c, 'q', rows * nq * D);
        const out = actBuffer(c, 'out', rows * nq * D);
        const common = {
          proj: uploadAct(c, proj),
          projStride,
          tokens: rows,
          nq,
          nkv,
          headDim: D,
          kCache,
          vCache,
          capacity,
          positions: upload(c, Uint32Array.from(positions), 'positions'),
        };
        const prep = await attentionPrepare(c, {
          ...common,
          kOffset,
          vOffset,
          rotaryDim: R,
          qNorm: upload(c, qNorm),
          kNorm: upload(c, kNorm),
          eps: EPS,
          rope: upload(c, ropeTable(capacity, R, THETA)),
          q: qBuf,
        });
        const scratch = c.storage('partials', attentionScratchBytes({ maxTokens: rows, nq, capacity, headDim: D, splits, minSplitKeys: 1 }));
        c.run([prep, ...(await attention(c, { ...common, q: qBuf, out, scratch, splits, minSplitKeys: 1 }))]);
        const gotQ = await readAct(c, qBuf, rows * nq * D);
        const gotOut = await readAct(c, out, rows * nq * D);
        const gotK = await readAct(c, kCache, rows * cacheLen);
        const gotV = await readAct(c, vCache, rows * cacheLen);
        for (const r of [0, 2]) {
          const rowProj = proj.slice(r * projStride, (r + 1) * projStride);
          const cpuK = kCaches[r].slice();
          const cpuV = vCaches[r].slice();
          const pos = positions[r];
          const q = ref.attentionPrepare({
            proj: rowProj,
            projStride,
            kOffset,
            vOffset,
            tokens: 1,
            nq,
            nkv,
            headDim: D,
            rotaryDim: R,
            theta: THETA,
            qNorm,
            kNorm,
            eps: EPS,
            pos,
            kCache: cpuK,
            vCache: cpuV,
            capacity,
          });
          expectClose(gotQ.slice(r * nq * D, (r + 1) * nq * D), q, ...actTolerance(c, 1e-5, 1e-5), `q of row ${r}`);
          const k = gotK.slice(r * cacheLen, (r + 1) * cacheLen);
          expectClose(k, cpuK, ...actTolerance(c, 1e-5, 1e-5), `k cache of row ${r}`);
          expectClose(gotV.slice(r * cacheLen, (r + 1) * cacheLen), cpuV, 1e-30, 0, `v cache of row ${r}`);
          const rowQ = gotQ.slice(r * nq * D, (r + 1) * nq * D);
          const want = ref.attention({ q: rowQ, proj: rowProj, projStride, tokens: 1, nq, nkv, headDim: D, kCache: k, vCache: cpuV, capacity, pos });
          expectClose(gotOut.slice(r * nq * D, (r + 1) * nq * D), want, ...actTolerance(c, 1e-5, 1e-4), `out of row ${r}`);
        }
        expect(gotK.slice(cacheLen, 2 * cacheLen), 'the skipped row keeps its keys').toEqual(kCaches[1]);
        expect(gotV.slice(cacheLen, 2 * cacheLen), 'the skipped row keeps its values').toEqual(vCaches[1]);
      });
    }
  },
  { act16: true },
);
