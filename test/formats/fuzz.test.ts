import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { encodeSafetensors, openSafetensorsCheckpoint } from '../../src/formats/safetensors.ts';
import { openGgufCheckpoint } from '../../src/formats/gguf.ts';
import { readGgufHeader } from '../../src/formats/gguf_header.ts';
import { PACKED_MANIFEST, openPacked } from '../../src/formats/packed.ts';
import { QwenError } from '../../src/gpu/errors.ts';
import type { WeightSource } from '../../src/storage/source.ts';
import { removeWrittenGgufs, writeFixtureGguf } from '../helpers/gguf_writer.ts';
import { rng } from '../helpers/random.ts';
import { writeRandomPacked } from './packed_helpers.ts';

// Each parser meets 10,000 byte-mutated files (JSON parts also 10,000 structurally mutated ones) and must answer with a clear error (a QwenError) or a valid result:
// no other exception, no read past the end of a file (sizes are checked before they are used), no hang.
const CASES = 10_000;

class Overread extends Error {}

/** In-memory files; one of them seen through byte patches and an optional truncation, copied lazily. */
class MutatedSource implements WeightSource {
  readonly location = 'fuzz';
  private readonly view: Uint8Array;
  constructor(private readonly files: Map<string, Uint8Array>, target: string, patches: [number, Uint8Array][], length?: number) {
    const base = files.get(target)!;
    const end = Math.min(base.length, length ?? base.length);
    const maxPatch = patches.reduce((m, [at, b]) => Math.max(m, at + b.length), 0);
    // Only the prefix that patches touch is copied; the rest of the file is shared.
    const head = base.slice(0, Math.min(end, Math.max(maxPatch, 0)));
    for (const [at, bytes] of patches) if (at < head.length) head.set(bytes.subarray(0, head.length - at), at);
    this.view = head;
    this.files = new Map(files);
    this.files.set(target, end === base.length && head.length === 0 ? base : concat(head, base.subarray(head.length, end)));
  }
  async has(file: string): Promise<boolean> {
    return this.files.has(file);
  }
  async size(file: string): Promise<number> {
    const f = this.files.get(file);
    if (!f) throw new QwenError(`${file}: missing`);
    return f.length;
  }
  async read(file: string, offset: number, length: number): Promise<Uint8Array> {
    const f = this.files.get(file);
    if (!f) throw new QwenError(`${file}: missing`);
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > f.length) {
      throw new Overread(`${file}: read of ${length} bytes at ${offset} past the end (${f.length})`);
    }
    return f.slice(offset, offset + length);
  }
  async text(file: string): Promise<string> {
    const f = this.files.get(file);
    if (!f) throw new QwenError(`${file}: missing`);
    return new TextDecoder().decode(f);
  }
  get patchedBytes(): number {
    return this.view.length;
  }
}

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}

const EXTREMES = [0, 1, 0x7f, 0xff, 0x7fffffff, 0xffffffff, 0x80000000];

/** Up to four mutations inside [0, region): bit flips, extreme integers, copied chunks; sometimes a truncation. */
function mutate(size: number, region: number, seed: number): { patches: [number, Uint8Array][]; length?: number } {
  const r = rng(seed);
  const at = (n = 1) => Math.floor(r() * Math.max(1, region - n));
  const patches: [number, Uint8Array][] = [];
  const count = 1 + Math.floor(r() * 4);
  for (let i = 0; i < count; i++) {
    const kind = r();
    if (kind < 0.4) {
      const p = at();
      patches.push([p, Uint8Array.of(Math.floor(r() * 256))]);
    } else if (kind < 0.8) {
      const p = at(8) & ~3;
      const v = new DataView(new ArrayBuffer(8));
      v.setUint32(0, EXTREMES[Math.floor(r() * EXTREMES.length)], true);
      v.setUint32(4, r() < 0.5 ? 0 : EXTREMES[Math.floor(r() * EXTREMES.length)], true);
      patches.push([p, new Uint8Array(v.buffer)]);
    } else {
      const n = 1 + Math.floor(r() * 16);
      patches.push([at(n), Uint8Array.from({ length: n }, () => Math.floor(r() * 256))]);
    }
  }
  return { patches, length: r() < 0.15 ? Math.floor(r() * size) : undefined };
}

const HOSTILE: unknown[] = [-1, 0, 1.5, 2 ** 53, 1e300, -1e300, 'x', '', null, true, [], {}, [1, 2, 3], { a: 1 }, '../../etc/passwd', 'f16', 'q4', 4294967296];

/** A random field of a JSON document (found by walking objects and arrays) replaced, deleted or duplicated. */
function mutateJson(doc: unknown, seed: number): unknown {
  const r = rng(seed);
  const copy = JSON.parse(JSON.stringify(doc));
  const slots: [Record<string, unknown> | unknown[], string | number][] = [];
  const walk = (v: unknown) => {
    if (Array.isArray(v)) v.forEach((x, i) => (slots.push([v, i]), walk(x)));
    else if (v && typeof v === 'object') for (const [k, x] of Object.entries(v)) (slots.push([v as Record<string, unknown>, k]), walk(x));
  };
  walk(copy);
  for (let n = 1 + Math.floor(r() * 3); n > 0 && slots.length; n--) {
    const [holder, key] = slots[Math.floor(r() * slots.length)];
    const roll = r();
    if (roll < 0.15 && !Array.isArray(holder)) delete (holder as Record<string, unknown>)[key as string];
    else (holder as Record<string | number, unknown>)[key] = HOSTILE[Math.floor(r() * HOSTILE.length)];
  }
  return copy;
}

