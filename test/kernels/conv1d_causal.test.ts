import { expect, it } from 'vitest';
import { conv1dCausal } from '../../src/kernels/conv1d_causal.ts';
import { conv1dCausal as reference } from '../../src/reference/conv1d_causal.ts';
import type { GpuContext } from '../../src/gpu/context.ts';
import { StepParams } from '../../src/gpu/kernel.ts';
import { actBuffer, actTolerance, describeOnAdapters, readAct, roundAct, upload, uploadAct } from '../helpers/gpu.ts';
import { randn } from '../helpers/random.ts';
import { expectClose } from '../helpers/compare.ts';

describeOnAdapters(
  'conv1d_causal',
  (ctx) => {
    // x rows are wider than the channels (the qkv columns of the fused projection); C not a multiple of 64.
    // x and state are activations: rounded to f16 first with f16 activations, so the reference reads what the kernel reads.
    const setup = (c: GpuContext, seed: number, T: number, C: number, K: number, wStride: number) => {
      const xStride = C + 37;
      return {
        x: roundAct(c, randn(T * xStride, seed, 2)),
        w: randn(C * wStride, seed + 1, 0.5),
        state: roundAct(c, randn(K * C, seed + 2)),
        xStride,
        wStride,
      };
    };

    const run = async (a: {
      x: Float32Array;
      xStride: number;
      w: GPUBuffer;
      wStride: number;
      K: number;
      state: GPUBuffer;
      position: number;
      T: number;
      C: number;
    }) => {
      const c = ctx();
      const y = actBuffer(c, 'y', a.T * a.C);
      const step = c.params(StepParams, { pos: a.position });
      c.run([
        await conv1dCausal(c, {
          x: uploadAct(c, a.x),
          xStride: a.xStride,
          w: a.w,
          wStride: a.wStride,
          kernelSize: a.K,
          state: a.state,
          step,
          y,
          tokens: a.T,
          channels: a.C,
        }),
      ]);
      return readAct(c, y, a.T * a.C);
    };

    // position: where token 0 sits, so which ring slots hold its predecessors (a ring position past 2^32 / K too).
    for (const [T, C, K, wStride, position] of [
      [1, 100, 4, 4, 0],
      [3, 100, 4, 4, 7],
      [10, 100, 4, 8, 2],
      [10, 300, 2, 2, 5],
      [5, 70, 8, 8, 13],
      [2, 70, 8, 8, 3],
      [300, 65, 4, 4, 1],
      [1, 65, 3, 4, 4000000001],
    ] as const) {
      it(`one call: T=${T} C=${C} K=${K} at position ${position}`, async () => {
        const c = ctx();
        const s = setup(c, T * 7 + C + K, T, C, K, wStride);
        const state = uploadAct(c, s.state);
        const y = await run({ ...s, w: upload(c, s.w), K, state, position, T, C });
        const want = reference({ x: s.x, xStride: s.xStride, w: s.w, wStride, kernelSize: K, state: s.state, position, tokens: T, channels: C });
        expectClose(y, want.y, ...actTolerance(c, 1e-5, 1e-5), 'y');
        expect(await readAct(c, state, K * C)).toEqual(want.state);
      });
    }

    // Prefill in pieces (3 + 10 tokens), then decode token by token: equals one call over all 16 tokens.
    for (const K of [4, 3]) {
      it(`calls of 3, 10, 1, 1, 1 tokens equal one call (K=${K})`, async () => {
        const c = ctx();
        const C = 130;
        const total = 16;
        const s = setup(c, 99 + K, total, C, K, K);
        const w = upload(c, s.w);
        const state = uploadAct(c, s.state);
        const got = new Float32Array(total * C);
        let t0 = 0;
        for (const T of [3, 10, 1, 1, 1]) {
          const x = s.x.slice(t0 * s.xStride, (t0 + T) * s.xStride);
          got.set(await run({ x, xStride: s.xStride, w, wStride: K, K, state, position: 5 + t0, T, C }), t0 * C);
          t0 += T;
        }
        const want = reference({ x: s.x, xStride: s.xStride, w: s.w, wStride: K, kernelSize: K, state: s.state, position: 5, tokens: total, channels: C });
        expectClose(got, want.y, ...actTolerance(c, 1e-5, 1e-5), 'y');
        // The slots of the last K-1 positions; the ring's one other slot holds an older position either way.
        const ring = await readAct(c, state, K * C);
        for (let p = 5 + total - (K - 1); p < 5 + total; p++) {
          const slot = (p % K) * C;
          expect(ring.slice(slot, slot + C), `slot of position ${p}`).toEqual(want.state.slice(slot, slot + C));
        }
      });
    }

    it('rejects a kernel size outside 2..8 and aliased buffers', async () => {
      const c = ctx();
      const b = c.storage('b', 4096);
      const args = {
        x: b,
        xStride: 8,
        w: c.storage('w', 4096),
        wStride: 9,
        kernelSize: 9,
        state: c.storage('s', 4096),
        step: c.params(StepParams, { pos: 0 }),
        y: c.storage('y', 4096),
        tokens: 2,
        channels: 8,
      };
      expect(() => conv1dCausal(c, args)).toThrow(/conv1d_causal: kernelSize/);
      expect(() => conv1dCausal(c, { ...args, kernelSize: 4, y: b })).toThrow(/conv1d_causal: .*distinct/);
    });
  },
  { act16: true },
);
