import { describe, expect, it } from 'vitest';
import type { GpuContext } from '../../src/gpu/context.ts';
import type { GatedDeltaNetArgs } from '../../src/kernels/gated_delta_net_args.ts';
import { type ChunkScratch, createChunkScratch, gatedDeltaNetChunk } from '../../src/kernels/gated_delta_net_chunk.ts';
import { gatedDeltaNetStep } from '../../src/kernels/gated_delta_net_step.ts';
import { type GatedDeltaNetRefArgs, gatedDeltaNetChunked, gatedDeltaNetRecurrent, gates } from '../../src/reference/gated_delta_net.ts';
import { l2norm } from '../../src/reference/l2norm.ts';
import { describeOnAdapters, readAct, readF32, roundAct, upload, uploadAct } from '../helpers/gpu.ts';
import { randn, rng } from '../helpers/random.ts';
import { expectClose } from '../helpers/compare.ts';

const DK = 128;
const DV = 128;

/**
 * Inputs shaped like the model's: q/k l2-normed (q scaled by Dk^-0.5), padded qkv and ba rows, and gates whose decay
 * spans g ≈ -1e-4 (A_log = -5, a ≪ 0) to g ≈ -80 per token (A_log = 2.5 with bursts of large a), mixed within chunks.
 */
function makeInputs(seed: number, tokens: number, nk: number, nv: number, initialState = true, dk = DK, dv = DV): GatedDeltaNetRefArgs {
  const qkvStride = 2 * nk * dk + nv * dv + 12;
  const raw = randn(tokens * qkvStride, seed, 1);
  const qkv = l2norm(raw, { tokens, heads: 2 * nk, dim: dk, tokenStride: qkvStride, scaledHeads: nk, scale: dk ** -0.5 });
  const baStride = 2 * nv + 3;
  const bOffset = 1;
  const aOffset = 2 + nv;
  const r = rng(seed + 1);
  const ba = randn(tokens * baStride, seed + 2, 1.5);
  for (let t = 0; t < tokens; t++) {
    for (let h = 0; h < nv; h++) {
      const burst = r() < 0.15 ? 12 : 0;
      ba[t * baStride + aOffset + h] = ba[t * baStride + aOffset + h] * 2 - 3 + burst;
    }
  }
  const aLog = Float32Array.from({ length: nv }, (_, h) => -5 + (7.5 * h) / Math.max(1, nv - 1));
  const dtBias = randn(nv, seed + 3, 1);
  const state = initialState ? randn(nv * dk * dv, seed + 4, 0.5) : new Float32Array(nv * dk * dv);
  return { tokens, nk, nv, dk, dv, qkv, qkvStride, ba, baStride, bOffset, aOffset, aLog, dtBias, state };
}

/** The inputs as the context's activation buffers hold them (qkv and ba rounded to f16 with f16 activations). */
function asActs(c: GpuContext, a: GatedDeltaNetRefArgs): GatedDeltaNetRefArgs {
  return { ...a, qkv: roundAct(c, a.qkv), ba: roundAct(c, a.ba) };
}

/** Tokens [t0, t0 + n) of the inputs, starting from `state`. */
function slice(a: GatedDeltaNetRefArgs, t0: number, n: number, state: ArrayLike<number>): GatedDeltaNetRefArgs {
  return {
    ...a,
    tokens: n,
    state,
    qkv: a.qkv.slice(t0 * a.qkvStride, (t0 + n) * a.qkvStride),
    ba: a.ba.slice(t0 * a.baStride, (t0 + n) * a.baStride),
  };
}

/**
 * ~1e-4 relative to the tensor's scale (values near zero are judged against it, not against themselves); out with
 * f16 activations ~1e-3 (its own f16 rounding). The state is f32 either way.
 */
function expectNear(got: ArrayLike<number>, want: ArrayLike<number>, label: string, c?: GpuContext): void {
  const tol = c?.activations === 'f16' && label === 'out' ? 1e-3 : 1e-4;
  let max = 0;
  for (let i = 0; i < want.length; i++) max = Math.max(max, Math.abs(want[i]));
  expectClose(got, want, tol * max, tol, label);
}

type Algo = 'step' | 'chunk';

/** Runs one call on the GPU, updating `state` in place; returns out [T, nv, dv]. */
async function runGpu(c: GpuContext, algo: Algo, a: GatedDeltaNetRefArgs, state: GPUBuffer, scratch?: ChunkScratch): Promise<Float32Array> {
  const out = c.storage('out', a.tokens * a.nv * a.dv * c.activationBytes);
  const args: GatedDeltaNetArgs = {
    tokens: a.tokens,
    nk: a.nk,
    nv: a.nv,
    dk: a.dk,
    dv: a.dv,
    qkv: uploadAct(c, a.qkv),
    qkvStride: a.qkvStride,
    ba: uploadAct(c, a.ba),
    baStride: a.baStride,
    bOffset: a.bOffset,
    aOffset: a.aOffset,
    decayParams: upload(c, Float32Array.of(...a.aLog, ...a.dtBias)),
    state,
    out,
  };
  c.run(
    algo === 'step'
      ? await gatedDeltaNetStep(c, args)
      : await gatedDeltaNetChunk(c, { ...args, scratch: scratch ?? createChunkScratch(c, a.tokens, a.nv, a.dk, a.dv) }),
  );
  return readAct(c, out, a.tokens * a.nv * a.dv);
}

const RATIOS = [
  [2, 2],
  [2, 4],
  [1, 4],
] as const;

