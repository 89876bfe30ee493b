/**
 * `npm run bench:peers`: our engine against llama.cpp on the same adapter, same shapes, same weight bytes.
 *
 * For each variant: a GGUF of exactly the shapes `bench --synthetic` builds (every matrix Q4_0 = our int4's bytes),
 * then our CLI's `bench --json` and llama.cpp on that GGUF (node-llama-cpp's Vulkan build; optionally llama.cpp's
 * own llama-bench built with CUDA), each in a child process with a timeout. Prints one table of prefill and decode
 * tok/s with ours ÷ theirs; speeds are printed, never asserted.
 *
 * Runs from the repository (node --import tsx) or from the device bundle (scripts/device/bundle.sh), where it sits
 * beside qwen-cli.mjs and a prebuilt node-llama-cpp in nlc/.
 */
import { spawn } from 'node:child_process';
import { appendFileSync, existsSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { SYNTHETIC_GGUF_VARIANTS, syntheticGguf } from '../src/bench/synthetic_gguf.ts';
import { ensureSyntheticGguf } from './peers/gguf.ts';
import { type CudaSetup, ensureLlamaBenchCuda, parseLlamaBench } from './peers/llama_cuda.ts';
import { ensureNodeLlamaCpp } from './peers/node_llama_cpp.ts';
import { PEER_TITLES, type PeerError, type Row, formatTable } from './peers/report.ts';

const USAGE = `usage: npm run bench:peers -- [options]

Times qwen-webgpu (bench --synthetic) and llama.cpp on a GGUF of the same shapes, on the same adapter.

  --variants a,b        ${SYNTHETIC_GGUF_VARIANTS.join(', ')} (default: all)
  --layers N            keep the first N layers (both engines)
  --prompt-tokens N     prefill length (default 512)
  --decode-tokens N     greedy decode steps (default 64)
  --adapter NAME        our --adapter (e.g. llvmpipe, NVIDIA); llama.cpp's Vulkan device is the one of that name
  --dtypes int4[,f16]   our weight types (default int4; llama.cpp always reads Q4_0)
  --peers vulkan[,cuda][,cpu] | none
                        llama.cpp builds to run (default vulkan): node-llama-cpp's Vulkan build, llama-bench built
                        here with CUDA (needs nvcc, cmake and cuBLAS), node-llama-cpp on the CPU
  --out FILE.jsonl      append every result as one JSON line
  --timeout S           per engine run (default 1800)
  --cache DIR           GGUFs, node-llama-cpp and the CUDA build (default .cache/peers)
  --nlc DIR             a folder holding node_modules/node-llama-cpp (default: installed into the cache on demand)
  --cuda-flash-attention  build llama-bench's FlashAttention kernels too (a longer build)
  --build-jobs N        parallel jobs of the CUDA build (default: every core)
  --prepare-only        install and build the peers --peers names (node-llama-cpp, llama-bench with CUDA), run
                        nothing, exit 1 if one could not be set up (scripts/device/run.sh builds CUDA this way while
                        our own benchmarks run)
  --help

Environment: VK_DRIVER_FILES (used by both engines; with --adapter llvmpipe it defaults to .cache/lavapipe's ICD),
GGML_VK_VISIBLE_DEVICES (skips the device search), PEERS_VERBOSE=1 (child processes' logs to stderr).`;

class UsageError extends Error {}

interface Options {
  variants: string[];
  layers?: number;
  promptTokens: number;
  decodeTokens: number;
  adapter?: string;
  dtypes: string[];
  peers: string[];
  out?: string;
  timeoutS: number;
  cache?: string;
  nlc?: string;
  cudaFlashAttention: boolean;
  buildJobs?: number;
  prepareOnly: boolean;
}

function parseArgs(argv: string[]): Options | 'help' {
  const o: Options = {
    variants: SYNTHETIC_GGUF_VARIANTS,
    promptTokens: 512,
    decodeTokens: 64,
    dtypes: ['int4'],
    peers: ['vulkan'],
    timeoutS: 1800,
    cudaFlashAttention: false,
    prepareOnly: false,
  };
  const list = (v: string, allowed: string[], flag: string) => {
    const items = v
      .split(',')
      .map((s) => s.trim())
      .filter(Boolean);
    const bad = items.filter((s) => !allowed.includes(s));
    if (items.length === 0 || bad.length) throw new UsageError(`${flag}: ${bad.join(', ') || 'empty'}; choose from ${allowed.join(', ')}`);
    return items;
  };
  const int = (v: string, flag: string) => {
    if (!/^\d+$/.test(v) || Number(v) <= 0) throw new UsageError(`${flag} takes a positive integer, got "${v}"`);
    return Number(v);
  };
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    if (flag === '--help' || flag === '-h') return 'help';
    if (flag === '--cuda-flash-attention') {
      o.cudaFlashAttention = true;
      continue;
    }
    if (flag === '--prepare-only') {
      o.prepareOnly = true;
      continue;
    }
    const value = () => {
      const v = argv[++i];
      if (v === undefined || v.startsWith('--')) throw new UsageError(`${flag} needs a value`);
      return v;
    };
    switch (flag) {
      case '--variants':
        o.variants = list(value(), SYNTHETIC_GGUF_VARIANTS, flag);
        break;
      case '--layers':
        o.layers = int(value(), flag);
        break;
      case '--prompt-tokens':
        o.promptTokens = int(value(), flag);
        break;
      case '--decode-tokens':
        o.decodeTokens = int(value(), flag);
        break;
      case '--adapter':
        o.adapter = value();
        break;
      case '--dtypes':
        o.dtypes = list(value(), ['int4', 'f16', 'f32'], flag);
        break;
      case '--peers': {
        const v = value();
        o.peers = v === 'none' ? [] : list(v, ['vulkan', 'cuda', 'cpu'], flag);
        break;
      }
      case '--out':
        o.out = value();
        break;
      case '--timeout':
        o.timeoutS = int(value(), flag);
        break;
      case '--build-jobs':
        o.buildJobs = int(value(), flag);
        break;
      case '--cache':
        o.cache = resolve(value());
        break;
      case '--nlc':
        o.nlc = resolve(value());
        break;
      default:
        throw new UsageError(`unknown option ${flag}`);
    }
  }
  return o;
}

