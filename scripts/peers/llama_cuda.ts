import { execFileSync, spawnSync } from 'node:child_process';
import { cpus } from 'node:os';
import { existsSync, mkdirSync, readFileSync, readdirSync, realpathSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';

/**
 * llama.cpp's own `llama-bench` built with CUDA for the local GPU, from the llama.cpp source node-llama-cpp ships
 * (llama/gitRelease.bundle), so the CUDA figures come from the same llama.cpp release as the Vulkan ones. The
 * prebuilt CUDA binaries of node-llama-cpp are not used: on driver 580 their Hopper code is PTX from a newer CUDA
 * the driver refuses. Built once per (release, compute capability) into `cacheDir`.
 */

export interface CudaBench {
  bin: string;
  arch: string;
  release: string;
  /** LD_LIBRARY_PATH entries that supply libraries the loader could not find (cuBLAS from pip wheels). */
  libraryPath: string[];
  notes: string[];
}

export type CudaSetup = { ok: true; bench: CudaBench } | { ok: false; reason: string };

const SEARCH_ROOTS = ['/usr/local', '/opt', '/usr/lib', '/usr/include'];

function which(cmd: string): string | undefined {
  const r = spawnSync('sh', ['-c', `command -v ${cmd}`], { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim() : undefined;
}

function find(name: string): string[] {
  const r = spawnSync('find', [...SEARCH_ROOTS, '-xdev', '-maxdepth', '10', '-name', name], { encoding: 'utf8', maxBuffer: 1 << 24 });
  return r.stdout.split('\n').filter(Boolean);
}

/** "9.0" from nvidia-smi → "90"; undefined without nvidia-smi or a GPU. */
function computeCapability(): string | undefined {
  const r = spawnSync('nvidia-smi', ['--query-gpu=compute_cap', '--format=csv,noheader'], { encoding: 'utf8' });
  const first = r.status === 0 ? r.stdout.trim().split('\n')[0]?.trim() : undefined;
  return first && /^\d+\.\d+$/.test(first) ? first.replace('.', '') : undefined;
}

/** The llama.cpp tree: `<cacheDir>/llama-src` if present (the device bundle unpacks one there), else cloned from the bundle. */
function llamaSource(cacheDir: string, nlcDir: string, log: (line: string) => void): string {
  const src = join(cacheDir, 'llama-src');
  if (existsSync(join(src, 'CMakeLists.txt'))) return src;
  const bundle = join(nlcDir, 'node_modules/node-llama-cpp/llama/gitRelease.bundle');
  if (!existsSync(bundle)) throw new Error(`no llama.cpp source: neither ${src} nor ${bundle}`);
  if (!which('git')) throw new Error('git is needed to unpack the llama.cpp source bundle');
  log(`cloning llama.cpp from ${bundle}`);
  const temp = `${src}.tmp-${process.pid}`;
  rmSync(temp, { recursive: true, force: true });
  execFileSync('git', ['-c', 'advice.detachedHead=false', 'clone', '--quiet', bundle, temp], { stdio: ['ignore', 2, 2] });
  renameSync(temp, src);
  return src;
}

function release(nlcDir: string, src: string): string {
  const info = join(nlcDir, 'node_modules/node-llama-cpp/llama/llama.cpp.info.json');
  if (existsSync(info)) return JSON.parse(readFileSync(info, 'utf8')).tag;
  const stamp = join(src, '.release');
  return existsSync(stamp) ? readFileSync(stamp, 'utf8').trim() : 'unknown';
}

/**
 * cuBLAS may live outside the toolkit (the nvidia-cublas pip wheel: include/ and lib/libcublas.so.13 without the
 * unversioned link CMake looks for); then CMake is told where it is.
 */
function cublasFlags(toolkit: string): { flags: string[]; notes: string[] } | undefined {
  const inToolkit = [join(toolkit, 'include/cublas_v2.h'), join(toolkit, 'targets/x86_64-linux/include/cublas_v2.h')].some(existsSync);
  if (inToolkit) return { flags: [], notes: [] };
  for (const header of find('cublas_v2.h')) {
    const root = dirname(dirname(header));
    const lib = (name: string) => {
      const dir = join(root, 'lib');
      if (!existsSync(dir)) return undefined;
      const hit = readdirSync(dir)
        .filter((f) => f.startsWith(`${name}.so`))
        .sort()[0];
      return hit ? join(dir, hit) : undefined;
    };
    const cublas = lib('libcublas');
    const cublasLt = lib('libcublasLt');
    if (!cublas || !cublasLt) continue;
    const include = dirname(header);
    return {
      flags: [`-DCUDA_cublas_LIBRARY=${cublas}`, `-DCUDA_cublasLt_LIBRARY=${cublasLt}`, `-DCMAKE_CXX_FLAGS=-I${include}`, `-DCMAKE_CUDA_FLAGS=-I${include}`],
      notes: [`cuBLAS from ${root} (not in the CUDA toolkit)`],
    };
  }
  return undefined;
}

/** Directories holding the libraries `ldd bin` reports missing, searched for on this machine. */
function missingLibraryPath(bin: string): string[] {
  const r = spawnSync('ldd', [bin], { encoding: 'utf8' });
  const missing = [...r.stdout.matchAll(/^\s*(\S+) => not found/gm)].map((m) => m[1]);
  const dirs = new Set<string>();
  for (const lib of missing) {
    const hit = find(lib)[0];
    if (hit) dirs.add(dirname(hit));
  }
  return [...dirs];
}

/**
 * `options.jobs`: parallel build jobs (default every core). A build that failed leaves `build.failed` holding why, so
 * that a later call (scripts/device/run.sh builds in the background, then benchmarks) answers at once instead of
 * building again for minutes; removing the build folder tries again.
 */
export function ensureLlamaBenchCuda(
  cacheDir: string,
  nlcDir: string,
  options: { flashAttention: boolean; jobs?: number },
  log: (line: string) => void,
): CudaSetup {
  // The toolkit's own nvcc first: one on PATH may be a wrapper script outside the toolkit.
  const home = process.env.CUDA_HOME ?? process.env.CUDA_PATH;
  const nvcc = [home && join(home, 'bin/nvcc'), '/usr/local/cuda/bin/nvcc'].find((p): p is string => Boolean(p && existsSync(p))) ?? which('nvcc');
  if (!nvcc) return { ok: false, reason: 'nvcc not found (CUDA_HOME, /usr/local/cuda/bin, PATH): no CUDA toolkit to build llama-bench with' };
  const toolkit = dirname(dirname(realpathSync(nvcc)));
  const cmake = which('cmake');
  if (!cmake) return { ok: false, reason: 'cmake not found: needed to build llama-bench' };
  const notes: string[] = [];
  let arch = computeCapability();
  if (!arch) {
    arch = '90';
    notes.push('nvidia-smi gave no compute capability: built for sm_90');
  }
  let src: string;
  try {
    src = llamaSource(cacheDir, nlcDir, log);
  } catch (error) {
    return { ok: false, reason: (error as Error).message };
  }
  const rel = release(nlcDir, src);
  const build = join(cacheDir, 'llama-cuda', `${rel}-sm${arch}${options.flashAttention ? '-fa' : ''}`);
  const bin = join(build, 'bin/llama-bench');
  if (!options.flashAttention) notes.push('CUDA build without FlashAttention kernels (GGML_CUDA_FA=OFF: minutes less to build)');
  const failedMark = join(build, 'build.failed');
  if (!existsSync(bin) && existsSync(failedMark)) return { ok: false, reason: readFileSync(failedMark, 'utf8').trim() };
  if (!existsSync(bin)) {
    const cublas = cublasFlags(toolkit);
    if (!cublas)
      return { ok: false, reason: `cuBLAS (cublas_v2.h with libcublas) not found in the CUDA toolkit at ${toolkit} or under ${SEARCH_ROOTS.join(', ')}` };
    notes.push(...cublas.notes);
    // Only llama-bench: the other tools would triple the build.
    writeFileSync(join(src, 'tools/CMakeLists.txt'), 'add_subdirectory(llama-bench)\n');
    mkdirSync(build, { recursive: true });
    const logFile = join(build, 'build.log');
    const run = (args: string[], timeout: number) => {
      const r = spawnSync(cmake, args, {
        encoding: 'utf8',
        maxBuffer: 1 << 28,
        timeout,
        env: { ...process.env, PATH: `${dirname(nvcc)}:${process.env.PATH}` },
      });
      writeFileSync(logFile, `${r.stdout ?? ''}${r.stderr ?? ''}`, { flag: 'a' });
      return r.status === 0;
    };
    const generator = which('ninja') ? ['-G', 'Ninja'] : [];
    log(`configuring llama-bench (CUDA sm_${arch}, llama.cpp ${rel}) in ${build}`);
    const configured = run(
      [
        '-S',
        src,
        '-B',
        build,
        ...generator,
        '-DCMAKE_BUILD_TYPE=Release',
        '-DGGML_CUDA=ON',
        `-DCMAKE_CUDA_ARCHITECTURES=${arch}`,
        `-DGGML_CUDA_FA=${options.flashAttention ? 'ON' : 'OFF'}`,
        '-DGGML_CUDA_NCCL=OFF',
        '-DGGML_NATIVE=OFF',
        '-DLLAMA_CURL=OFF',
        '-DLLAMA_OPENSSL=OFF',
        '-DLLAMA_BUILD_TESTS=OFF',
        '-DLLAMA_BUILD_EXAMPLES=OFF',
        '-DLLAMA_BUILD_SERVER=OFF',
        '-DLLAMA_BUILD_TOOLS=ON',
        '-DLLAMA_BUILD_APP=OFF',
        ...cublas.flags,
      ],
      600_000,
    );
    const failed = (reason: string): CudaSetup => {
      writeFileSync(failedMark, `${reason} (remove ${build} to build again)\n`);
      return { ok: false, reason };
    };
    if (!configured) return failed(`cmake configure failed: see ${logFile}`);
    const jobs = options.jobs ?? cpus().length;
    log(`building llama-bench with ${jobs} jobs (minutes; log: ${logFile})`);
    if (!run(['--build', build, '--target', 'llama-bench', '-j', String(jobs)], 3_600_000) || !existsSync(bin)) {
      return failed(`llama-bench build failed: see ${logFile}`);
    }
  }
  return { ok: true, bench: { bin, arch, release: rel, libraryPath: missingLibraryPath(bin), notes } };
}

export interface CudaResult {
  prefill_tokens_per_s: number;
  decode_tokens_per_s: number;
  gpu_info?: string;
  backends?: string;
  flash_attn?: unknown;
  samples: { prefill: number[]; decode: number[] };
}

/** `llama-bench -o jsonl` lines → the median of each test's samples (its first sample can carry warm-up). */
export function parseLlamaBench(jsonl: string): CudaResult {
  const rows = jsonl
    .split('\n')
    .filter((l) => l.trim().startsWith('{'))
    .map((l) => JSON.parse(l));
  const prefill = rows.find((r) => r.n_prompt > 0 && r.n_gen === 0);
  const decode = rows.find((r) => r.n_gen > 0 && r.n_prompt === 0);
  if (!prefill || !decode) throw new Error(`llama-bench printed no prefill and decode rows: ${jsonl.slice(0, 500)}`);
  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  const samples = (r: { samples_ts?: number[]; avg_ts: number }) => r.samples_ts ?? [r.avg_ts];
  return {
    prefill_tokens_per_s: Math.round(median(samples(prefill)) * 100) / 100,
    decode_tokens_per_s: Math.round(median(samples(decode)) * 100) / 100,
    gpu_info: prefill.gpu_info,
    backends: prefill.backends,
    flash_attn: prefill.flash_attn,
    samples: { prefill: samples(prefill), decode: samples(decode) },
  };
}
