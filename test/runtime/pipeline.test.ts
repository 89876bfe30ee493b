import { describe, expect, it } from 'vitest';
import { StageError } from '../../src/errors.ts';
import { encodeFrame, readFrames } from '../../src/runtime/pipeline/frame.ts';
import { type Hello, PROTOCOL_VERSION, refusal, splitLayers } from '../../src/runtime/pipeline/handshake.ts';

async function* chunksOf(bytes: Uint8Array, sizes: number[]): AsyncGenerator<Uint8Array> {
  let at = 0;
  for (let i = 0; at < bytes.length; i++) {
    const n = sizes[i % sizes.length];
    yield bytes.subarray(at, at + n);
    at += n;
  }
}

async function collect(chunks: AsyncIterable<Uint8Array>) {
  const out = [];
  for await (const f of readFrames(chunks, 'peer')) out.push(f);
  return out;
}

describe('frames', () => {
  const rows = new Float32Array([1.5, -2, 3.25, 1e-30, Number.NaN]);
  const frames = [
    encodeFrame({ type: 'step', slot: 1, position: 7 }, new Uint8Array(rows.buffer)),
    encodeFrame({ type: 'ready' }),
    encodeFrame({ type: 'picked', id: 3 }, Uint8Array.of(9, 8, 7)),
  ];
  const stream = new Uint8Array(frames.reduce((n, f) => n + f.length, 0));
  frames.reduce((at, f) => (stream.set(f, at), at + f.length), 0);

  it('come back whole however the stream is cut (one byte at a time, across frame borders)', async () => {
    for (const sizes of [[1], [3, 11], [stream.length], [7, 1, 64]]) {
      const got = await collect(chunksOf(stream, sizes));
      expect(got.map((f) => f.header)).toEqual([{ type: 'step', slot: 1, position: 7 }, { type: 'ready' }, { type: 'picked', id: 3 }]);
      expect(new Float32Array(got[0].body.slice().buffer)).toEqual(rows);
      expect(got[1].body.length).toBe(0);
      expect([...got[2].body]).toEqual([9, 8, 7]);
    }
  });

  it('a stream that ends inside a frame, a length past the limit or a header without a type is a StageError naming the peer', async () => {
    await expect(collect(chunksOf(stream.subarray(0, stream.length - 2), [5]))).rejects.toThrow(/peer: closed the connection inside a frame/);
    const huge = Uint8Array.of(0xff, 0xff, 0xff, 0x7f);
    await expect(collect(chunksOf(huge, [4]))).rejects.toThrow(StageError);
    const untyped = encodeFrame({ kind: 'x' } as unknown as { type: string });
    await expect(collect(chunksOf(untyped, [4]))).rejects.toThrow(/without a "type"/);
    const bad = new Uint8Array(10);
    new DataView(bad.buffer).setUint32(0, 6, true);
    new DataView(bad.buffer).setUint32(4, 2, true);
    bad.set([0x7b, 0x7b], 8);
    await expect(collect(chunksOf(bad, [10]))).rejects.toThrow(/not JSON/);
  });
});

describe('splitLayers', () => {
  const even = { layers: Array(8).fill(10), first: 0, last: 0 };
  it('splits equal layers evenly over equal budgets, contiguous and covering every layer', () => {
    expect(splitLayers(even, [1, 1])).toEqual([
      { first: 0, end: 4 },
      { first: 4, end: 8 },
    ]);
    expect(splitLayers(even, [1, 1, 1, 1]).map((r) => r.end - r.first)).toEqual([2, 2, 2, 2]);
  });

  it('gives a stage with twice the memory twice the layers, and counts the embedding and LM head', () => {
    expect(splitLayers({ layers: Array(9).fill(10), first: 0, last: 0 }, [2, 1]).map((r) => r.end - r.first)).toEqual([6, 3]);
    expect(splitLayers({ ...even, first: 40 }, [1, 1]).map((r) => r.end - r.first)).toEqual([2, 6]);
    expect(splitLayers({ ...even, last: 40 }, [1, 1]).map((r) => r.end - r.first)).toEqual([6, 2]);
  });

  it('gives every stage a layer even when one stage would rather take all, and refuses more stages than layers', () => {
    expect(splitLayers({ layers: [1, 1, 1], first: 0, last: 1000 }, [1, 1, 1])).toEqual([
      { first: 0, end: 1 },
      { first: 1, end: 2 },
      { first: 2, end: 3 },
    ]);
    expect(() => splitLayers(even, Array(9).fill(1))).toThrow(/9 stages need at least 9 layers/);
  });
});

describe('handshake', () => {
  const leader = { name: 'tiny', revision: 'abc', dtype: 'f16' as const };
  const hello = (over: Partial<Hello> = {}): Hello => ({
    type: 'hello',
    protocol: PROTOCOL_VERSION,
    stage: 1,
    stages: 3,
    model: leader,
    memoryBytes: 0,
    prefillChunk: 512,
    adapter: 'gpu',
    ...over,
  });

  it('takes a stage of the same model, dtype, protocol and group', () => {
    expect(refusal(hello(), leader, 3, new Set())).toBeUndefined();
  });

  it('refuses another revision, dtype, protocol, group size, stage index or a stage already there, saying which', () => {
    expect(refusal(hello({ model: { ...leader, name: 'other', revision: 'def' } }), leader, 3, new Set())).toMatch(
      /runs model other \(revision def\), stage 0 runs tiny \(revision abc\)/,
    );
    expect(refusal(hello({ model: { ...leader, dtype: 'q4' } }), leader, 3, new Set())).toMatch(/holds q4 weights, stage 0 f16/);
    expect(refusal(hello({ protocol: PROTOCOL_VERSION + 1 }), leader, 3, new Set())).toMatch(/speaks protocol/);
    expect(refusal(hello({ stages: 4 }), leader, 3, new Set())).toMatch(/started for 4 stages, stage 0 runs 3/);
    expect(refusal(hello({ stage: 0 }), leader, 3, new Set())).toMatch(/calls itself stage 0/);
    expect(refusal(hello({ stage: 3 }), leader, 3, new Set())).toMatch(/calls itself stage 3/);
    expect(refusal(hello(), leader, 3, new Set([1]))).toMatch(/already connected/);
  });
});
