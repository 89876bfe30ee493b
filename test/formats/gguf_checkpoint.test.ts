import { afterAll, describe, expect, it } from 'vitest';
import type { Checkpoint, SourceTensor } from '../../src/formats/checkpoint.ts';
import { readGgufHeader } from '../../src/formats/gguf_header.ts';
import { ggufValueHead } from '../../src/formats/gguf_names.ts';
import { ggufSourceTensor } from '../../src/formats/gguf_tensor.ts';
import { bf16BitsToF32, f16BitsToF32, roundToF16 } from '../../src/numeric/half.ts';
import { openCheckpoint } from '../../src/formats/open.ts';
import { parseConfig } from '../../src/model/config.ts';
import { mtpTensors, textModelTensors } from '../../src/model/tensors.ts';
import { ReferenceSession } from '../../src/reference/model.ts';
import { FileSource } from '../../src/storage/file.ts';
import { readJson } from '../../src/formats/source.ts';
import { FIXTURES, type FixtureName, compareLogprobs, fixtureDir, golden, goldenLogprobs } from '../helpers/fixtures.ts';
import {
  type FixtureGguf,
  type FixtureGgufOptions,
  type GgmlTypeName,
  QUANT_BITS,
  removeWrittenGgufs,
  tiledValueOrder,
  writeFixtureGguf,
} from '../helpers/gguf_writer.ts';

afterAll(removeWrittenGgufs);

async function open(options: FixtureGgufOptions, fixture: FixtureName): Promise<{ written: FixtureGguf; checkpoint: Checkpoint }> {
  const written = await writeFixtureGguf(fixture, options);
  return { written, checkpoint: await openCheckpoint(new FileSource(written.dir), written.file) };
}

/** readRows' bytes as numbers, whatever dtype the tensor reports. */
function decode(tensor: SourceTensor, bytes: Uint8Array): Float32Array {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (tensor.dtype === 'f32') return new Float32Array(bytes.slice().buffer);
  const at = (i: number) => view.getUint16(2 * i, true);
  return Float32Array.from({ length: bytes.length / 2 }, (_, i) => (tensor.dtype === 'f16' ? f16BitsToF32(at(i)) : bf16BitsToF32(at(i))));
}

const rowsOf = (shape: number[]) => shape.slice(0, -1).reduce((a, b) => a * b, 1);

async function readAll(tensor: SourceTensor): Promise<Float32Array> {
  return decode(tensor, await tensor.readRows(0, rowsOf(tensor.shape)));
}

/**
 * Worst |actual − fixture| over rows, relative to the error the type allows for that row: 1.5 steps of a 2^bits
 * grid over the row's stored range [−amax, amax] (values as the file stores them, 1 + w for norms).
 */
function worstRowError(actual: Float32Array, hf: Float32Array, stored: Float32Array, cols: number, bits: number): number {
  let worst = 0;
  for (let r = 0; r < hf.length / cols; r++) {
    let amax = 0;
    let err = 0;
    for (let c = r * cols; c < (r + 1) * cols; c++) {
      amax = Math.max(amax, Math.abs(stored[c]));
      err = Math.max(err, Math.abs(actual[c] - hf[c]));
    }
    worst = Math.max(worst, amax === 0 ? err : err / ((3 * amax) / 2 ** bits));
  }
  return worst;
}

