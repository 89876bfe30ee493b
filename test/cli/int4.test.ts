import { cpSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { FIXTURES, compareLogprobs, fixtureDir, golden } from '../helpers/fixtures.ts';
import { jsonLine, runCli } from '../helpers/cli.ts';

// Issue 4's acceptance checks through the CLI: a model quantised to INT4 while loading, and the same model
// converted to the packed format, score within 5e-3 of the f32 engine on export's dequantised checkpoint.
const out = mkdtempSync(join(tmpdir(), 'qwen-int4-'));
const read = (file: string) => {
  const bytes = readFileSync(file);
  return new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
};

for (const fixture of FIXTURES) {
  const g = golden(fixture);
  const ids = g.prompt_ids.join(',');
  const score = async (name: string, args: string[]) => {
    const file = join(out, `${fixture}-${name}.f32`);
    const line = jsonLine(await runCli('node', ['score', '--ids', ids, '--out', file, '--adapter', 'llvmpipe', ...args]));
    return { line, rows: read(file) };
  };

  describe(fixture, () => {
    it('--dtype int4, and convert → packed model, match f32 on the exported dequantised weights; bad uses are refused', async () => {
      const packed = join(out, `${fixture}-packed`);
      const converted = jsonLine(
        await runCli('node', ['convert', '--model', fixtureDir(fixture), '--dtype', 'int4', '--out', packed, '--adapter', 'llvmpipe']),
      );
      expect(converted).toMatchObject({ command: 'convert', dtype: 'q4' });
      const hf = join(out, `${fixture}-hf`);
      expect(jsonLine(await runCli('node', ['export', '--model', packed, '--out', hf]))).toMatchObject({ command: 'export' });

      const reference = await score('export-f32', ['--model', hf, '--dtype', 'f32']);
      expect(reference.line.dtype).toBe('f32');
      for (const [name, args] of [
        ['int4', ['--model', fixtureDir(fixture), '--dtype', 'int4', '--activations', 'f32']],
        ['packed', ['--model', packed]],
      ] as const) {
        const run = await score(name, [...args]);
        expect(run.line.dtype, name).toBe('q4');
        const { maxAbs } = compareLogprobs(run.rows, reference.rows, g.vocab_size);
        expect(maxAbs, name).toBeLessThanOrEqual(5e-3);
      }
      // f16 activations (Node and Deno): within 0.2 of the same reference, the same top-1 at >= 97% of positions.
      for (const [name, runtime, args] of [
        ['int4-act16', 'node', ['--model', fixtureDir(fixture), '--dtype', 'int4']],
        ['packed-act16', 'node', ['--model', packed]],
        ['packed-act16-deno', 'deno', ['--model', packed]],
      ] as const) {
        const file = join(out, `${fixture}-${name}.f32`);
        const result = await runCli(runtime, [
          'score',
          '--ids',
          ids,
          '--out',
          file,
          ...(runtime === 'node' ? ['--adapter', 'llvmpipe'] : []),
          ...args,
          '--activations',
          'f16',
        ]);
        expect((jsonLine(result).adapter as { activations: string }).activations, name).toBe('f16');
        const { maxAbs, top1Agreement } = compareLogprobs(read(file), reference.rows, g.vocab_size);
        expect(maxAbs, name).toBeLessThanOrEqual(0.2);
        expect(top1Agreement, name).toBeGreaterThanOrEqual(0.97);
        // Rounding happened: f16 activations are not the f32 result.
        expect(maxAbs, name).toBeGreaterThan(1e-4);
      }
      const swift = await runCli('node', [
        'score',
        '--model',
        packed,
        '--ids',
        '1,2',
        '--out',
        join(out, 'x.f32'),
        '--adapter',
        'SwiftShader',
        '--activations',
        'f16',
      ]);
      expect(swift.code).toBe(1);
      expect(swift.stderr).toMatch(/f16 activations need the shader-f16 feature, which is not supported on adapter "SwiftShader/);

      // The quantised model really differs from the original bf16 one (the comparison above is not vacuous).
      const original = await score('f32', ['--model', fixtureDir(fixture), '--dtype', 'f32']);
      expect(compareLogprobs(original.rows, reference.rows, g.vocab_size).maxAbs).toBeGreaterThan(5e-3);

      // A packed model refuses another --dtype and, with --verify, a corrupted shard; export names a non-packed folder.
      const corrupt = join(out, `${fixture}-corrupt`);
      cpSync(packed, corrupt, { recursive: true });
      const shard = join(corrupt, 'weights-00000.bin');
      const bytes = readFileSync(shard);
      bytes[bytes.length >> 1] ^= 0x40;
      writeFileSync(shard, bytes);
      const bad = await runCli('node', ['score', '--model', corrupt, '--verify', '--ids', '1,2', '--out', join(out, 'x.f32'), '--adapter', 'llvmpipe']);
      expect(bad.code).toBe(1);
      expect(bad.stderr).toMatch(/weights-00000\.bin/);
      expect(bad.stderr).toMatch(/sha256/i);
      const r = await runCli('node', ['score', '--model', packed, '--dtype', 'f16', '--ids', '1,2', '--out', join(out, 'x.f32'), '--adapter', 'llvmpipe']);
      expect(r.code).toBe(1);
      expect(r.stderr).toMatch(/qwen-webgpu\.json: holds q4 weights; they cannot be loaded as f16/);
      const e = await runCli('node', ['export', '--model', fixtureDir(fixture), '--out', join(out, 'never')]);
      expect(e.code).toBe(2);
      expect(e.stderr).toMatch(/export reads a packed model/);
    });
  });
}
