import { expect, it } from 'vitest';
import type { GpuContext } from '../../src/gpu/context.ts';
import { gatedDeltaNetDecode } from '../../src/kernels/gated_delta_net_decode.ts';
import { SKIPPED_ROW } from '../../src/kernels/rows.ts';
import { gatedDeltaNetDecode as reference } from '../../src/reference/gated_delta_net.ts';
import { actBuffer, describeOnAdapters, readAct, readF32, roundAct, upload, uploadAct } from '../helpers/gpu.ts';
import { randn, rng } from '../helpers/random.ts';

interface Shape {
  nk: number;
  nv: number;
  dk: number;
  dv: number;
  K: number;
}

/** max |got - want| within tol of the tensor's largest |want| (values near zero are judged against the tensor's scale). */
function expectNear(got: ArrayLike<number>, want: ArrayLike<number>, tol: number, label: string): void {
  let scale = 0;
  for (let i = 0; i < want.length; i++) scale = Math.max(scale, Math.abs(want[i]));
  let worst = 0;
  for (let i = 0; i < want.length; i++) worst = Math.max(worst, Math.abs(got[i] - want[i]));
  expect(worst, `${label}: max error ${worst} against scale ${scale}`).toBeLessThanOrEqual(tol * scale);
}

/**
 * A projection row as the model's: qkv columns, then z, b and a (a spread so that decays range from ~1 to e^-80),
 * with a few padding columns between the parts so that every offset is read where it should be.
 */
function projection(c: GpuContext, s: Shape, seed: number) {
  const convDim = 2 * s.nk * s.dk + s.nv * s.dv;
  const zOffset = convDim + 3;
  const bOffset = zOffset + s.nv * s.dv + 2;
  const aOffset = bOffset + s.nv + 1;
  const proj = randn(aOffset + s.nv + 5, seed, 1);
  const r = rng(seed + 1);
  for (let h = 0; h < s.nv; h++) proj[aOffset + h] = proj[aOffset + h] * 2 - 3 + (r() < 0.2 ? 12 : 0);
  return { proj: roundAct(c, proj), zOffset, bOffset, aOffset, convDim };
}

/**
 * A layer's weights and `rows` projection rows (padded to a stride of their own), as the reference reads them and
 * uploaded as the kernel takes them.
 */
function layerRows(c: GpuContext, s: Shape, rows: number, seed: number) {
  const convDim = 2 * s.nk * s.dk + s.nv * s.dv;
  const weights = {
    convW: randn(convDim * s.K, seed, 0.5),
    wStride: s.K,
    aLog: Float32Array.from({ length: s.nv }, (_, h) => -3 + h / 2),
    dtBias: randn(s.nv, seed + 1, 1),
    normW: randn(s.dv, seed + 2, 0.3).map((v) => 1 + v),
    eps: 1e-6,
  };
  const p = Array.from({ length: rows }, (_, r) => projection(c, s, seed + 10 + r));
  const projStride = p[0].proj.length + 3;
  const proj = new Float32Array(rows * projStride);
  p.forEach((row, r) => proj.set(row.proj, r * projStride));
  const uploaded = {
    ...s,
    kernelSize: s.K,
    proj: uploadAct(c, proj, 'proj'),
    projStride,
    zOffset: p[0].zOffset,
    bOffset: p[0].bOffset,
    aOffset: p[0].aOffset,
    convW: upload(c, weights.convW, 'conv w'),
    wStride: s.K,
    decayParams: upload(c, Float32Array.of(...weights.aLog, ...weights.dtBias), 'decay params'),
    normW: upload(c, weights.normW, 'norm w'),
    eps: weights.eps,
  };
  return { convDim, weights, p, uploaded };
}

