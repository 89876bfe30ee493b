import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { PACKED_MANIFEST, type PackedManifest, openPacked, validateManifest } from '../../src/formats/packed.ts';
import { ModelFormatError } from '../../src/errors.ts';
import { FileSource } from '../../src/storage/file.ts';
import { writeRandomPacked } from './packed_helpers.ts';

type Json = Record<string, any>; // the tests corrupt arbitrary fields

let dir: string;
let good: PackedManifest;
beforeAll(async () => {
  ({ dir, manifest: good } = await writeRandomPacked(700));
});

const tensor = (m: Json, key: string): Json => m.tensors.find((t: Json) => t.key === key);

// Each case corrupts one field of a valid manifest (tensor layout as in packed_helpers.ts, 700-byte shards).
const cases: [string, (m: Json) => unknown, RegExp][] = [
  ['another format', (m) => void (m.format = 'gguf'), /^qwen-webgpu\.json: format: "gguf" is not "qwen-webgpu"/],
  ['a newer version', (m) => void (m.version = 2), /^qwen-webgpu\.json: version: 2 is not supported \(this engine reads version 1/],
  ['no version', (m) => void delete m.version, /version: undefined is not supported/],
  ['no config', (m) => void delete m.config, /config: expected the model config\.json object/],
  ['an unknown weight dtype', (m) => void (m.dtype = 'bf16'), /^qwen-webgpu\.json: dtype: "bf16" is not one of f32, f16, q4/],
  ['shards that are not a list', (m) => void (m.shards = {}), /shards: expected a list/],
  ['a shard name with a directory', (m) => void (m.shards[0].name = '../weights.bin'), /shards\[0\]\.name: "\.\.\/weights\.bin" is not a plain file name/],
  ['a shard size that is not a number', (m) => void (m.shards[1].bytes = '672'), /shards\[1\]\.bytes: "672" is not a plausible file size/],
  ['an absurd shard size', (m) => void (m.shards[1].bytes = 2 ** 60), /shards\[1\]\.bytes: 1152921504606847000 is not a plausible/],
  ['a malformed sha256', (m) => void (m.shards[2].sha256 = m.shards[2].sha256.toUpperCase()), /shards\[2\]\.sha256: expected 64 lowercase hex digits/],
  ['a file listed twice', (m) => void (m.files[1].name = 'tokenizer.json'), /files\[1\]\.name: "tokenizer\.json" is reserved or listed twice/],
  ['config.json among the files', (m) => void (m.files[0].name = 'config.json'), /files\[0\]\.name: "config\.json" is reserved/],
  ['a file without sha256', (m) => void delete m.files[0].sha256, /files\[0\]\.sha256/],
  ['tensors that are not a list', (m) => void (m.tensors = null), /tensors: expected a list/],
  ['a tensor without a key', (m) => void delete m.tensors[2].key, /tensors\[2\]\.key: expected a non-empty string/],
  ['a tensor listed twice', (m) => void (m.tensors[1].key = 'embed'), /^qwen-webgpu\.json: embed: tensors\[1\]: listed twice/],
  ['an unknown tensor dtype', (m) => void (tensor(m, 'embed').dtype = 'bf16'), /embed: dtype "bf16" is not one of/],
  ['a 1-D shape', (m) => void (tensor(m, 'embed').shape = [37]), /embed: shape \[37\] is not 2 or 3 positive integers/],
  ['a zero dimension', (m) => void (tensor(m, 'embed').shape = [0, 24]), /embed: shape \[0,24\] is not 2 or 3/],
  ['an absurd shape', (m) => void (tensor(m, 'embed').shape = [2 ** 30, 2 ** 20]), /embed: shape \[1073741824,1048576\] is implausibly large/],
  ['a rowStride shorter than a row', (m) => void (tensor(m, 'big').rowStride = 296), /big: rowStride 296 is not a multiple of 8 from 300/],
  ['a q4 rowStride that is not a multiple of 64', (m) => void (tensor(m, 'lm_head').rowStride = 72), /lm_head: rowStride 72 is not a multiple of 64/],
  [
    'an absurd row padding',
    (m) => void (tensor(m, 'embed').rowStride = 24 + 1024),
    /embed: rowStride 1048 is not a multiple of 8 from 24 \(the row length\) to 279/,
  ],
  [
    'an itemStride that is not rows × rowStride',
    (m) => void (tensor(m, 'layers.0.mlp.experts_down').itemStride = 24),
    /experts_down: itemStride 24 is not rowsPerItem 3 × rowStride 24/,
  ],
  [
    'an itemBytes that does not match the dtype',
    (m) => void (tensor(m, 'layers.0.mlp.experts_gate_up').itemBytes = 384),
    /experts_gate_up: itemBytes 384 does not match 432 for q4 items of 768 elements/,
  ],
  ['no runs', (m) => void (tensor(m, 'embed').runs = []), /embed: runs: expected a non-empty list/],
  ['a run in a shard that does not exist', (m) => void (tensor(m, 'embed').runs[1].shard = 14), /embed: runs\[1\]\.shard: 14 is not one of the 14 shards/],
  ['an unaligned offset', (m) => void (tensor(m, 'embed').runs[1].offset = 2), /embed: runs\[1\]\.offset: 2 is not a non-negative multiple of 4/],
  ['a gap between runs', (m) => void (tensor(m, 'embed').runs[1].firstItem = 15), /embed: runs\[1\]\.firstItem: 15, expected 14/],
  ['a run past the last item', (m) => void (tensor(m, 'embed').runs[2].count = 10), /embed: runs\[2\]\.count: 10 is not from 1 to the 9 items left/],
  ['items missing at the end', (m) => void tensor(m, 'embed').runs.pop(), /embed: runs cover 28 items of 37/],
  [
    'a run past the end of its shard',
    (m) => void (tensor(m, 'embed').runs[2].offset = 4),
    /embed: runs\[2\]: bytes 4\.\.436 pass the end of weights-00002\.bin \(432 bytes\)/,
  ],
  [
    'runs of two tensors that overlap',
    (m) => void (tensor(m, 'layers.0.input_norm').runs[0].offset = 400),
    /layers\.0\.input_norm: its items at bytes 400\.\. of weights-00007\.bin overlap those of layers\.0\.mlp\.experts_gate_up \(\.\.432\)/,
  ],
  [
    'runs of one tensor that overlap',
    (m) =>
      void (tensor(m, 'layers.0.linear.conv').runs = [
        { shard: 8, offset: 0, firstItem: 0, count: 21 },
        { shard: 8, offset: 32, firstItem: 21, count: 19 },
      ]),
    /linear\.conv: its items at bytes 32\.\. of weights-00008\.bin overlap those of layers\.0\.linear\.conv \(\.\.672\)/,
  ],
];

describe('packed manifest validation', () => {
  it('accepts what the writer wrote', () => {
    expect(validateManifest(JSON.parse(JSON.stringify(good)))).toEqual(good);
  });

  for (const [what, corrupt, message] of cases) {
    it(`refuses ${what}, naming the manifest and field`, async () => {
      const m = structuredClone(good) as Json;
      corrupt(m);
      writeFileSync(join(dir, PACKED_MANIFEST), JSON.stringify(m));
      const error = await openPacked(new FileSource(dir)).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(ModelFormatError);
      expect((error as Error).message).toMatch(message);
      expect((error as ModelFormatError).file).toBe(PACKED_MANIFEST);
    });
  }

  it('refuses a manifest that is not JSON, or not an object', async () => {
    writeFileSync(join(dir, PACKED_MANIFEST), '{"format": "qwen-webgpu",');
    await expect(openPacked(new FileSource(dir))).rejects.toThrow(/^qwen-webgpu\.json: not valid JSON/);
    writeFileSync(join(dir, PACKED_MANIFEST), '[]');
    await expect(openPacked(new FileSource(dir))).rejects.toThrow(/^qwen-webgpu\.json: is not a JSON object/);
  });
});
