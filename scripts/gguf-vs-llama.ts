/**
 * Checks the GGUF reader against llama.cpp itself: the test fixtures are written as GGUF files in llama.cpp's layout
 * (test/helpers/gguf_writer.ts), a few ggml types per file so that every type the reader decodes is covered, with the
 * tensors llama-quantize never quantises (conv taps, routers, norms) in F32 as it leaves them. llama.cpp
 * (node-llama-cpp's Vulkan build, f32 arithmetic and KV cache) and our CLI (`score --dtype f32`) then score the
 * fixture's prompt on the same file and the same adapter (lavapipe), and one line per file gives how far their
 * log-probabilities lie apart, and each from the fixture's f64 golden (which also holds the quantiser's error).
 *
 *   npm run check:gguf-llama [-- --cache DIR]
 *
 * node-llama-cpp is installed on demand into DIR (default .cache/peers), as bench:peers does.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { FIXTURES, type FixtureName, fixtureDir, golden } from '../test/helpers/fixtures.ts';
import { type GgmlTypeName, removeWrittenGgufs, writeFixtureGguf } from '../test/helpers/gguf_writer.ts';
import { ensureNodeLlamaCpp } from './peers/node_llama_cpp.ts';

const ROOT = resolve(fileURLToPath(new URL('..', import.meta.url)));

/** Types per file: the first of each pair on rows of whole 256-value super-blocks, the other on the rest. */
const GROUPS: Record<FixtureName, GgmlTypeName[][]> = {
  'tiny-qwen35': [['Q8_0'], ['Q2_K', 'Q4_1'], ['Q3_K', 'Q5_0'], ['IQ4_XS', 'IQ4_NL'], ['Q6_K', 'MXFP4'], ['Q5_K', 'Q5_1'], ['Q4_K', 'Q4_0']],
  'tiny-qwen35-moe': [
    ['Q2_K', 'Q3_K', 'IQ4_XS', 'Q4_1', 'Q5_0', 'MXFP4'],
    ['Q4_K', 'Q5_K', 'Q6_K', 'IQ4_NL', 'Q5_1', 'Q4_0', 'Q8_0'],
  ],
};
const SUPER_BLOCK = new Set<GgmlTypeName>(['Q2_K', 'Q3_K', 'Q4_K', 'Q5_K', 'Q6_K', 'IQ4_XS']);
/** What llama-quantize keeps unquantised (llama-quant.cpp), besides vectors. */
const KEPT = /ssm_conv1d|ffn_gate_inp|_norm/;

function parseArgs(argv: string[]): { cache: string } {
  let cache = join(ROOT, '.cache/peers');
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--cache' && argv[i + 1]) cache = resolve(argv[++i]);
    else {
      process.stderr.write(`unknown option ${argv[i]}\nusage: npm run check:gguf-llama [-- --cache DIR]\n`);
      process.exit(2);
    }
  }
  return { cache };
}

function logprobs(file: string): Float32Array {
  const bytes = readFileSync(file);
  return new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
}

/** Largest |a − b| over the tokenizer's rows, and the share of positions whose best token agrees. */
function compare(a: Float32Array, b: Float32Array, vocab: number, tokenizerSize: number): { maxAbs: number; top1: number } {
  const rows = Math.min(a.length, b.length) / vocab;
  let maxAbs = 0;
  let agree = 0;
  for (let t = 0; t < rows; t++) {
    let [bestA, bestB] = [0, 0];
    for (let i = 0; i < tokenizerSize; i++) {
      const [x, y] = [a[t * vocab + i], b[t * vocab + i]];
      maxAbs = Math.max(maxAbs, Math.abs(x - y));
      if (x > a[t * vocab + bestA]) bestA = i;
      if (y > b[t * vocab + bestB]) bestB = i;
    }
    if (bestA === bestB) agree++;
  }
  return { maxAbs, top1: agree / rows };
}

async function main(): Promise<void> {
  const { cache } = parseArgs(process.argv.slice(2));
  const nlc = ensureNodeLlamaCpp(join(cache, 'node-llama-cpp'), ['vulkan'], (line) => process.stderr.write(`${line}\n`));
  const icd = join(ROOT, '.cache/lavapipe/lvp_icd.json');
  const env = {
    ...process.env,
    GGML_VK_DISABLE_F16: '1',
    GGML_VK_VISIBLE_DEVICES: '0',
    ...(existsSync(icd) && !process.env.VK_DRIVER_FILES ? { VK_DRIVER_FILES: icd } : {}),
  };
  const work = mkdtempSync(join(tmpdir(), 'gguf-vs-llama-'));
  const f = (x: number) => x.toExponential(1);
  console.log('| fixture | types | llama.cpp vs ours: max abs Δ logprob | top-1 agree | ours vs golden | llama.cpp vs golden |');
  console.log('|---|---|---|---|---|---|');
  try {
    for (const fixture of FIXTURES) {
      const g = golden(fixture);
      const goldenRows = logprobs(join(fixtureDir(fixture), 'golden.prefill_logprobs.f32'));
      for (const types of GROUPS[fixture]) {
        const superTypes = types.filter((t) => SUPER_BLOCK.has(t));
        const blockTypes = types.filter((t) => !SUPER_BLOCK.has(t));
        let [s, b] = [0, 0];
        const written = await writeFixtureGguf(fixture, {
          types: (name, dims) => {
            if (dims.length === 1 || dims[1] === 1 || KEPT.test(name)) return 'F32';
            if (superTypes.length > 0 && dims[0] % 256 === 0) return superTypes[s++ % superTypes.length];
            return blockTypes.length > 0 ? blockTypes[b++ % blockTypes.length] : superTypes[s++ % superTypes.length];
          },
        });
        const gguf = join(written.dir, written.file);
        const held = [...new Set([...written.expected.values()].map((e) => e.type))].filter((t) => t !== 'F32');
        const ids = g.prompt_ids.join(',');
        const theirs = join(work, `${fixture}-${types.join('-')}.llama.f32`);
        const ours = join(work, `${fixture}-${types.join('-')}.ours.f32`);
        execFileSync(
          process.execPath,
          [join(ROOT, 'scripts/peers/llama_logits.mjs'), '--nlc', nlc, '--gpu', 'vulkan', '--model', gguf, '--ids', ids, '--out', theirs],
          { env, stdio: ['ignore', 'ignore', 'inherit'] },
        );
        // Dawn's start-up warnings stay out of the table; a failure's stderr comes with the thrown error.
        execFileSync(
          process.execPath,
          [join(ROOT, 'bin/qwen-webgpu.js'), 'score', '--model', gguf, '--ids', ids, '--dtype', 'f32', '--out', ours, '--adapter', 'llvmpipe'],
          { env, stdio: ['ignore', 'ignore', 'pipe'] },
        );
        const [a, o] = [logprobs(theirs), logprobs(ours)];
        const peer = compare(a, o, g.vocab_size, g.tokenizer_size);
        const ourError = compare(o, goldenRows, g.vocab_size, g.tokenizer_size);
        const theirError = compare(a, goldenRows, g.vocab_size, g.tokenizer_size);
        console.log(
          `| ${fixture} | ${held.join(', ')} | ${f(peer.maxAbs)} | ${(100 * peer.top1).toFixed(1)}% | ${f(ourError.maxAbs)} | ${f(theirError.maxAbs)} |`,
        );
      }
    }
  } finally {
    removeWrittenGgufs();
    rmSync(work, { recursive: true, force: true });
  }
}

await main();
