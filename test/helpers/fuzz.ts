import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { encodeSafetensors, openSafetensorsCheckpoint } from '../../src/formats/safetensors.ts';
import { openGgufCheckpoint } from '../../src/formats/gguf.ts';
import { readGgufHeader } from '../../src/formats/gguf_header.ts';
import { PACKED_MANIFEST, openPacked } from '../../src/formats/packed.ts';
import { QwenError } from '../../src/errors.ts';
import { planCheckpoint } from '../../src/model/plan.ts';
import { readGenerationConfig } from '../../src/runtime/generation_config.ts';
import type { WeightSource } from '../../src/formats/source.ts';
import { renderChat } from '../../src/text/chat_template.ts';
import { Tokenizer } from '../../src/text/tokenizer.ts';
import { writeRandomPacked } from '../formats/packed_helpers.ts';
import { fixtureDir } from './fixtures.ts';
import { writeFixtureGguf } from './gguf_writer.ts';
import { rng } from './random.ts';

/**
 * The parsers' fuzzer, shared by the test suite (test/formats/fuzz.test.ts: a count that keeps CI fast) and
 * the nightly script (scripts/fuzz.ts: 100,000 cases per parser). Each parser meets byte-mutated files (and,
 * for JSON, structurally mutated documents) and must answer with a clear error (a QwenError) or a valid
 * result: no other exception, no read past the end of a file (sizes are checked before they are used), no
 * slow case.
 */

export class Overread extends Error {}

/** In-memory files; one of them seen through byte patches and an optional truncation, copied lazily. */
export class MutatedSource implements WeightSource {
  readonly location = 'fuzz';
  private readonly files: Map<string, Uint8Array>;
  constructor(files: Map<string, Uint8Array>, target: string, patches: [number, Uint8Array][], length?: number) {
    const base = files.get(target)!;
    const end = Math.min(base.length, length ?? base.length);
    const maxPatch = patches.reduce((m, [at, b]) => Math.max(m, at + b.length), 0);
    // Only the prefix that patches touch is copied; the rest of the file is shared.
    const head = base.slice(0, Math.min(end, Math.max(maxPatch, 0)));
    for (const [at, bytes] of patches) if (at < head.length) head.set(bytes.subarray(0, head.length - at), at);
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
}

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}

const EXTREMES = [0, 1, 0x7f, 0xff, 0x7fffffff, 0xffffffff, 0x80000000];

