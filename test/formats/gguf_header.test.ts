import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gguf as parseWithHuggingFace } from '@huggingface/gguf';
import { afterAll, describe, expect, it } from 'vitest';
import { readGgufHeader } from '../../src/formats/gguf_header.ts';
import { ggufSourceTensor } from '../../src/formats/gguf_tensor.ts';
import { openCheckpoint } from '../../src/formats/open.ts';
import { ModelFormatError } from '../../src/errors.ts';
import { FileSource } from '../../src/storage/file.ts';
import type { WeightSource } from '../../src/formats/source.ts';
import { ByteWriter, GgufType, type KeyValue, kv, removeWrittenGgufs, writeFixtureGguf, writeKeyValue } from '../helpers/gguf_writer.ts';

const madeDirs: string[] = [];
afterAll(() => {
  removeWrittenGgufs();
  for (const dir of madeDirs) rmSync(dir, { recursive: true, force: true });
});

/** A FileSource that fails the test if anything asks it for bytes the file does not have. */
class GuardedSource implements WeightSource {
  private readonly inner: FileSource;
  largestRead = 0;
  constructor(readonly location: string) {
    this.inner = new FileSource(location);
  }
  has(file: string) {
    return this.inner.has(file);
  }
  size(file: string) {
    return this.inner.size(file);
  }
  text(file: string) {
    return this.inner.text(file);
  }
  async read(file: string, offset: number, length: number): Promise<Uint8Array> {
    const size = await this.inner.size(file);
    if (!(offset >= 0 && length >= 0 && offset + length <= size)) throw new Error(`read of [${offset}, ${offset + length}) beyond the ${size}-byte file`);
    this.largestRead = Math.max(this.largestRead, length);
    return this.inner.read(file, offset, length);
  }
}

function folderWith(file: string, bytes: Uint8Array): GuardedSource {
  const dir = mkdtempSync(join(tmpdir(), 'qwen-gguf-bad-'));
  madeDirs.push(dir);
  writeFileSync(join(dir, file), bytes);
  return new GuardedSource(dir);
}

interface Tensor {
  name: string;
  dims: (number | bigint)[];
  type: number;
  offset: number | bigint;
}

/** A small GGUF written field by field, so each field can lie. */
function handMade(options: {
  magic?: number;
  version?: number;
  tensorCount?: number | bigint;
  kvCount?: number | bigint;
  kvs?: KeyValue[];
  raw?: (w: ByteWriter) => void;
  tensors?: Tensor[];
  dataBytes?: number;
  alignment?: number;
}): Uint8Array {
  const kvs = options.kvs ?? [kv.str('general.architecture', 'qwen35')];
  const tensors = options.tensors ?? [{ name: 'a.weight', dims: [32, 2], type: 0, offset: 0 }];
  const w = new ByteWriter()
    .u32(options.magic ?? 0x46554747)
    .u32(options.version ?? 3)
    .u64(options.tensorCount ?? tensors.length)
    .u64(options.kvCount ?? kvs.length + (options.raw ? 1 : 0));
  for (const entry of kvs) writeKeyValue(w, entry);
  options.raw?.(w);
  for (const t of tensors) {
    w.str(t.name).u32(t.dims.length);
    for (const d of t.dims) w.u64(d);
    w.u32(t.type).u64(t.offset);
  }
  w.padTo(options.alignment ?? 32);
  w.bytes(new Uint8Array(options.dataBytes ?? 256));
  return w.finish();
}

const FILE = 'bad.gguf';

async function expectRefused(bytes: Uint8Array, message: RegExp) {
  const source = folderWith(FILE, bytes);
  const error = await readGgufHeader(source, FILE).then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(ModelFormatError);
  expect((error as Error).message).toMatch(/^bad\.gguf: /);
  expect((error as Error).message).toMatch(message);
  expect(source.largestRead).toBeLessThanOrEqual(bytes.length);
}

