// Times llama.cpp through node-llama-cpp's prebuilt binaries on one GGUF and prints one JSON line: prefill of P
// token ids, then D greedy decode steps the way a Node user generates (one token at a time, sampled on the host),
// after one untimed warm-up run. Plain .mjs so it runs under a bare `node` (the device bundle has no tsx).
//
//   node llama_run.mjs --nlc DIR --gpu vulkan|cuda|false --probe
//   node llama_run.mjs --nlc DIR --gpu vulkan|cuda|false --model F.gguf --prompt-tokens P --decode-tokens D --vocab V
//       [--bypass-simulator] [--flash-attention on|off] [--threads N]
//
// It reports what it ran on (devices, the buffer lines of llama.cpp's log) and exits 2 when a GPU run did not
// put the model on the GPU: ggml_vulkan skips CPU-type devices such as lavapipe and falls back to its CPU
// backend while node-llama-cpp still says gpu 'vulkan'.
import fs from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

const verbose = Boolean(process.env.PEERS_VERBOSE);
// llama.cpp's log is how we learn where buffers went; the lines that say so are kept, the rest dropped.
const KEEP =
  /ggml_vulkan: (Found|\d+ =|No devices)|ggml_cuda_init|Device \d+:|load_backend|using device|buffer size|offload|flash_attn|graph splits|splits =|cannot be used with preferred buffer type|error|failed/i;
const log = [];
const logger = (level, message) => {
  for (const line of String(message).split('\n')) {
    if (!line.trim()) continue;
    if (KEEP.test(line)) log.push(line.trim());
    if (verbose) fs.writeSync(2, `[llama.cpp ${level}] ${line}\n`);
  }
};

const args = parseArgs(process.argv.slice(2));
const nlc = path.join(args.nlc, 'node_modules/node-llama-cpp');
const version = JSON.parse(fs.readFileSync(path.join(nlc, 'package.json'), 'utf8')).version;

if (args['bypass-simulator']) {
  // node-llama-cpp sizes GPU layers by a dry-run allocation that aborts the process on lavapipe ("pre-allocated
  // tensor in a buffer (Vulkan0) that cannot run the operation (NONE)"); without it, its size estimate is used.
  const { GgufInsights } = await import(pathToFileURL(path.join(nlc, 'dist/gguf/insights/GgufInsights.js')).href);
  if (typeof GgufInsights.prototype._resolveSimulatorSource !== 'function') fail('this node-llama-cpp has no _resolveSimulatorSource to bypass');
  GgufInsights.prototype._resolveSimulatorSource = async () => null;
}

const { getLlama } = await import(pathToFileURL(path.join(nlc, 'dist/index.js')).href);
const gpu = args.gpu === 'false' ? false : args.gpu;
const llama = await getLlama({ gpu, build: 'never', logLevel: 'debug', logger });
const devices = gpu ? await llama.getGpuDeviceNames() : [];
const base = {
  engine: 'llama.cpp',
  runtime: `node-llama-cpp ${version}`,
  gpu: llama.gpu,
  devices,
  llama_cpp_release: llama.llamaCppRelease?.release,
  visible_devices: process.env.GGML_VK_VISIBLE_DEVICES ?? null,
};
if (args.probe) {
  console.log(JSON.stringify({ ...base, log }));
  process.exit(0);
}
if (gpu && devices.length === 0) fail(`node-llama-cpp reports gpu '${llama.gpu}' but no GPU device: llama.cpp would run on the CPU`);

const P = Number(args['prompt-tokens']);
const D = Number(args['decode-tokens']);
const vocab = Number(args.vocab);
const t0 = performance.now();
const model = await llama.loadModel({ modelPath: args.model, gpuLayers: 'max' });
const loadMs = performance.now() - t0;
const contextOptions = { contextSize: P + D + 64, batchSize: Math.max(512, P), sequences: 1, ...(args.threads ? { threads: Number(args.threads) } : {}) };
let flashAttention = args['flash-attention'] !== 'off';
let context;
try {
  context = await model.createContext({ ...contextOptions, flashAttention });
} catch (error) {
  if (!flashAttention || args['flash-attention'] === 'on') throw error;
  log.push(`createContext with flashAttention failed (${error.message}); retried without`);
  flashAttention = false;
  context = await model.createContext({ ...contextOptions, flashAttention });
}

// The same ids as `qwen-webgpu bench` feeds (same generator, same modulus).
let seed = 12345;
const prompt = Array.from({ length: P }, () => (seed = (seed * 1103515245 + 12345) >>> 0) % vocab);

async function once() {
  const sequence = context.getSequence();
  const p0 = performance.now();
  await sequence.evaluateWithoutGeneratingNewTokens(prompt);
  const prefillMs = performance.now() - p0;
  let n = 0;
  const d0 = performance.now();
  // The last prompt id goes in again as the first decode step's input: D one-token steps, each sampled greedily.
  for await (const _ of sequence.evaluate([prompt[P - 1]], { temperature: 0 })) if (++n >= D) break;
  const decodeMs = performance.now() - d0;
  sequence.dispose();
  return { prefillMs, decodeMs, n };
}

await once(); // warm-up: pipelines compiled, buffers sized
const r = await once();
const onDevice = log.some((l) => /(Vulkan|CUDA)\d+ model buffer size/.test(l));
const result = {
  ...base,
  model: path.basename(args.model),
  load_ms: Math.round(loadMs),
  gpu_layers: model.gpuLayers,
  threads: context.currentThreads,
  flash_attention: flashAttention,
  simulator_bypassed: Boolean(args['bypass-simulator']),
  prompt_tokens: P,
  decode_tokens: r.n,
  prefill_tokens_per_s: round((P * 1000) / r.prefillMs),
  decode_tokens_per_s: round((r.n * 1000) / r.decodeMs),
  on_device: onDevice,
  log,
};
console.log(JSON.stringify(result));
if (gpu && !onDevice) {
  console.error(`llama.cpp put no model buffer on the GPU (see "log"): not a GPU figure`);
  process.exit(2);
}
process.exit(0); // node-llama-cpp keeps handles open

function round(x) {
  return Math.round(x * 100) / 100;
}

function fail(message) {
  console.log(JSON.stringify({ engine: 'llama.cpp', error: message, log }));
  process.exit(2);
}

function parseArgs(argv) {
  const out = {};
  for (let i = 0; i < argv.length; i++) {
    const key = argv[i].replace(/^--/, '');
    if (i + 1 < argv.length && !argv[i + 1].startsWith('--')) out[key] = argv[++i];
    else out[key] = true;
  }
  for (const need of ['nlc', 'gpu']) if (!out[need]) fail(`missing --${need}`);
  if (!out.probe) for (const need of ['model', 'prompt-tokens', 'decode-tokens', 'vocab']) if (!out[need]) fail(`missing --${need}`);
  return out;
}