/** Up to four mutations inside [0, region): bit flips, extreme integers, copied chunks; sometimes a truncation. */
export function mutate(size: number, region: number, seed: number): { patches: [number, Uint8Array][]; length?: number } {
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

const HOSTILE: unknown[] = [
  -1,
  0,
  1.5,
  2 ** 53,
  1e300,
  -1e300,
  'x',
  '',
  null,
  true,
  [],
  {},
  [1, 2, 3],
  { a: 1 },
  '../../etc/passwd',
  'f16',
  'q4',
  4294967296,
  // Counts that would drive allocation if they were believed, and strings the engine gives meaning to.
  1_000_000,
  50_000_000,
  'BPE',
  'hot',
  '{% for i in range(100000000) %}x{% endfor %}',
];

/** A random field of a JSON document (found by walking objects and arrays) replaced, deleted or duplicated. */
export function mutateJson(doc: unknown, seed: number): unknown {
  const r = rng(seed);
  const copy = JSON.parse(JSON.stringify(doc));
  const slots: [Record<string, unknown> | unknown[], string | number][] = [];
  const walk = (v: unknown) => {
    if (Array.isArray(v)) v.forEach((x, i) => (slots.push([v, i]), walk(x)));
    else if (v && typeof v === 'object') for (const [k, x] of Object.entries(v)) slots.push([v as Record<string, unknown>, k]), walk(x);
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

export interface FuzzReport {
  kind: 'bytes' | 'json';
  cases: number;
  /** Cases answered with a clear error. */
  clear: number;
}

/**
 * Longest a case may take, in CPU time of this process (wall time would count a loaded machine's other work
 * and fail the nightly run on a busy host): a fuzzer case is one small file.
 */
const SLOW_MS = 2000;
const cpuMs = (): number => {
  const { user, system } = process.cpuUsage();
  return (user + system) / 1000;
};

/** Runs `parse` on `cases` byte mutations of `target`; throws on the first unclear exception or slow case. */
async function fuzzBytes(
  name: string,
  files: Map<string, Uint8Array>,
  target: string,
  region: number,
  parse: (s: MutatedSource) => Promise<void>,
  cases: number,
): Promise<FuzzReport> {
  const size = files.get(target)!.length;
  let clear = 0;
  for (let seed = 1; seed <= cases; seed++) {
    const { patches, length } = mutate(size, region, seed * 7919);
    const t0 = cpuMs();
    try {
      await parse(new MutatedSource(files, target, patches, length));
    } catch (error) {
      if (!(error instanceof QwenError)) {
        throw new Error(
          `${name} case ${seed}: ${(error as Error).name}: ${(error as Error).message} (patches ${JSON.stringify(patches.map(([p, b]) => [p, [...b]]))}, length ${length})`,
        );
      }
      clear++;
    }
    const ms = cpuMs() - t0;
    if (ms > SLOW_MS) throw new Error(`${name} case ${seed} took ${Math.round(ms)} ms of CPU time`);
  }
  return { kind: 'bytes', cases, clear };
}

/** Like fuzzBytes, with structural mutations of a JSON document that `encode` turns into the target file. */
async function fuzzJson(
  name: string,
  files: Map<string, Uint8Array>,
  target: string,
  doc: unknown,
  encode: (doc: unknown) => Uint8Array,
  parse: (s: MutatedSource) => Promise<void>,
  cases: number,
): Promise<FuzzReport> {
  let clear = 0;
  for (let seed = 1; seed <= cases; seed++) {
    const mutated = new Map(files);
    mutated.set(target, encode(mutateJson(doc, seed * 104729)));
    const t0 = cpuMs();
    try {
      await parse(new MutatedSource(mutated, target, []));
    } catch (error) {
      if (!(error instanceof QwenError)) throw new Error(`${name} (JSON) case ${seed}: ${(error as Error).name}: ${(error as Error).message}`);
      clear++;
    }
    const ms = cpuMs() - t0;
    if (ms > SLOW_MS) throw new Error(`${name} (JSON) case ${seed} took ${Math.round(ms)} ms of CPU time`);
  }
  return { kind: 'json', cases, clear };
}

/** One parser under fuzz: `run(cases)` runs that many byte-mutated and that many JSON-mutated files (where it has JSON). */
export interface FuzzTarget {
  name: string;
  run(cases: number): Promise<FuzzReport[]>;
}

const json = (doc: unknown) => new TextEncoder().encode(JSON.stringify(doc));
const folderFiles = (dir: string, names?: string[]) =>
  new Map((names ?? readdirSync(dir)).filter((f) => !f.startsWith('golden')).map((f) => [f, new Uint8Array(readFileSync(join(dir, f)))]));

/** Mutations of one JSON file of a folder (bytes over the whole file, and structure). */
function jsonFileTarget(name: string, files: () => Promise<Map<string, Uint8Array>>, target: string, parse: (s: MutatedSource) => Promise<void>): FuzzTarget {
  return {
    name,
    async run(cases) {
      const all = await files();
      const bytes = all.get(target)!;
      const doc = JSON.parse(new TextDecoder().decode(bytes));
      return [await fuzzBytes(name, all, target, bytes.length, parse, cases), await fuzzJson(name, all, target, doc, json, parse, cases)];
    },
  };
}

const TOKENIZER_FILES = ['tokenizer.json', 'tokenizer_config.json', 'generation_config.json'];
const SAMPLE = 'Hello, world! <think>\n2 + 2 = 4</think> 你好 ';

/** What the engine does with a tokenizer folder: load it, encode, decode, render a chat with its template. */
async function useTokenizer(s: MutatedSource): Promise<void> {
  const tokenizer = await Tokenizer.load(s);
  const ids = tokenizer.encode(SAMPLE);
  tokenizer.decode(ids.filter((id) => id < tokenizer.size));
  if (tokenizer.chatTemplate !== undefined) {
    renderChat(tokenizer.chatTemplate, {
      messages: [
        { role: 'system', content: 'Be brief.' },
        { role: 'user', content: SAMPLE },
      ],
      addGenerationPrompt: true,
      enableThinking: false,
    });
  }
  await readGenerationConfig(s);
}

export const FUZZ_TARGETS: FuzzTarget[] = [
  {
    name: 'safetensors',
    async run(cases) {
      const r = rng(3);
      const tensor = (name: string, dtype: 'BF16' | 'F16' | 'F32', shape: number[]) => ({
        name,
        dtype,
        shape,
        data: Uint8Array.from({ length: shape.reduce((a, b) => a * b, 1) * (dtype === 'F32' ? 4 : 2) }, () => Math.floor(r() * 256)),
      });
      const file = encodeSafetensors([
        tensor('a.weight', 'BF16', [8, 16]),
        tensor('b', 'F32', [5]),
        tensor('c.weight', 'F16', [3, 2, 7]),
        tensor('d', 'BF16', [0, 4]),
      ]);
      const headerEnd = 8 + Number(new DataView(file.buffer).getBigUint64(0, true));
      const parse = async (s: MutatedSource) => {
        const ckpt = await openSafetensorsCheckpoint(s);
        for (const t of ckpt.tensors.values()) {
          const rows = t.shape.length ? t.shape.slice(0, -1).reduce((a, b) => a * b, 1) : 1;
          if (rows > 0 && t.dtype) await t.readRows(0, 1);
        }
      };
      const bytes = await fuzzBytes('safetensors', new Map([['model.safetensors', file]]), 'model.safetensors', headerEnd + 16, parse, cases);
      const header = JSON.parse(new TextDecoder().decode(file.subarray(8, headerEnd)));
      const data = file.subarray(headerEnd);
      const encode = (doc: unknown) => {
        const text = json(doc);
        const out = new Uint8Array(8 + text.length + data.length);
        new DataView(out.buffer).setBigUint64(0, BigInt(text.length), true);
        out.set(text, 8);
        out.set(data, 8 + text.length);
        return out;
      };
      return [bytes, await fuzzJson('safetensors', new Map(), 'model.safetensors', header, encode, parse, cases)];
    },
  },
  {
    name: 'GGUF',
    async run(cases) {
      const written = await writeFixtureGguf('tiny-qwen35', { types: (_n, dims) => (dims.length === 1 ? 'F32' : dims[0] % 256 === 0 ? 'Q4_K' : 'Q8_0') });
      const bytes = new Uint8Array(readFileSync(join(written.dir, written.file)));
      const files = new Map([[written.file, bytes]]);
      const header = await readGgufHeader(new MutatedSource(files, written.file, []), written.file);
      // The synthesised tokenizer is loaded once (its metadata's mutations still reach the synthesis below).
      const tokenizer = await Tokenizer.load((await openGgufCheckpoint(new MutatedSource(files, written.file, []), written.file)).files);
      return [
        await fuzzBytes(
          'GGUF',
          files,
          written.file,
          header.dataOffset + 64,
          async (s) => {
            const ckpt = await openGgufCheckpoint(s, written.file);
            for (const f of ['config.json', 'tokenizer.json', 'tokenizer_config.json', 'generation_config.json']) await ckpt.files.text(f);
            await planCheckpoint(ckpt, { vocab: { tokenizerSize: tokenizer.size, eosTokenIds: tokenizer.eosTokenIds } });
            let n = 0;
            for (const t of ckpt.tensors.values()) {
              if (t.dtype && n++ < 3) await t.readRows(0, 1);
            }
          },
          cases,
        ),
      ];
    },
  },
  {
    name: 'packed-manifest',
    async run(cases) {
      const { dir } = await writeRandomPacked(4096);
      const files = new Map(readdirSync(dir).map((f) => [f, new Uint8Array(readFileSync(join(dir, f)))]));
      const manifest = files.get(PACKED_MANIFEST)!;
      const parse = async (s: MutatedSource) => {
        const packed = await openPacked(s);
        for (const t of packed.tensors.values()) await packed.readItems(t.key, 0, 1);
      };
      const doc = JSON.parse(new TextDecoder().decode(manifest));
      return [
        await fuzzBytes('packed', files, PACKED_MANIFEST, manifest.length, parse, cases),
        await fuzzJson('packed', files, PACKED_MANIFEST, doc, json, parse, cases),
      ];
    },
  },
  // config.json of the MoE fixture (experts, MTP, layer types, RoPE): planned against its real tensors, with
  // the tokenizer loaded once (its own files have targets below).
  (() => {
    let tokenizer: Tokenizer | undefined;
    return jsonFileTarget(
      'config.json',
      async () => folderFiles(fixtureDir('tiny-qwen35-moe')),
      'config.json',
      async (s) => {
        tokenizer ??= await Tokenizer.load(s);
        await planCheckpoint(await openSafetensorsCheckpoint(s), { vocab: { tokenizerSize: tokenizer.size, eosTokenIds: tokenizer.eosTokenIds } });
      },
    );
  })(),
  ...TOKENIZER_FILES.map((file) => jsonFileTarget(file, async () => folderFiles(fixtureDir('tiny-qwen35'), TOKENIZER_FILES), file, useTokenizer)),
];

/** Runs the targets (all, or those named) with `cases` each; a case that fails throws, naming it. */
export async function runFuzz(cases: number, only?: string[], log: (line: string) => void = () => {}): Promise<Map<string, FuzzReport[]>> {
  const out = new Map<string, FuzzReport[]>();
  for (const target of FUZZ_TARGETS) {
    if (only && !only.includes(target.name)) continue;
    const t0 = performance.now();
    const reports = await target.run(cases);
    out.set(target.name, reports);
    log(
      `${target.name}: ${reports.map((r) => `${r.cases} ${r.kind} cases, ${r.clear} clear errors`).join('; ')} (${Math.round((performance.now() - t0) / 1000)} s)`,
    );
  }
  return out;
}