describe('GGUF header', () => {
  it('reads a hand-made file: metadata types, tensor dims, absolute offsets', async () => {
    const bytes = handMade({
      kvs: [
        kv.str('general.architecture', 'qwen35'),
        kv.f32('x.eps', 1e-6),
        kv.array('x.list', GgufType.I32, [1, -2, 3]),
        { key: 'x.big', type: GgufType.U64, value: 2 ** 40 },
        kv.bool('x.flag', true),
      ],
      tensors: [
        { name: 'a.weight', dims: [32, 2], type: 0, offset: 0 },
        { name: 'b.weight', dims: [64], type: 8, offset: 256 },
      ],
      dataBytes: 256 + 68,
    });
    const header = await readGgufHeader(folderWith(FILE, bytes), FILE);
    expect(header.version).toBe(3);
    expect(header.metadata.get('x.eps')).toBe(1e-6);
    expect(header.metadata.get('x.list')).toEqual([1, -2, 3]);
    expect(header.metadata.get('x.big')).toBe(2 ** 40);
    expect(header.metadata.get('x.flag')).toBe(true);
    expect(header.tensors.map((t) => [t.name, t.dims, t.type.name, t.offset - header.dataOffset, t.bytes])).toEqual([
      ['a.weight', [32, 2], 'F32', 0, 256],
      ['b.weight', [64], 'Q8_0', 256, 68],
    ]);
    expect(header.dataOffset % 32).toBe(0);
  });

  it('agrees with @huggingface/gguf on a file the test writer made from a fixture', async () => {
    const { dir, file } = await writeFixtureGguf('tiny-qwen35-moe', {
      alignment: 64,
      types: (name, dims) => (dims.length === 1 ? 'F32' : name.includes('ssm_out') ? 'Q4_K' : 'Q8_0'),
    });
    const ours = await readGgufHeader(new FileSource(dir), file);
    const theirs = await parseWithHuggingFace(join(dir, file), { allowLocalFile: true });
    expect(Number(theirs.tensorDataOffset)).toBe(ours.dataOffset);
    expect(theirs.tensorInfos.map((t) => [t.name, t.shape.map(Number), t.dtype, Number(t.offset) + ours.dataOffset])).toEqual(
      ours.tensors.map((t) => [t.name, t.dims, t.type.id, t.offset]),
    );
    for (const [key, value] of ours.metadata) {
      const their = (theirs.metadata as Record<string, unknown>)[key];
      if (typeof value === 'number' && !Number.isInteger(value)) expect(Math.fround(value), key).toBe(their);
      else expect(value, key).toEqual(their);
    }
  });

  const cases: [string, Uint8Array, RegExp][] = [
    ['a file shorter than the fixed header', new Uint8Array(10), /too short/],
    ['wrong magic bytes', handMade({ magic: 0x46554746 }), /not a GGUF file/],
    ['version 1', handMade({ version: 1 }), /version 1 is not supported/],
    ['a big-endian file', handMade({ version: 0x03000000 }), /big-endian/],
    ['a truncated file', handMade({}).subarray(0, 60), /truncated|runs past the end/],
    ['a tensor_count the file cannot hold', handMade({ tensorCount: 2n ** 40n }), /tensor_count 1099511627776 cannot fit/],
    ['a metadata_kv_count the file cannot hold', handMade({ kvCount: 1_000_000 }), /metadata_kv_count 1000000 cannot fit/],
    ['a count past 2^53', handMade({ kvCount: 2n ** 63n }), /metadata_kv_count: 9223372036854775808 is beyond any plausible size/],
    ['an absurdly long key', handMade({ kvs: [], raw: (w) => w.u64(1 << 30) }), /metadata key 0: string of 1073741824 bytes is longer than the limit of 65536/],
    [
      'a key whose length runs past the end',
      handMade({ kvs: [], raw: (w) => w.u64(5000) }),
      /metadata key 0: string of 5000 bytes runs past the end of the file/,
    ],
    [
      'a string value whose length lies',
      handMade({ kvs: [], raw: (w) => w.str('general.name').u32(GgufType.STRING).u64(5000) }),
      /general\.name: string of 5000 bytes runs past the end/,
    ],
    [
      'an array whose length lies',
      handMade({ kvs: [], raw: (w) => w.str('tokenizer.ggml.tokens').u32(GgufType.ARRAY).u32(GgufType.STRING).u64(1e12) }),
      /tokenizer\.ggml\.tokens: array of 1000000000000 string needs at least/,
    ],
    ['an unknown value type', handMade({ kvs: [], raw: (w) => w.str('x.y').u32(99) }), /x\.y: unknown value type 99/],
    ['nested arrays', handMade({ kvs: [], raw: (w) => w.str('x.y').u32(GgufType.ARRAY).u32(GgufType.ARRAY).u64(1) }), /x\.y: nested arrays/],
    [
      'a string that is not UTF-8',
      handMade({
        kvs: [],
        raw: (w) =>
          w
            .str('x.y')
            .u32(GgufType.STRING)
            .u64(2)
            .bytes(new Uint8Array([0xc3, 0x28])),
      }),
      /x\.y: string is not valid UTF-8/,
    ],
    ['a key given twice', handMade({ kvs: [kv.u32('x.y', 1), kv.u32('x.y', 2)] }), /metadata key x\.y appears twice/],
    [
      'an alignment that is not a power of two',
      handMade({ kvs: [kv.u32('general.alignment', 48)], alignment: 16 }),
      /general\.alignment 48 is not a power of two/,
    ],
    ['an unknown ggml type', handMade({ tensors: [{ name: 'a.weight', dims: [32], type: 200, offset: 0 }] }), /a\.weight: unknown ggml type 200/],
    [
      'an absurd dimension',
      handMade({ tensors: [{ name: 'a.weight', dims: [2 ** 40, 2], type: 0, offset: 0 }] }),
      /a\.weight: dims \[1099511627776\] hold more elements than a \d+-byte file can/,
    ],
    [
      'dimensions whose product is absurd',
      handMade({ tensors: [{ name: 'a.weight', dims: [64, 64, 64], type: 0, offset: 0 }] }),
      /a\.weight: dims \[64,64\] hold more elements than a \d+-byte file can/,
    ],
    ['a zero dimension', handMade({ tensors: [{ name: 'a.weight', dims: [32, 0], type: 0, offset: 0 }] }), /a\.weight: dimension 1 is 0/],
    [
      'too many dimensions',
      handMade({ tensors: [{ name: 'a.weight', dims: [1, 1, 1, 1, 1], type: 0, offset: 0 }] }),
      /a\.weight: n_dims 5 is not between 1 and 4/,
    ],
    [
      'a row that is not whole blocks',
      handMade({ tensors: [{ name: 'a.weight', dims: [48, 2], type: 8, offset: 0 }] }),
      /a\.weight: row length 48 is not a multiple of the Q8_0 block size 32/,
    ],
    [
      'an unaligned offset',
      handMade({ tensors: [{ name: 'a.weight', dims: [8], type: 0, offset: 4 }] }),
      /a\.weight: offset 4 is not a multiple of the alignment 32/,
    ],
    [
      'data past the end of the file',
      handMade({ tensors: [{ name: 'a.weight', dims: [32, 4], type: 0, offset: 0 }], dataBytes: 100 }),
      /a\.weight: data \[0, 512\) of the data section runs past its end at 100/,
    ],
    [
      'an offset past the end of the file',
      handMade({ tensors: [{ name: 'a.weight', dims: [8], type: 0, offset: 2n ** 40n }] }),
      /a\.weight: data \[1099511627776, 1099511627808\)/,
    ],
    [
      'overlapping tensors',
      handMade({
        tensors: [
          { name: 'a.weight', dims: [32, 2], type: 0, offset: 0 },
          { name: 'b.weight', dims: [32], type: 0, offset: 128 },
        ],
      }),
      /b\.weight: data overlaps a\.weight's/,
    ],
    [
      'a tensor name given twice',
      handMade({
        tensors: [
          { name: 'a.weight', dims: [8], type: 0, offset: 0 },
          { name: 'a.weight', dims: [8], type: 0, offset: 32 },
        ],
      }),
      /a\.weight: tensor name appears twice/,
    ],
    ['an empty tensor name', handMade({ tensors: [{ name: '', dims: [8], type: 0, offset: 0 }] }), /tensor info 0: empty tensor name/],
  ];
  for (const [what, bytes, message] of cases) {
    it(`refuses ${what}, naming the file and the field`, () => expectRefused(bytes, message));
  }
});