describeOnAdapters(
  'gated_delta_net_decode',
  (ctx) => {
    // The real head sizes (0.8B: 16 value heads per 16 key heads; 9B and 35B-A3B: 32 per 16), then awkward ones:
    // three value heads per key head, a key size that is not a power of two, conv kernels of 2 and 3 taps.
    const shapes: [Shape, number][] = [
      [{ nk: 16, nv: 16, dk: 128, dv: 128, K: 4 }, 0],
      [{ nk: 16, nv: 32, dk: 128, dv: 128, K: 4 }, 2],
      [{ nk: 2, nv: 6, dk: 64, dv: 32, K: 3 }, 5],
      [{ nk: 1, nv: 4, dk: 100, dv: 64, K: 2 }, 1],
    ];
    for (const [s, start] of shapes) {
      it(`nk=${s.nk} nv=${s.nv} dk=${s.dk} dv=${s.dv} K=${s.K}: three tokens from position ${start} equal conv + l2norm + step + gated norm`, async () => {
        const c = ctx();
        const seed = s.nk * 31 + s.nv * 7 + s.dk + s.K;
        const convDim = 2 * s.nk * s.dk + s.nv * s.dv;
        const wStride = s.K + 1;
        const convW = randn(convDim * wStride, seed + 2, 0.5);
        let convState = roundAct(c, randn(s.K * convDim, seed + 3, 1));
        let state: ArrayLike<number> = randn(s.nv * s.dk * s.dv, seed + 4, 0.5);
        const aLog = Float32Array.from({ length: s.nv }, (_, h) => -5 + (7.5 * h) / Math.max(1, s.nv - 1));
        const dtBias = randn(s.nv, seed + 5, 1);
        const normW = randn(s.dv, seed + 6, 0.3).map((v) => 1 + v);
        const eps = 1e-6;

        const buffers = {
          convW: upload(c, convW, 'conv w'),
          convState: uploadAct(c, convState, 'conv state'),
          state: upload(c, Float32Array.from(state), 'state'),
          decayParams: upload(c, Float32Array.of(...aLog, ...dtBias), 'decay params'),
          normW: upload(c, normW, 'norm w'),
        };
        const y = actBuffer(c, 'y', s.nv * s.dv);
        for (let t = 0; t < 3; t++) {
          const p = projection(c, s, seed + 10 * t);
          const position = start + t;
          c.run([
            await gatedDeltaNetDecode(c, {
              ...s,
              kernelSize: s.K,
              ...buffers,
              proj: uploadAct(c, p.proj, 'proj'),
              zOffset: p.zOffset,
              bOffset: p.bOffset,
              aOffset: p.aOffset,
              wStride,
              positions: upload(c, Uint32Array.of(position), 'positions'),
              eps,
              y,
            }),
          ]);
          const want = reference({
            ...s,
            kernelSize: s.K,
            proj: p.proj,
            zOffset: p.zOffset,
            bOffset: p.bOffset,
            aOffset: p.aOffset,
            convW,
            wStride,
            convState,
            position,
            aLog,
            dtBias,
            state,
            normW,
            eps,
          });
          // Intermediates stay f32 in the kernel; with f16 activations only y is rounded (and the inputs, as the reference reads them).
          expectNear(await readAct(c, y, s.nv * s.dv), want.y, c.activations === 'f16' ? 2e-3 : 2e-4, `y (token ${t})`);
          expectNear(await readF32(c, buffers.state, s.nv * s.dk * s.dv), want.state, 1e-4, `state (token ${t})`);
          expect(await readAct(c, buffers.convState, s.K * convDim), `conv ring (token ${t})`).toEqual(want.convState);
          convState = want.convState;
          state = await readF32(c, buffers.state, s.nv * s.dk * s.dv);
        }
      });
    }

    it('rows: each row a sequence of its own (its position, projection, ring, state and output), a skipped row untouched', async () => {
      const c = ctx();
      const s: Shape = { nk: 2, nv: 4, dk: 64, dv: 32, K: 4 };
      const rows = 3;
      const { convDim, weights, p, uploaded } = layerRows(c, s, rows, 71);
      const rings = [0, 1, 2].map((r) => roundAct(c, randn(s.K * convDim, 90 + r, 1)));
      const states = [0, 1, 2].map((r) => randn(s.nv * s.dk * s.dv, 95 + r, 0.5));
      const concat = (parts: Float32Array[]) => Float32Array.from(parts.flatMap((a) => Array.from(a)));
      const convState = uploadAct(c, concat(rings), 'rings');
      const state = upload(c, concat(states), 'states');
      const yStride = s.nv * s.dv + 5;
      const y = actBuffer(c, 'y', rows * yStride);
      const positions = [7, SKIPPED_ROW, 2];
      c.run([
        await gatedDeltaNetDecode(c, {
          ...uploaded,
          rows,
          positions: upload(c, Uint32Array.from(positions), 'positions'),
          convState,
          state,
          y,
          yStride,
        }),
      ]);
      const gotY = await readAct(c, y, rows * yStride);
      const gotRings = await readAct(c, convState, rows * s.K * convDim);
      const gotStates = await readF32(c, state, rows * s.nv * s.dk * s.dv);
      for (const r of [0, 2]) {
        const want = reference({ ...s, kernelSize: s.K, ...weights, ...p[r], convState: rings[r], position: positions[r], state: states[r] });
        const n = s.nv * s.dk * s.dv;
        expectNear(gotY.slice(r * yStride, r * yStride + s.nv * s.dv), want.y, c.activations === 'f16' ? 2e-3 : 2e-4, `y of row ${r}`);
        expectNear(gotStates.slice(r * n, (r + 1) * n), want.state, 1e-4, `state of row ${r}`);
        expect(gotRings.slice(r * s.K * convDim, (r + 1) * s.K * convDim), `ring of row ${r}`).toEqual(want.convState);
      }
      expect(gotRings.slice(s.K * convDim, 2 * s.K * convDim), 'the skipped row keeps its ring').toEqual(rings[1]);
      expect(gotStates.slice(s.nv * s.dk * s.dv, 2 * s.nv * s.dk * s.dv), 'the skipped row keeps its state').toEqual(states[1]);
    });

    // Rows of one sequence (a verification of drafts): the small shape, the 9B/35B-A3B heads with 4 rows from position 1
    // (taps before position 0 read the zeroed ring), a conv kernel of 3 with 3 value heads per key head, and one row
    // (its state still goes to slot 1).
    const sequences: [Shape, number, number][] = [
      [{ nk: 2, nv: 4, dk: 64, dv: 32, K: 4 }, 9, 3],
      [{ nk: 16, nv: 32, dk: 128, dv: 128, K: 4 }, 1, 4],
      [{ nk: 1, nv: 3, dk: 100, dv: 64, K: 3 }, 5, 3],
      [{ nk: 2, nv: 4, dk: 64, dv: 32, K: 4 }, 0, 1],
    ];
    for (const [s, start, rows] of sequences) {
      it(`rows of one sequence, nv=${s.nv} dk=${s.dk} K=${s.K}: ${rows} rows from position ${start} in one dispatch equal ${rows} decode steps`, async () => {
        const c = ctx();
        const seed = 170 + s.nv + s.K;
        const { convDim, weights, p, uploaded } = layerRows(c, s, rows, seed);
        const n = s.nv * s.dk * s.dv;
        let ring = roundAct(c, randn(s.K * convDim, seed + 3, 1));
        if (start < s.K - 1) ring.fill(0, ((start + 1) % s.K) * convDim);
        // The ring, then rows - 1 pending slots (filled, to see that they are overwritten).
        const convState = new Float32Array((s.K + rows - 1) * convDim).fill(7);
        convState.set(ring);
        let state: ArrayLike<number> = randn(n, seed + 4, 0.5);
        // Slot 0 the sequence's state; slots 1..rows get the state after each row.
        const slots = new Float32Array((rows + 1) * n);
        slots.set(state);
        const buffers = {
          ...uploaded,
          sequenceRows: rows,
          positions: upload(
            c,
            Uint32Array.from({ length: rows }, (_, r) => start + r),
            'positions',
          ),
          convState: uploadAct(c, convState, 'ring'),
          state: upload(c, slots, 'states'),
          y: actBuffer(c, 'y', rows * s.nv * s.dv),
        };
        c.run([await gatedDeltaNetDecode(c, buffers)]);
        const gotY = await readAct(c, buffers.y, rows * s.nv * s.dv);
        const gotStates = await readF32(c, buffers.state, (rows + 1) * n);
        const gotRing = await readAct(c, buffers.convState, (s.K + rows - 1) * convDim);
        expect(gotStates.slice(0, n), 'the sequence slot is only read').toEqual(slots.slice(0, n));
        for (let r = 0; r < rows; r++) {
          const want = reference({ ...s, kernelSize: s.K, ...weights, ...p[r], convState: ring, position: start + r, state });
          expectNear(gotY.slice(r * s.nv * s.dv, (r + 1) * s.nv * s.dv), want.y, c.activations === 'f16' ? 2e-3 : 2e-4, `y of row ${r}`);
          expectNear(gotStates.slice((r + 1) * n, (r + 2) * n), want.state, 1e-4, `state after row ${r}`);
          if (r === 0) expect(gotRing.slice(0, s.K * convDim), 'the ring: row 0 written, nothing else').toEqual(want.convState);
          else expect(gotRing.slice((s.K + r - 1) * convDim, (s.K + r) * convDim), `pending slot of row ${r}`).toEqual(p[r].proj.slice(0, convDim));
          ring = want.convState;
          state = gotStates.slice((r + 1) * n, (r + 2) * n);
        }
      });
    }

    it('rejects heads that do not divide, a value size that is not a power of two, and aliased buffers', async () => {
      const c = ctx();
      const b = (n = 1 << 16) => c.storage('b', n);
      const args = {
        nk: 2,
        nv: 4,
        dk: 64,
        dv: 64,
        proj: b(),
        zOffset: 0,
        bOffset: 0,
        aOffset: 0,
        convW: b(),
        wStride: 4,
        kernelSize: 4,
        convState: b(),
        positions: b(),
        decayParams: b(),
        state: b(),
        normW: b(),
        eps: 1e-6,
        y: b(),
      };
      expect(() => gatedDeltaNetDecode(c, { ...args, nv: 5 })).toThrow(/gated_delta_net_decode: nv = 5 is not a multiple of nk = 2/);
      expect(() => gatedDeltaNetDecode(c, { ...args, dv: 48 })).toThrow(/dv = 48 must be a power of two/);
      expect(() => gatedDeltaNetDecode(c, { ...args, y: args.state })).toThrow(/distinct/);
    });
  },
  { act16: true },
);
