import { copyFileSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { openGgufCheckpoint } from '../../src/formats/gguf.ts';
import { encodeSafetensors } from '../../src/formats/safetensors.ts';
import { FileSource } from '../../src/storage/file.ts';
import { FIXTURES, compareLogprobs, golden } from '../helpers/fixtures.ts';
import { jsonLine, runCli } from '../helpers/cli.ts';
import { type GgmlTypeName, removeWrittenGgufs, writeFixtureGguf } from '../helpers/gguf_writer.ts';

// Issue 4's GGUF checks: a GGUF written in llama.cpp's layout (quantised tensors, converter transforms
// applied) scores within 5e-3 of the f32 engine on a safetensors checkpoint of the same dequantised values,
// and greedy generation from either gives the same ids.
const out = mkdtempSync(join(tmpdir(), 'qwen-gguf-'));
afterAll(() => removeWrittenGgufs());

/**
 * Every type the reader decodes, as llama.cpp mixes them: the super-block types (256 values) on the matrices whose
 * rows are whole super-blocks (the new ones first, so that they land in the main stack before the MTP block), the
 * 32-value types and F16 on the other matrices, F32 vectors.
 */
const SUPER_BLOCK_TYPES: GgmlTypeName[] = ['Q2_K', 'Q3_K', 'IQ4_XS', 'Q4_K', 'Q6_K', 'Q5_K'];
const BLOCK_TYPES: GgmlTypeName[] = ['F16', 'Q8_0', 'Q4_0', 'Q4_1', 'Q5_0', 'Q5_1', 'IQ4_NL', 'MXFP4'];
const MIX = [...SUPER_BLOCK_TYPES, ...BLOCK_TYPES];
let [superTurn, turn] = [0, 0];
const mix = (_name: string, dims: number[]): GgmlTypeName => {
  if (dims.length === 1 || dims[1] === 1) return 'F32';
  if (dims[0] % 256 === 0) return SUPER_BLOCK_TYPES[superTurn++ % SUPER_BLOCK_TYPES.length];
  return BLOCK_TYPES[turn++ % BLOCK_TYPES.length];
};

/** A Hugging Face folder holding exactly the values the GGUF reader presents (dequantised to F32, F16 as is). */
async function dequantisedCopy(dir: string, file: string, to: string): Promise<void> {
  const ckpt = await openGgufCheckpoint(new FileSource(dir), file);
  const tensors = [];
  for (const t of ckpt.tensors.values()) {
    const rows = t.shape.slice(0, -1).reduce((a, b) => a * b, 1);
    const dtype = ({ f32: 'F32', f16: 'F16', bf16: 'BF16' } as const)[t.dtype!];
    tensors.push({ name: t.name, dtype, shape: t.shape, data: (await t.readRows(0, rows)).slice() });
  }
  writeFileSync(join(to, 'model.safetensors'), encodeSafetensors(tensors));
  for (const f of ['config.json', 'tokenizer.json', 'tokenizer_config.json', 'generation_config.json']) writeFileSync(join(to, f), await ckpt.files.text(f));
}

for (const fixture of FIXTURES) {
  const g = golden(fixture);
  describe(fixture, () => {
    it('GGUF of every type the reader decodes scores and generates as f32 safetensors of the same values', async () => {
      [superTurn, turn] = [0, 0];
      const gguf = await writeFixtureGguf(fixture, { types: mix });
      const written = new Set([...gguf.expected.values()].map((t) => t.type));
      for (const type of MIX) expect(written, `the GGUF holds ${type} tensors`).toContain(type);
      const ggufPath = join(out, `${fixture}.gguf`);
      copyFileSync(join(gguf.dir, gguf.file), ggufPath);
      const hf = mkdtempSync(join(out, `${fixture}-hf-`));
      await dequantisedCopy(gguf.dir, gguf.file, hf);

      const score = async (model: string, name: string) => {
        const file = join(out, `${fixture}-${name}.f32`);
        const line = jsonLine(
          await runCli('node', ['score', '--model', model, '--ids', g.prompt_ids.join(','), '--dtype', 'f32', '--out', file, '--adapter', 'llvmpipe']),
        );
        expect(line.tokens).toBe(g.prompt_ids.length);
        const bytes = readFileSync(file);
        return new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
      };
      const fromGguf = await score(ggufPath, 'gguf');
      const fromHf = await score(hf, 'hf');
      expect(compareLogprobs(fromGguf, fromHf, g.vocab_size).maxAbs).toBeLessThanOrEqual(5e-3);

      const greedy = async (model: string) =>
        jsonLine(
          await runCli('node', [
            'generate',
            '--model',
            model,
            '--prompt-ids',
            g.prompt_ids.join(','),
            '--max-tokens',
            '12',
            '--greedy',
            '--dtype',
            'f32',
            '--json',
            '--adapter',
            'llvmpipe',
          ]),
        ).ids;
      expect(await greedy(ggufPath)).toEqual(await greedy(hf));
    });
  });
}