const progress = (line: string) => process.stderr.write(`[bench:peers] ${line}\n`);

interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
  timedOut: boolean;
}

/** A child process with a wall-clock limit; stderr kept (and streamed when PEERS_VERBOSE is set). */
function run(cmd: string, args: string[], options: { env?: NodeJS.ProcessEnv; cwd?: string; timeoutS: number }): Promise<RunResult> {
  return new Promise((done) => {
    const child = spawn(cmd, args, { env: options.env, cwd: options.cwd, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => {
      stderr += d;
      if (stderr.length > 1 << 20) stderr = stderr.slice(-(1 << 19));
      if (process.env.PEERS_VERBOSE) process.stderr.write(d);
    });
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, options.timeoutS * 1000);
    child.on('close', (code) => {
      clearTimeout(timer);
      done({ code, stdout, stderr, timedOut });
    });
  });
}

const lastJson = (stdout: string): Record<string, any> | undefined => {
  const line = stdout
    .trim()
    .split('\n')
    .reverse()
    .find((l) => l.startsWith('{'));
  return line ? JSON.parse(line) : undefined;
};

const tail = (s: string, lines = 15) => s.trim().split('\n').slice(-lines).join('\n');

/** One line that says why (the child's own error line when it printed one), then the end of its stderr. */
function failure(what: string, r: RunResult, timeoutS: number): string {
  if (r.timedOut) return `${what} timed out after ${timeoutS} s`;
  const json = lastJson(r.stdout);
  const said =
    json?.error ??
    r.stderr
      .split('\n')
      .find((l) => /^(error|\w*Error)\b/.test(l.trim()))
      ?.trim();
  return `${what} exited with ${r.code}${said ? `: ${said}` : ''}\n${tail(r.stderr)}`;
}

/** Names of Vulkan devices by vendor: our adapter's name and llama.cpp's device name differ in form. */
const VENDORS = [/llvmpipe|lavapipe/i, /swiftshader/i, /nvidia/i, /amd|radeon/i, /intel/i, /apple/i, /mali/i, /adreno/i];
const CPU_TYPE = /llvmpipe|lavapipe|swiftshader/i;

