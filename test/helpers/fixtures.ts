import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

/** The shared tiny checkpoints with goldens from an independent float64 reference (../shared/fixtures). */
export const FIXTURES_DIR = fileURLToPath(new URL('../../../shared/fixtures/', import.meta.url));
export const FIXTURES = ['tiny-qwen35', 'tiny-qwen35-moe'] as const;
export type FixtureName = (typeof FIXTURES)[number];

export interface Golden {
  prompt_ids: number[];
  vocab_size: number;
  tokenizer_size: number;
  greedy_ids: number[];
  greedy_steps: { margin: number }[];
  moe_topk_ids?: number[][][];
}

export function fixtureDir(name: FixtureName): string {
  return `${FIXTURES_DIR}${name}`;
}

export function golden(name: FixtureName): Golden {
  return JSON.parse(readFileSync(`${fixtureDir(name)}/golden.json`, 'utf8'));
}

/** golden.prefill_logprobs.f32: [len(prompt_ids), vocab_size]. */
export function goldenLogprobs(name: FixtureName): Float32Array {
  const bytes = readFileSync(`${fixtureDir(name)}/golden.prefill_logprobs.f32`);
  return new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
}

/** golden.mtp_logprobs.f32: [len(prompt_ids) - 1, vocab_size], row p the MTP block's draft for token p + 2. */
export function goldenMtpLogprobs(name: FixtureName): Float32Array {
  const bytes = readFileSync(`${fixtureDir(name)}/golden.mtp_logprobs.f32`);
  return new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
}

/** Largest |a - b| and the share of rows whose argmax agrees. */
export function compareLogprobs(actual: Float32Array | Float64Array, expected: Float32Array, vocab: number) {
  let maxAbs = 0;
  let agree = 0;
  const rows = expected.length / vocab;
  const rowMax: number[] = [];
  for (let r = 0; r < rows; r++) {
    let a = 0;
    let e = 0;
    let m = 0;
    for (let i = 0; i < vocab; i++) {
      const k = r * vocab + i;
      m = Math.max(m, Math.abs(actual[k] - expected[k]));
      if (actual[k] > actual[r * vocab + a]) a = i;
      if (expected[k] > expected[r * vocab + e]) e = i;
    }
    maxAbs = Math.max(maxAbs, m);
    rowMax.push(m);
    if (a === e) agree++;
  }
  // The largest row error once the worst 1% of rows are set aside.
  const p99 = [...rowMax].sort((x, y) => x - y)[Math.max(0, Math.ceil(rows * 0.99) - 1)];
  return { maxAbs, p99, top1Agreement: agree / rows };
}