/** Every tensor reads back as the writer's quantiser left it, and as the fixture holds it within that type's error. */
async function expectRoundTrip(written: FixtureGguf, checkpoint: Checkpoint): Promise<void> {
  expect([...checkpoint.tensors.keys()].sort()).toEqual([...written.expected.keys()].sort());
  for (const [name, want] of written.expected) {
    const tensor = checkpoint.tensors.get(name)!;
    expect(tensor.shape, name).toEqual(want.shape);
    expect(tensor.fileDtype, name).toBe(want.type);
    const actual = await readAll(tensor);
    expect(actual.length, name).toBe(want.hf.length);
    const mismatch = actual.findIndex((v, i) => !Object.is(v, want.held[i]));
    expect(mismatch, `${name}: element ${mismatch} is ${actual[mismatch]}, the file holds ${want.held[mismatch]}`).toBe(-1);

    const bits = QUANT_BITS[want.type];
    if (bits !== undefined) {
      expect(worstRowError(actual, want.hf, want.stored, want.shape[want.shape.length - 1], bits), name).toBeLessThan(1);
    } else if (!want.transformed) {
      // Unquantised and untransformed: exactly the fixture's values (bf16 values are exact in f32 and, here, f16).
      const exact = want.type === 'F16' ? roundToF16(want.hf) : want.hf;
      expect(Array.from(actual), name).toEqual(Array.from(exact));
    } else {
      // Norms (1 + w) and ssm_a = −exp(A_log) in f32: one f32 rounding each way.
      actual.forEach((v, i) => expect(Math.abs(v - want.hf[i]), `${name}[${i}]`).toBeLessThan(want.type === 'F32' ? 3e-7 : 2e-3));
    }
  }
}

describe('GGUF V-head order', () => {
  it('the converter tiles value heads: GGUF head p holds HF head (p % Nk)·r + p // Nk', () => {
    // convert_hf_to_gguf.py _reorder_v_heads: [Nk, r] → [r, Nk]. Nk = 2, r = 2 and r = 3, worked out by hand.
    expect(Array.from(tiledValueOrder(2, 4, 1))).toEqual([0, 2, 1, 3]);
    expect(Array.from(tiledValueOrder(2, 6, 1))).toEqual([0, 3, 1, 4, 2, 5]);
    expect(Array.from(tiledValueOrder(2, 4, 2))).toEqual([0, 1, 4, 5, 2, 3, 6, 7]);
    // The reader's inverse: HF head h is in GGUF head ggufValueHead(h).
    for (const [nk, nv] of [
      [2, 4],
      [2, 6],
      [16, 64],
      [16, 48],
      [4, 4],
    ]) {
      const order = tiledValueOrder(nk, nv, 1);
      for (let h = 0; h < nv; h++) expect(order[ggufValueHead(h, nk, nv)]).toBe(h);
    }
  });
});

