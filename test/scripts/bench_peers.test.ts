import { spawnSync } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseLlamaBench } from '../../scripts/peers/llama_cuda.ts';
import { nodeLlamaCppPackages } from '../../scripts/peers/node_llama_cpp.ts';
import { formatTable } from '../../scripts/peers/report.ts';

const cli = (...args: string[]) => spawnSync(process.execPath, ['--import', 'tsx', 'scripts/bench-peers.ts', ...args], { encoding: 'utf8' });

describe('bench:peers', () => {
  it('prints its usage for --help and refuses unknown or malformed flags with it', () => {
    const help = cli('--help');
    expect(help.status).toBe(0);
    expect(help.stdout).toMatch(/--variants a,b[\s\S]*--peers vulkan\[,cuda\]/);
    for (const [args, message] of [
      [['--bogus'], /unknown option --bogus/],
      [['--variants', 'qwen9'], /--variants: qwen9; choose from qwen3\.5-0\.8b/],
      [['--peers', 'metal'], /--peers: metal/],
      [['--layers', '0'], /--layers takes a positive integer/],
      [['--prompt-tokens'], /--prompt-tokens needs a value/],
      [['--build-jobs', '0'], /--build-jobs takes a positive integer/],
    ] as const) {
      const r = cli(...args);
      expect(r.status, args.join(' ')).toBe(2);
      expect(r.stderr).toMatch(message);
      expect(r.stderr).toContain('usage: npm run bench:peers');
    }
  });

  it('tables ours against each peer with ours ÷ theirs, and says why a peer has no figure', () => {
    const table = formatTable(
      [
        {
          variant: 'qwen3.5-0.8b',
          dtype: 'int4',
          ours: { prefill_tokens_per_s: 1000, decode_tokens_per_s: 200, copy_gb_per_s: 830, dispatches_per_step: 120 },
          peers: { vulkan: { prefill_tokens_per_s: 2000, decode_tokens_per_s: 250 }, cuda: { status: 'skipped', error: 'nvcc not found' } },
        },
        {
          variant: 'qwen3.5-9b',
          dtype: 'int4',
          peers: { vulkan: { status: 'refused', error: 'ran on the CPU' }, cuda: { status: 'skipped', error: 'nvcc not found' } },
        },
      ],
      ['vulkan', 'cuda'],
    );
    const lines = table.split('\n');
    expect(lines[0]).toBe(
      '| variant | ours prefill / decode | llama.cpp Vulkan prefill / decode | ours ÷ llama.cpp Vulkan prefill / decode | llama.cpp CUDA prefill / decode | ours ÷ llama.cpp CUDA prefill / decode | ours copy GB/s | ours dispatches/step |',
    );
    expect(lines[2]).toBe('| qwen3.5-0.8b int4 | 1000 / 200 | 2000 / 250 | 0.50× / 0.80× | skipped | – / – | 830 | 120 |');
    expect(lines[3]).toBe('| qwen3.5-9b int4 | – | refused | – / – | skipped | – / – | – | – |');
  });

  it("reads llama-bench's JSONL as the median of each test's samples", () => {
    const row = (p: number, n: number, samples: number[]) =>
      JSON.stringify({
        gpu_info: 'NVIDIA H200',
        backends: 'CUDA',
        flash_attn: -1,
        n_prompt: p,
        n_gen: n,
        avg_ts: samples.reduce((a, b) => a + b) / samples.length,
        samples_ts: samples,
      });
    const r = parseLlamaBench(
      ['ggml_cuda_init: found 1 CUDA devices', row(512, 0, [15618.5, 34564.4, 34874.3]), row(0, 64, [621.7, 675.9, 666.5]), ''].join('\n'),
    );
    expect(r.prefill_tokens_per_s).toBe(34564.4);
    expect(r.decode_tokens_per_s).toBe(666.5);
    expect(r.gpu_info).toBe('NVIDIA H200');
    expect(() => parseLlamaBench('no rows')).toThrow(/no prefill and decode rows/);
  });

  it('sets up the peers alone with --prepare-only, and fails naming why one cannot be', () => {
    const none = cli('--prepare-only', '--peers', 'none');
    expect(none.status, none.stderr).toBe(0);
    expect(none.stdout).toBe('');
    // An empty node-llama-cpp folder and cache: no llama.cpp source to build, whatever CUDA toolkit the machine has.
    const empty = mkdtempSync(join(tmpdir(), 'peers-'));
    const cuda = cli('--prepare-only', '--peers', 'cuda', '--nlc', empty, '--cache', empty);
    expect(cuda.status, cuda.stderr).toBe(1);
    expect(cuda.stderr).toMatch(/cuda: not set up: (nvcc not found|cmake not found|no llama\.cpp source)/);
    expect(cuda.stdout).toBe('');
  });

  it('installs node-llama-cpp pinned, with only the binaries the chosen peers need', () => {
    const platform = `${process.platform}-${process.arch}`;
    expect(nodeLlamaCppPackages(['vulkan'])).toEqual(['node-llama-cpp@3.22.1', `@node-llama-cpp/${platform}-vulkan@3.22.1`]);
    expect(nodeLlamaCppPackages(['vulkan', 'cpu'])).toEqual([
      'node-llama-cpp@3.22.1',
      `@node-llama-cpp/${platform}-vulkan@3.22.1`,
      `@node-llama-cpp/${platform}@3.22.1`,
    ]);
  });
});