describe('gated_delta_net reference', () => {
  it('the test inputs span weak to strong decay', () => {
    const a = makeInputs(5, 64, 1, 4);
    const g = Array.from({ length: 64 * 4 }, (_, i) => gates(a, i >> 2, i & 3).g);
    expect(Math.max(...g)).toBeGreaterThan(-1e-3);
    expect(Math.min(...g)).toBeLessThan(-50);
  });

  for (const [nk, nv] of RATIOS) {
    it(`recurrent == chunked in f64, nk=${nk} nv=${nv}, T=130`, () => {
      const a = makeInputs(nk * 10 + nv, 130, nk, nv);
      const rec = gatedDeltaNetRecurrent(a);
      const chk = gatedDeltaNetChunked(a);
      expectClose(chk.out, rec.out, 1e-10, 1e-9, 'out');
      expectClose(chk.state, rec.state, 1e-10, 1e-9, 'state');
    });
  }
});

// One decode token runs through gated_delta_net_decode (its own test); prefill through the chunks (GPUs) or the
// recurrent step (CPU adapters).
describeOnAdapters(
  'gated_delta_net',
  (ctx) => {
    for (const [nk, nv] of RATIOS) {
      for (const T of [1, 5, 64]) {
        it(`step: nk=${nk} nv=${nv} T=${T}`, async () => {
          const c = ctx();
          const a = asActs(c, makeInputs(T * 100 + nk * 10 + nv, T, nk, nv));
          const state = upload(c, Float32Array.from(a.state));
          const want = gatedDeltaNetRecurrent(a);
          expectNear(await runGpu(c, 'step', a, state), want.out, 'out', c);
          expectNear(await readF32(c, state, nv * DK * DV), want.state, 'state', c);
        });
      }
      for (const T of [1, 5, 64, 65, 130]) {
        it(`chunk: nk=${nk} nv=${nv} T=${T}`, async () => {
          const c = ctx();
          const a = asActs(c, makeInputs(T * 100 + nk * 10 + nv + 1, T, nk, nv, T !== 65));
          const state = upload(c, Float32Array.from(a.state));
          const want = gatedDeltaNetRecurrent(a);
          expectNear(await runGpu(c, 'chunk', a, state), want.out, 'out', c);
          expectNear(await readF32(c, state, nv * DK * DV), want.state, 'state', c);
        });
      }
    }

    // Head sizes that are not multiples of the tiles (state columns per workgroup, dk split, 4×4 gram blocks).
    for (const algo of ['step', 'chunk'] as const) {
      it(`${algo}: odd head sizes dk=36 dv=40, T=70`, async () => {
        const c = ctx();
        const a = asActs(c, makeInputs(4242, 70, 1, 2, true, 36, 40));
        const state = upload(c, Float32Array.from(a.state));
        const want = gatedDeltaNetRecurrent(a);
        expectNear(await runGpu(c, algo, a, state), want.out, 'out', c);
        expectNear(await readF32(c, state, 2 * 36 * 40), want.state, 'state', c);
      });
    }

    it('chunk(70) + chunk(60) == one run over 130 tokens, scratch reused', async () => {
      const c = ctx();
      const a = asActs(c, makeInputs(777, 130, 2, 4));
      const scratch = createChunkScratch(c, 70, 4, DK, DV);
      const state = upload(c, Float32Array.from(a.state));
      const got = new Float32Array(130 * 4 * DV);
      got.set(await runGpu(c, 'chunk', slice(a, 0, 70, a.state), state, scratch), 0);
      got.set(await runGpu(c, 'chunk', slice(a, 70, 60, a.state), state, scratch), 70 * 4 * DV);
      const want = gatedDeltaNetRecurrent(a);
      expectNear(got, want.out, 'out', c);
      expectNear(await readF32(c, state, 4 * DK * DV), want.state, 'state', c);
    });

    it('chunk(65) then step(3) == one run over 68 tokens', async () => {
      const c = ctx();
      const a = asActs(c, makeInputs(778, 68, 1, 4, false));
      const state = upload(c, Float32Array.from(a.state));
      const got = new Float32Array(68 * 4 * DV);
      got.set(await runGpu(c, 'chunk', slice(a, 0, 65, a.state), state), 0);
      got.set(await runGpu(c, 'step', slice(a, 65, 3, a.state), state), 65 * 4 * DV);
      const want = gatedDeltaNetRecurrent(a);
      expectNear(got, want.out, 'out', c);
      expectNear(await readF32(c, state, 4 * DK * DV), want.state, 'state', c);
    });

    it('rejects bad shapes and an undersized scratch', async () => {
      const c = ctx();
      const b = () => c.storage('b', 1 << 20);
      const base: GatedDeltaNetArgs = {
        tokens: 2,
        nk: 2,
        nv: 3,
        dk: DK,
        dv: DV,
        qkv: b(),
        qkvStride: 2 * 2 * DK + 3 * DV,
        ba: b(),
        baStride: 6,
        bOffset: 0,
        aOffset: 3,
        decayParams: b(),
        state: b(),
        out: b(),
      };
      await expect(gatedDeltaNetStep(c, base)).rejects.toThrow(/gated_delta_net_step: nv = 3 is not a multiple of nk = 2/);
      const scratch = createChunkScratch(c, 64, 4, DK, DV);
      await expect(gatedDeltaNetChunk(c, { ...base, scratch })).rejects.toThrow(/gated_delta_net_chunk: nv = 3 is not a multiple of nk = 2/);
      await expect(gatedDeltaNetChunk(c, { ...base, nv: 4, qkvStride: 4 * DK + 4 * DV, baStride: 8, aOffset: 4, tokens: 65, scratch })).rejects.toThrow(
        /gated_delta_net_chunk: 65 tokens is more than the scratch's maxTokens 64/,
      );
    });
  },
  { act16: true },
);