describe('GGUF checkpoints from the fixtures', () => {
  for (const fixture of FIXTURES) {
    it(`${fixture}: config.json matches the fixture's, and every tensor the loader needs is there`, async () => {
      const { checkpoint } = await open({}, fixture);
      const config = parseConfig(await readJson(checkpoint.files, 'config.json'));
      expect(config).toEqual(parseConfig(await readJson(new FileSource(fixtureDir(fixture)), 'config.json')));
      const specs = [...textModelTensors(config, { prefix: 'model.', fusedExperts: false }), ...mtpTensors(config, { prefix: 'model.', fusedExperts: false })];
      for (const p of specs.flatMap((s) => s.sources)) {
        const tensor = checkpoint.tensors.get(p.source);
        expect(tensor, p.source).toBeDefined();
        expect(tensor!.shape, p.source).toEqual(p.shape);
        expect(tensor!.dtype, p.source).toBeDefined();
      }
      expect(checkpoint.location).toMatch(new RegExp(`${fixture}\\.gguf$`));
    });

    it(`${fixture}: F32/F16 tensors read back exactly, with every converter transform undone`, async () => {
      const { written, checkpoint } = await open({}, fixture);
      await expectRoundTrip(written, checkpoint);
      // Unquantised, untransformed tensors keep their own dtype; the rest are f32.
      expect(checkpoint.tensors.get('model.layers.0.linear_attn.in_proj_qkv.weight')!.dtype).toBe('f16');
      expect(checkpoint.tensors.get('model.layers.0.linear_attn.out_proj.weight')!.dtype).toBe('f32');
      expect(checkpoint.tensors.get('model.norm.weight')!.dtype).toBe('f32');
    });

    it(`${fixture}: a mix of quantised types reads back as the file holds it, within each type's error`, async () => {
      const rotation: GgmlTypeName[] = ['Q8_0', 'Q4_0', 'BF16', 'F16'];
      let k = 0;
      // K-quants need rows of 256: ssm_out, attn_output and eh_proj have them in the fixtures.
      const types = (name: string, dims: number[]): GgmlTypeName => {
        if (name.endsWith('ssm_out.weight')) return 'Q4_K'; // K-quant under a column permutation
        if (name.endsWith('attn_output.weight')) return 'Q6_K';
        if (name.endsWith('eh_proj.weight')) return 'Q5_K';
        if (name.endsWith('attn_qkv.weight') || name.endsWith('attn_gate.weight')) return 'Q4_0'; // under a row permutation
        if (name.endsWith('attn_norm.weight') || name === 'output_norm.weight') return 'Q8_0'; // under the 1 + w transform
        if (dims.length === 1 || dims[0] < 32) return 'F32';
        return rotation[k++ % rotation.length];
      };
      const { written, checkpoint } = await open({ types, alignment: 64 }, fixture);
      const used = new Set([...written.expected.values()].map((e) => e.type));
      expect([...used].sort()).toEqual(['BF16', 'F16', 'F32', 'Q4_0', 'Q4_K', 'Q5_K', 'Q6_K', 'Q8_0']);
      await expectRoundTrip(written, checkpoint);
    });

    it(`${fixture}: llama.cpp's other quantised types (Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, IQ4_NL, IQ4_XS, MXFP4) read back as the file holds them`, async () => {
      const superBlocks: GgmlTypeName[] = ['Q2_K', 'Q3_K', 'IQ4_XS'];
      const rotation: GgmlTypeName[] = ['Q4_1', 'IQ4_NL', 'MXFP4', 'Q5_1'];
      let [s, k] = [0, 0];
      const types = (name: string, dims: number[]): GgmlTypeName => {
        if (name.endsWith('ssm_out.weight')) return superBlocks[s++ % superBlocks.length]; // under a column permutation
        if (name.endsWith('attn_output.weight') || name.endsWith('eh_proj.weight')) return 'Q3_K';
        if (name.endsWith('attn_qkv.weight') || name.endsWith('attn_gate.weight')) return 'Q5_0'; // under a row permutation
        if (name.endsWith('attn_norm.weight') || name === 'output_norm.weight') return 'Q4_1'; // under the 1 + w transform
        if (dims.length === 1 || dims[0] < 32) return 'F32';
        return rotation[k++ % rotation.length];
      };
      const { written, checkpoint } = await open({ types, alignment: 64 }, fixture);
      const used = new Set([...written.expected.values()].map((e) => e.type));
      expect([...used].sort()).toEqual(['F32', 'IQ4_NL', 'IQ4_XS', 'MXFP4', 'Q2_K', 'Q3_K', 'Q4_1', 'Q5_0', 'Q5_1']);
      await expectRoundTrip(written, checkpoint);
    });

    it(`${fixture}: rows read in pieces equal the whole tensor's rows`, async () => {
      const types = (name: string, dims: number[]): GgmlTypeName => (dims.length === 1 ? 'F32' : name.includes('ssm_out') ? 'Q6_K' : 'Q8_0');
      const { checkpoint } = await open({ types }, fixture);
      for (const name of [
        'model.layers.0.linear_attn.in_proj_qkv.weight',
        'model.layers.0.linear_attn.conv1d.weight',
        'model.layers.0.linear_attn.in_proj_a.weight',
        'model.layers.0.linear_attn.out_proj.weight',
        'model.embed_tokens.weight',
      ]) {
        const tensor = checkpoint.tensors.get(name)!;
        const cols = tensor.shape[tensor.shape.length - 1];
        const whole = await readAll(tensor);
        const rows = rowsOf(tensor.shape);
        for (const [first, count] of [
          [0, 1],
          [rows - 1, 1],
          [Math.floor(rows / 3), Math.ceil(rows / 2)],
          [5 % rows, Math.min(rows - (5 % rows), 300)],
        ]) {
          const piece = decode(tensor, await tensor.readRows(first, count));
          expect(Array.from(piece), `${name} rows ${first}+${count}`).toEqual(Array.from(whole.subarray(first * cols, (first + count) * cols)));
        }
      }
    });
  }

  it('reads fused ffn_gate_up_exps, a 1-D ffn_gate_inp_shexp and a file without MTP', async () => {
    const { written, checkpoint } = await open({ fusedExperts: true, sharedGate1d: true, mtp: false }, 'tiny-qwen35-moe');
    await expectRoundTrip(written, checkpoint);
    const config = parseConfig(await readJson(checkpoint.files, 'config.json'));
    expect(config.mtpLayers).toBe(0);
    expect(config.numLayers).toBe(8);
    expect([...checkpoint.tensors.keys()].some((n) => n.startsWith('mtp.'))).toBe(false);
  });

  it('gathers rows scattered across a tensor one run at a time, and stops when aborted', async () => {
    const { written } = await open({ types: (_n, dims) => (dims.length === 1 ? 'F32' : 'Q8_0') }, 'tiny-qwen35');
    const source = new FileSource(written.dir);
    const header = await readGgufHeader(source, written.file);
    const info = header.tensors.find((t) => t.name === 'token_embd.weight')!;
    const rows = info.dims[1];
    const view = { name: 'scattered', shape: [rows, info.dims[0]], info, rowBase: 0 };
    const straight = await readAll(ggufSourceTensor(source, written.file, view));
    // Row r reads file row 37·r mod rows: far apart, so each is its own read.
    const scattered = ggufSourceTensor(source, written.file, { ...view, rowOf: (r: number) => (37 * r) % rows });
    const cols = info.dims[0];
    const got = decode(scattered, await scattered.readRows(3, 20));
    for (let i = 0; i < 20; i++) {
      const f = (37 * (3 + i)) % rows;
      expect(Array.from(got.subarray(i * cols, (i + 1) * cols))).toEqual(Array.from(straight.subarray(f * cols, (f + 1) * cols)));
    }
    const controller = new AbortController();
    controller.abort();
    await expect(scattered.readRows(0, 20, controller.signal)).rejects.toThrow(/aborted/);
  });

  it('reports rows outside the tensor', async () => {
    const { checkpoint } = await open({}, 'tiny-qwen35');
    const norm = checkpoint.tensors.get('model.norm.weight')!;
    await expect(norm.readRows(1, 1)).rejects.toThrow(/tiny-qwen35\.gguf: model\.norm\.weight: rows \[1, 2\) are outside the tensor's 1 rows/);
  });
});

describe('GGUF checkpoint in the f64 reference forward pass', () => {
  for (const fixture of FIXTURES) {
    it(`${fixture}: F32 GGUF weights give the golden prefill logprobs`, async () => {
      const { checkpoint } = await open({ types: () => 'F32' }, fixture);
      const config = parseConfig(await readJson(checkpoint.files, 'config.json'));
      const cache = new Map<string, { rows: number; cols: number; data: Float64Array }>();
      const model = {
        config,
        tensor(name: string) {
          const full = name.startsWith('mtp.') || name === 'lm_head.weight' ? name : `model.${name}`;
          const m = cache.get(full);
          if (!m) throw new Error(`reference: no tensor ${full}`);
          return m;
        },
      };
      for (const [name, tensor] of checkpoint.tensors) {
        const data = Float64Array.from(await readAll(tensor));
        const cols = tensor.shape[tensor.shape.length - 1];
        cache.set(name, { rows: data.length / cols, cols, data });
      }
      const g = golden(fixture);
      const session = new ReferenceSession(model);
      const rows = new Float64Array(g.prompt_ids.length * g.vocab_size);
      g.prompt_ids.forEach((id, t) => rows.set(session.next(id), t * g.vocab_size));
      const { maxAbs, top1Agreement } = compareLogprobs(rows, goldenLogprobs(fixture), g.vocab_size);
      expect(maxAbs).toBeLessThan(1e-4);
      expect(top1Agreement).toBe(1);
    });
  }
});
