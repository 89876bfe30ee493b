// Prints llama.cpp's log-probabilities after every prefix of a list of token ids, through node-llama-cpp's prebuilt
// binaries, as little-endian f32 rows [ids, vocab] into OUT, and one JSON line on stdout. The KV cache is f32;
// GGML_VK_DISABLE_F16=1 in the environment keeps the Vulkan back end's arithmetic in f32 too.
//
//   node llama_logits.mjs --nlc DIR --gpu vulkan|false --model F.gguf --ids 1,2,3 --out F.f32
import fs from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

const args = {};
for (let i = 2; i + 1 < process.argv.length; i += 2) args[process.argv[i].replace(/^--/, '')] = process.argv[i + 1];
for (const need of ['nlc', 'gpu', 'model', 'ids', 'out']) if (!args[need]) fail(`missing --${need}`);
const nlc = path.join(args.nlc, 'node_modules/node-llama-cpp');
// node-llama-cpp's dry-run allocation aborts on lavapipe (see llama_run.mjs): its size estimate is used instead.
const { GgufInsights } = await import(pathToFileURL(path.join(nlc, 'dist/gguf/insights/GgufInsights.js')).href);
GgufInsights.prototype._resolveSimulatorSource = async () => null;
const { getLlama } = await import(pathToFileURL(path.join(nlc, 'dist/index.js')).href);
const gpu = args.gpu === 'false' ? false : args.gpu;
const log = [];
const logger = (_level, message) => {
  for (const line of String(message).split('\n')) if (/buffer size|error|failed/i.test(line)) log.push(line.trim());
};
const llama = await getLlama({ gpu, build: 'never', logLevel: 'debug', logger });
const model = await llama.loadModel({ modelPath: args.model, gpuLayers: gpu ? 'max' : 0 });
const ids = args.ids.split(',').map(Number);
const context = await model.createContext({
  contextSize: ids.length + 16,
  batchSize: 512,
  sequences: 1,
  flashAttention: false,
  experimentalKvCacheKeyType: 'F32',
  experimentalKvCacheValueType: 'F32',
});
const results = await context.getSequence().controlledEvaluate(ids.map((id) => [id, { generateNext: { logits: true } }]));
let vocab = 0;
for (const r of results) for (const id of r.next.logits.keys()) vocab = Math.max(vocab, id + 1);
const rows = new Float32Array(ids.length * vocab).fill(Number.NEGATIVE_INFINITY);
results.forEach((r, t) => {
  const logits = r.next.logits;
  const max = Math.max(...logits.values());
  let sum = 0;
  for (const v of logits.values()) sum += Math.exp(v - max);
  const logSum = max + Math.log(sum);
  for (const [id, v] of logits) rows[t * vocab + id] = v - logSum;
});
fs.writeFileSync(args.out, Buffer.from(rows.buffer));
console.log(JSON.stringify({ vocab, rows: ids.length, gpu: llama.gpu, devices: gpu ? await llama.getGpuDeviceNames() : [], log }));
process.exit(0); // node-llama-cpp keeps handles open

function fail(message) {
  console.log(JSON.stringify({ error: message }));
  process.exit(2);
}