/** Runs `parse` on every case; fails on the first exception that is not a clear error, or on a slow case. */
async function fuzz(name: string, files: Map<string, Uint8Array>, target: string, region: number, parse: (s: MutatedSource) => Promise<void>) {
  const size = files.get(target)!.length;
  let clear = 0;
  for (let seed = 1; seed <= CASES; seed++) {
    const { patches, length } = mutate(size, region, seed * 7919);
    const source = new MutatedSource(files, target, patches, length);
    const t0 = performance.now();
    try {
      await parse(source);
    } catch (error) {
      if (!(error instanceof QwenError)) {
        throw new Error(`${name} case ${seed}: ${(error as Error).name}: ${(error as Error).message} (patches ${JSON.stringify(patches.map(([p, b]) => [p, [...b]]))}, length ${length})`);
      }
      clear++;
    }
    const ms = performance.now() - t0;
    if (ms > 2000) throw new Error(`${name} case ${seed} took ${Math.round(ms)} ms`);
  }
  // Most mutations of a header must be noticed: a fuzzer that never breaks anything tests nothing.
  expect(clear).toBeGreaterThan(CASES / 10);
}

/** Like fuzz, with structural mutations of a JSON document that `encode` turns into the target file. */
async function fuzzJson(name: string, files: Map<string, Uint8Array>, target: string, doc: unknown, encode: (doc: unknown) => Uint8Array, parse: (s: MutatedSource) => Promise<void>) {
  let clear = 0;
  for (let seed = 1; seed <= CASES; seed++) {
    const mutated = new Map(files);
    mutated.set(target, encode(mutateJson(doc, seed * 104729)));
    try {
      await parse(new MutatedSource(mutated, target, []));
    } catch (error) {
      if (!(error instanceof QwenError)) throw new Error(`${name} (JSON) case ${seed}: ${(error as Error).name}: ${(error as Error).message}`);
      clear++;
    }
  }
  expect(clear).toBeGreaterThan(CASES / 10);
}

afterAll(() => removeWrittenGgufs());

describe('parsers under 10,000 mutated files each', () => {
  it('safetensors', async () => {
    const r = rng(3);
    const tensor = (name: string, dtype: 'BF16' | 'F16' | 'F32', shape: number[]) => ({
      name, dtype, shape, data: Uint8Array.from({ length: shape.reduce((a, b) => a * b, 1) * (dtype === 'F32' ? 4 : 2) }, () => Math.floor(r() * 256)),
    });
    const file = encodeSafetensors([tensor('a.weight', 'BF16', [8, 16]), tensor('b', 'F32', [5]), tensor('c.weight', 'F16', [3, 2, 7]), tensor('d', 'BF16', [0, 4])]);
    const headerEnd = 8 + Number(new DataView(file.buffer).getBigUint64(0, true));
    const parse = async (s: MutatedSource) => {
      const ckpt = await openSafetensorsCheckpoint(s);
      for (const t of ckpt.tensors.values()) {
        const rows = t.shape.length ? t.shape.slice(0, -1).reduce((a, b) => a * b, 1) : 1;
        if (rows > 0 && t.dtype) await t.readRows(0, 1);
      }
    };
    await fuzz('safetensors', new Map([['model.safetensors', file]]), 'model.safetensors', headerEnd + 16, parse);
    const header = JSON.parse(new TextDecoder().decode(file.subarray(8, headerEnd)));
    const data = file.subarray(headerEnd);
    const encode = (doc: unknown) => {
      const json = new TextEncoder().encode(JSON.stringify(doc));
      const out = new Uint8Array(8 + json.length + data.length);
      new DataView(out.buffer).setBigUint64(0, BigInt(json.length), true);
      out.set(json, 8);
      out.set(data, 8 + json.length);
      return out;
    };
    await fuzzJson('safetensors', new Map(), 'model.safetensors', header, encode, parse);
  });

  it('GGUF', async () => {
    const written = await writeFixtureGguf('tiny-qwen35', { types: (_n, dims) => (dims.length === 1 ? 'F32' : dims[0] % 256 === 0 ? 'Q4_K' : 'Q8_0') });
    const bytes = new Uint8Array(readFileSync(join(written.dir, written.file)));
    const files = new Map([[written.file, bytes]]);
    const header = await readGgufHeader(new MutatedSource(files, written.file, []), written.file);
    await fuzz('GGUF', files, written.file, header.dataOffset + 64, async (s) => {
      const ckpt = await openGgufCheckpoint(s, written.file);
      for (const f of ['config.json', 'tokenizer.json', 'tokenizer_config.json', 'generation_config.json']) await ckpt.files.text(f);
      let n = 0;
      for (const t of ckpt.tensors.values()) {
        if (t.dtype && n++ < 3) await t.readRows(0, 1);
      }
    });
  });

  it('packed manifests', async () => {
    const { dir } = await writeRandomPacked(4096);
    const files = new Map(readdirSync(dir).map((f) => [f, new Uint8Array(readFileSync(join(dir, f)))]));
    const manifest = files.get(PACKED_MANIFEST)!;
    const parse = async (s: MutatedSource) => {
      const packed = await openPacked(s);
      for (const t of packed.tensors.values()) await packed.readItems(t.key, 0, 1);
    };
    await fuzz('packed', files, PACKED_MANIFEST, manifest.length, parse);
    const doc = JSON.parse(new TextDecoder().decode(manifest));
    await fuzzJson('packed', files, PACKED_MANIFEST, doc, (d) => new TextEncoder().encode(JSON.stringify(d)), parse);
  });
});