function matchesAdapter(deviceName: string, adapterFlag: string | undefined, ourAdapter: string | undefined): boolean {
  if (adapterFlag) return deviceName.toLowerCase().includes(adapterFlag.toLowerCase()) || (VENDORS.find((v) => v.test(adapterFlag))?.test(deviceName) ?? false);
  const vendor = ourAdapter ? VENDORS.find((v) => v.test(ourAdapter)) : undefined;
  return vendor ? vendor.test(deviceName) : false;
}

interface VulkanDevice {
  index: string;
  name: string;
  all: string[];
}

async function main(): Promise<void> {
  let parsed: Options | 'help';
  try {
    parsed = parseArgs(process.argv.slice(2));
  } catch (error) {
    if (!(error instanceof UsageError)) throw error;
    process.stderr.write(`bench:peers: ${error.message}\n\n${USAGE}\n`);
    process.exit(2);
  }
  if (parsed === 'help') {
    process.stdout.write(`${USAGE}\n`);
    return;
  }
  const o = parsed;
  const here = dirname(fileURLToPath(import.meta.url));
  const bundled = existsSync(join(here, 'qwen-cli.mjs'));
  const root = bundled ? here : resolve(here, '..');
  const cache = o.cache ?? (bundled ? join(here, 'cache') : join(root, '.cache/peers'));
  const runner = join(here, 'peers/llama_run.mjs');
  const date = new Date().toISOString();

  // One Vulkan driver set for both engines. Without it our host would add the software ICDs itself and llama.cpp
  // would see whatever the loader finds: different drivers, or none.
  const env: NodeJS.ProcessEnv = { ...process.env };
  const lavapipe = join(root, '.cache/lavapipe/lvp_icd.json');
  if (!env.VK_DRIVER_FILES && !env.VK_ICD_FILENAMES && o.adapter && /llvmpipe|lavapipe/i.test(o.adapter) && existsSync(lavapipe)) {
    env.VK_DRIVER_FILES = lavapipe;
  }
  const driverNote = env.VK_DRIVER_FILES ?? env.VK_ICD_FILENAMES ?? "the Vulkan loader's default search (ours also adds .cache/lavapipe and SwiftShader)";

  // Peers' setup first, so a failed install or build shows before the long runs.
  const nlcPeers = o.peers.filter((p) => p === 'vulkan' || p === 'cpu');
  let nlcDir: string | undefined = o.nlc ?? (bundled ? join(here, 'nlc') : undefined);
  const setupErrors: Record<string, string> = {};
  if (!nlcDir && o.peers.length) {
    try {
      nlcDir = ensureNodeLlamaCpp(join(cache, 'node-llama-cpp'), nlcPeers, progress);
    } catch (error) {
      for (const p of o.peers) setupErrors[p] = (error as Error).message;
    }
  }
  let cuda: CudaSetup | undefined;
  if (o.peers.includes('cuda') && nlcDir) {
    cuda = ensureLlamaBenchCuda(cache, nlcDir, { flashAttention: o.cudaFlashAttention, jobs: o.buildJobs }, progress);
    if (!cuda.ok) {
      setupErrors.cuda = cuda.reason;
      progress(`llama.cpp CUDA skipped: ${cuda.reason}`);
    }
  }

  if (o.prepareOnly) {
    for (const [peer, why] of Object.entries(setupErrors)) progress(`${peer}: not set up: ${why}`);
    if (cuda?.ok) progress(`llama-bench with CUDA ready: ${cuda.bench.bin}`);
    process.exitCode = Object.keys(setupErrors).length ? 1 : 0;
    return;
  }

  const ours = bundled ? [join(here, 'qwen-cli.mjs')] : ['--import', 'tsx', join(root, 'src/hosts/node/cli.ts')];
  const rows: Row[] = [];
  const notes = new Set<string>();
  let ourAdapter: string | undefined;
  let ourBackend: string | undefined;
  let device: VulkanDevice | PeerError | undefined;

  const record = (r: Record<string, unknown>) => {
    if (o.out) appendFileSync(o.out, `${JSON.stringify({ date, vk_driver_files: env.VK_DRIVER_FILES ?? env.VK_ICD_FILENAMES ?? null, ...r })}\n`);
  };

  const findVulkanDevice = async (): Promise<VulkanDevice | PeerError> => {
    const probe = async (index: string | undefined) => {
      const r = await run(process.execPath, [runner, '--nlc', nlcDir!, '--gpu', 'vulkan', '--probe'], {
        env: { ...env, ...(index === undefined ? {} : { GGML_VK_VISIBLE_DEVICES: index }) },
        timeoutS: 120,
      });
      return r.code === 0 ? (lastJson(r.stdout)?.devices as string[] | undefined) : undefined;
    };
    const names: string[] = [];
    if (env.GGML_VK_VISIBLE_DEVICES !== undefined) {
      const listed = (await probe(undefined)) ?? [];
      const hit = listed.find((n) => matchesAdapter(n, o.adapter, ourAdapter));
      return hit && listed.length === 1
        ? { index: env.GGML_VK_VISIBLE_DEVICES, name: hit, all: listed }
        : {
            status: 'refused',
            error: `GGML_VK_VISIBLE_DEVICES=${env.GGML_VK_VISIBLE_DEVICES} gives llama.cpp ${JSON.stringify(listed)}: not one device matching our adapter ${ourAdapter ?? o.adapter}`,
          };
    }
    // One device per process: ggml_vulkan hides CPU-type devices unless named by index, and splits layers over
    // every device it uses. An index past the last device makes the process fail: the end of the list.
    progress('looking for the Vulkan device llama.cpp should use');
    for (let i = 0; i < 16; i++) {
      const found = await probe(String(i));
      if (!found) break;
      names.push(found[0] ?? '?');
    }
    const index = names.findIndex((n) => matchesAdapter(n, o.adapter, ourAdapter));
    if (index < 0)
      return { status: 'refused', error: `no Vulkan device of llama.cpp (${JSON.stringify(names)}) matches our adapter "${ourAdapter ?? o.adapter}"` };
    return { index: String(index), name: names[index], all: names };
  };

  for (const variant of o.variants) {
    const plan = syntheticGguf(variant, { layers: o.layers });
    const layers = plan.config.numLayers;
    let gguf: string | undefined;
    let ggufError: string | undefined;
    if (o.peers.some((p) => !setupErrors[p])) {
      try {
        gguf = ensureSyntheticGguf(join(cache, 'gguf'), variant, o.layers, progress);
      } catch (error) {
        ggufError = (error as Error).message;
      }
    }

    const variantRows: Row[] = [];
    for (const dtype of o.dtypes) {
      progress(`ours: ${variant} (${layers} layers) ${dtype}`);
      const args = [
        ...ours,
        'bench',
        '--synthetic',
        variant,
        '--dtype',
        dtype,
        '--prompt-tokens',
        String(o.promptTokens),
        '--decode-tokens',
        String(o.decodeTokens),
        '--json',
      ];
      if (o.layers) args.push('--layers', String(o.layers));
      if (o.adapter) args.push('--adapter', o.adapter);
      const r = await run(process.execPath, args, { env, cwd: bundled ? undefined : root, timeoutS: o.timeoutS });
      const json = r.code === 0 ? lastJson(r.stdout) : undefined;
      const row: Row = { variant, dtype, peers: {} };
      if (json) {
        row.ours = json as Row['ours'];
        ourAdapter ??= json.adapter;
        ourBackend ??= json.backend;
        record({ kind: 'qwen-webgpu', variant, ...json });
        progress(`  ${json.prefill_tokens_per_s} / ${json.decode_tokens_per_s} tok/s on ${json.adapter}`);
      } else {
        const why = failure('ours', r, o.timeoutS);
        notes.add(`ours, ${variant} ${dtype}: ${why.split('\n')[0]}`);
        progress(why);
        record({ kind: 'qwen-webgpu', variant, dtype, error: why });
      }
      variantRows.push(row);
    }

    const setPeer = (peer: string, value: Record<string, any> | PeerError) => {
      for (const row of variantRows) row.peers[peer] = value as Row['peers'][string];
    };
    for (const peer of o.peers) {
      const title = PEER_TITLES[peer];
      if (setupErrors[peer] || ggufError) {
        setPeer(peer, { status: 'skipped', error: setupErrors[peer] ?? ggufError! });
        notes.add(`${title}: ${setupErrors[peer] ?? ggufError}`);
        continue;
      }
      progress(`${title}: ${variant} (${layers} layers)`);
      if (peer === 'cuda' && cuda?.ok) {
        const b = cuda.bench;
        const libs = [...b.libraryPath, ...(env.LD_LIBRARY_PATH ? [env.LD_LIBRARY_PATH] : [])].join(':');
        // One GPU, as ours uses one: llama-bench would split layers over every visible GPU.
        const visible = env.CUDA_VISIBLE_DEVICES ?? '0';
        const r = await run(b.bin, ['-m', gguf!, '-p', String(o.promptTokens), '-n', String(o.decodeTokens), '-ngl', '99', '-r', '3', '-o', 'jsonl'], {
          env: { ...env, LD_LIBRARY_PATH: libs, CUDA_VISIBLE_DEVICES: visible },
          timeoutS: o.timeoutS,
        });
        try {
          if (r.code !== 0) throw new Error(failure('llama-bench', r, o.timeoutS));
          const result = parseLlamaBench(r.stdout);
          setPeer(peer, result);
          record({
            kind: 'llama.cpp cuda',
            variant,
            layers,
            prompt_tokens: o.promptTokens,
            decode_tokens: o.decodeTokens,
            release: b.release,
            arch: b.arch,
            ...result,
          });
          notes.add(
            `${title}: llama-bench (llama.cpp ${b.release}, sm_${b.arch}, -ngl 99 -r 3, median of 3 samples) on ${result.gpu_info ?? '?'} (CUDA_VISIBLE_DEVICES=${visible}), flash_attn ${JSON.stringify(result.flash_attn)}`,
          );
          for (const n of b.notes) notes.add(`${title}: ${n}`);
        } catch (error) {
          setPeer(peer, { status: 'failed', error: (error as Error).message });
          notes.add(`${title}, ${variant}: ${(error as Error).message.split('\n')[0]}`);
          progress((error as Error).message);
        }
        continue;
      }
      // node-llama-cpp: Vulkan (verified to be on the adapter ours used) or CPU.
      const args = [
        runner,
        '--nlc',
        nlcDir!,
        '--model',
        gguf!,
        '--prompt-tokens',
        String(o.promptTokens),
        '--decode-tokens',
        String(o.decodeTokens),
        '--vocab',
        String(plan.config.vocabSize),
      ];
      const runEnv = { ...env };
      if (peer === 'vulkan') {
        // Found once; a failed search is tried again (our adapter's name may be known by the next variant).
        if (!device || 'error' in device) device = await findVulkanDevice();
        if ('error' in device) {
          setPeer(peer, device);
          notes.add(`${title}: refused: ${device.error}`);
          progress(device.error);
          continue;
        }
        runEnv.GGML_VK_VISIBLE_DEVICES = device.index;
        args.push('--gpu', 'vulkan');
        // On a CPU-type device node-llama-cpp's memory simulator aborts the process, and flash attention ran for
        // over 10 minutes on 32 tokens where it took 2 s without (lavapipe).
        if (CPU_TYPE.test(device.name)) args.push('--bypass-simulator', '--flash-attention', 'off');
      } else {
        // node-llama-cpp's default took 4 threads on a 2-core VM, and ggml's spinning threads then made decode
        // over 100× slower than one thread: one thread per core instead.
        args.push('--gpu', 'false', '--threads', String(availableParallelism()));
      }
      const r = await run(process.execPath, args, { env: runEnv, timeoutS: o.timeoutS });
      const json = lastJson(r.stdout);
      const wanted = peer === 'vulkan' && device && 'name' in device ? device.name : undefined;
      // A Vulkan figure counts only if llama.cpp saw exactly our device and put model buffers on it.
      const ran = r.code === 0 && json && !json.error;
      if (ran && (peer !== 'vulkan' || (json.on_device && json.devices?.length === 1 && json.devices[0] === wanted))) {
        setPeer(peer, json);
        record({ kind: `llama.cpp ${peer}`, variant, layers, ...json });
        progress(`  ${json.prefill_tokens_per_s} / ${json.decode_tokens_per_s} tok/s on ${json.devices?.[0] ?? 'CPU'}`);
        notes.add(`${title}, ${variant}: ${llamaNote(json, peer === 'vulkan' && plan.config.tieWordEmbeddings)}`);
        if (json.decode_tokens < o.decodeTokens)
          notes.add(`${title}, ${variant}: decode stopped at an end-of-generation id after ${json.decode_tokens} tokens (rate over those)`);
      } else {
        const why =
          r.code === 0 && json
            ? `llama.cpp did not run on ${wanted ?? 'the device'}: devices ${JSON.stringify(json.devices)}, model buffers ${JSON.stringify(buffers(json.log ?? []))}`
            : failure(`llama.cpp ${peer}`, r, o.timeoutS);
        // Exit 2: the runner itself found the model off the GPU.
        const status = ran || r.code === 2 ? 'refused' : 'failed';
        setPeer(peer, { status, error: why });
        notes.add(`${title}, ${variant}: ${status}: ${why.split('\n')[0]}`);
        record({ kind: `llama.cpp ${peer}`, variant, layers, error: why, log: json?.log });
        progress(why);
      }
    }
    rows.push(...variantRows);
  }

  // The report: stdout, so it can be redirected; progress went to stderr.
  const peerTitles = o.peers.map((p) => PEER_TITLES[p]);
  const lines = [
    `# Peer benchmark, ${date}`,
    '',
    `- ours: qwen-webgpu \`bench --synthetic V${o.layers ? ` --layers ${o.layers}` : ''} --prompt-tokens ${o.promptTokens} --decode-tokens ${o.decodeTokens}${o.adapter ? ` --adapter ${o.adapter}` : ''}\` on ${ourAdapter ? `${ourAdapter} [${ourBackend}]` : '? (no run of ours finished)'}`,
    ...(o.peers.length ? [`- peers: ${peerTitles.join(', ')}, on a GGUF of the same shapes (every matrix Q4_0: the bytes our int4 reads)`] : []),
    ...(device && 'name' in device
      ? [`- llama.cpp Vulkan device: ${device.name} (GGML_VK_VISIBLE_DEVICES=${device.index}; devices seen: ${device.all.join(', ')})`]
      : []),
    `- Vulkan driver (both engines): ${driverNote}`,
    `- tok/s, prefill ${o.promptTokens} tokens / decode ${o.decodeTokens} greedy steps after one warm-up run; ours ÷ llama.cpp above 1 means ours is faster`,
    '',
    formatTable(rows, o.peers),
    '',
  ];
  if (ourAdapter && CPU_TYPE.test(ourAdapter))
    notes.add("software adapter: both engines run on this machine's CPU cores through the Vulkan driver; the figures say nothing about a GPU");
  if (o.peers.includes('vulkan') || o.peers.includes('cpu')) {
    notes.add(
      'llama.cpp through node-llama-cpp samples each decode step on the host (the logits come back every step); ours samples on the GPU and reads back the token id',
    );
  }
  if (notes.size) lines.push('Notes:', ...[...notes].map((n) => `- ${n}`), '');
  process.stdout.write(lines.join('\n'));
  if (o.out) progress(`results appended to ${o.out}`);
  if (!rows.some((r) => r.ours)) process.exitCode = 1;
}