describe('GGUF metadata → config', () => {
  const edit = (f: (entries: KeyValue[]) => KeyValue[]) => ({ metadata: f });
  const without = (key: string) => edit((entries) => entries.filter((e) => e.key !== key));
  const replace = (entry: KeyValue) => edit((entries) => entries.map((e) => (e.key === entry.key ? entry : e)));
  const cases: [string, ReturnType<typeof edit>, RegExp][] = [
    ['another architecture', replace(kv.str('general.architecture', 'llama')), /general\.architecture is "llama", not a Qwen3\.5 model/],
    ['no architecture', without('general.architecture'), /metadata key general\.architecture: missing/],
    ['no block_count', without('qwen35.block_count'), /metadata key qwen35\.block_count: missing/],
    ['no feed_forward_length', without('qwen35.feed_forward_length'), /metadata key qwen35\.feed_forward_length: missing \(required for qwen35\)/],
    ['a block_count that is a string', replace(kv.str('qwen35.block_count', '5')), /metadata key qwen35\.block_count: expected an integer, got "5"/],
    ['no ssm.time_step_rank', without('qwen35.ssm.time_step_rank'), /metadata key qwen35\.ssm\.time_step_rank: missing/],
    ['no rope.freq_base', without('qwen35.rope.freq_base'), /metadata key qwen35\.rope\.freq_base: missing/],
    [
      'an inner size that does not split into heads',
      replace(kv.u32('qwen35.ssm.inner_size', 510)),
      /qwen35\.ssm\.inner_size: 510 is not a multiple of ssm\.time_step_rank 4/,
    ],
    ['nextn layers that take every block', replace(kv.u32('qwen35.nextn_predict_layers', 5)), /qwen35\.nextn_predict_layers: 5 leaves no main layers/],
  ];
  for (const [what, options, message] of cases) {
    it(`refuses ${what}`, async () => {
      const { dir, file } = await writeFixtureGguf('tiny-qwen35', options);
      const opened = openCheckpoint(new FileSource(dir), file);
      await expect(opened).rejects.toThrow(ModelFormatError);
      await expect(openCheckpoint(new FileSource(dir), file)).rejects.toThrow(new RegExp(`tiny-qwen35\\.gguf: .*${message.source}`));
    });
  }

  it('names a missing MoE key', async () => {
    const { dir, file } = await writeFixtureGguf('tiny-qwen35-moe', without('qwen35moe.expert_count'));
    await expect(openCheckpoint(new FileSource(dir), file)).rejects.toThrow(/metadata key qwen35moe\.expert_count: missing \(required for qwen35moe\)/);
  });

  it('marks a tensor of a type it cannot decode, and refuses to read it', async () => {
    // IQ2_XXS is a real ggml type the reader does not decode (its levels come from a 256-entry grid): the tensor is
    // listed, its dtype undefined.
    const bytes = handMade({ tensors: [{ name: 'token_embd.weight', dims: [256, 2], type: 16, offset: 0 }], kvs: [kv.str('general.architecture', 'qwen35')] });
    const source = folderWith(FILE, bytes);
    const header = await readGgufHeader(source, FILE);
    expect(header.tensors[0].type.name).toBe('IQ2_XXS');
    const tensor = ggufSourceTensor(source, FILE, { name: 'model.embed_tokens.weight', shape: [2, 256], info: header.tensors[0], rowBase: 0 });
    expect(tensor.dtype).toBeUndefined();
    expect(tensor.fileDtype).toBe('IQ2_XXS');
    await expect(tensor.readRows(0, 1)).rejects.toThrow(
      /bad\.gguf: model\.embed_tokens\.weight: ggml type IQ2_XXS cannot be decoded \(F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS, MXFP4\)/,
    );
  });
});