/** "CPU_Mapped model 136.41 MiB" for each buffer line of llama.cpp's log. */
function buffers(log: string[]): string[] {
  return log.flatMap((l) => {
    const m = /(\S+)\s+(model|KV|RS|compute|output) buffer size\s*=\s*([\d.]+ \w+)/.exec(l);
    return m ? [`${m[1]} ${m[2]} ${m[3]}`] : [];
  });
}

function llamaNote(json: Record<string, any>, tied: boolean): string {
  const log: string[] = json.log ?? [];
  const parts = [
    `${json.runtime} (llama.cpp ${json.llama_cpp_release ?? '?'})`,
    `${json.gpu_layers} layers offloaded`,
    `${json.threads} CPU threads`,
    `flash attention ${json.flash_attention ? 'on' : 'off'}`,
  ];
  if (json.simulator_bypassed) parts.push("node-llama-cpp's memory simulator bypassed");
  parts.push(`buffers: ${buffers(log).join(', ')}`);
  const splits = log.map((l) => /splits = (\d+)/.exec(l)?.[1]).find(Boolean);
  if (splits) parts.push(`graph splits ${splits}`);
  const onCpu = log.find((l) => /cannot be used with preferred buffer type/.test(l));
  if (onCpu)
    parts.push(`"${onCpu.replace(/^\S+: /, '')}"${tied ? ' (tied embeddings: the output projection shares token_embd, so it runs on the CPU too)' : ''}`);
  return parts.join('; ');
}

main().catch((error) => {
  process.stderr.write(`bench:peers: ${(error as Error).stack ?? error}\n`);
  process.exit(1);
});
