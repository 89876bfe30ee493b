import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

/**
 * node-llama-cpp, pinned, in a folder of its own (never in the project's dependencies: `npm ci` stays lean).
 * Only the binaries this platform needs are installed: its optional dependencies are every platform's builds
 * (~700 MB), of which a Vulkan run needs one (its own CPU backends come with it).
 */
export const NODE_LLAMA_CPP_VERSION = '3.22.1';

export function nodeLlamaCppPackages(gpus: string[]): string[] {
  const platform = `${process.platform}-${process.arch}`;
  const binaries = gpus.map((gpu) => (gpu === 'cpu' ? `@node-llama-cpp/${platform}` : `@node-llama-cpp/${platform}-${gpu}`));
  return [`node-llama-cpp@${NODE_LLAMA_CPP_VERSION}`, ...[...new Set(binaries)].map((p) => `${p}@${NODE_LLAMA_CPP_VERSION}`)];
}

function installedVersion(dir: string, name: string): string | undefined {
  const file = join(dir, 'node_modules', name, 'package.json');
  return existsSync(file) ? JSON.parse(readFileSync(file, 'utf8')).version : undefined;
}

/** Installs what is missing (a few seconds with a registry) and returns `dir`. */
export function ensureNodeLlamaCpp(dir: string, gpus: string[], log: (line: string) => void): string {
  const packages = nodeLlamaCppPackages(gpus);
  const missing = packages.filter((p) => installedVersion(dir, p.slice(0, p.lastIndexOf('@'))) !== NODE_LLAMA_CPP_VERSION);
  if (missing.length === 0) return dir;
  mkdirSync(dir, { recursive: true });
  if (!existsSync(join(dir, 'package.json'))) writeFileSync(join(dir, 'package.json'), '{ "private": true }\n');
  log(`installing ${missing.join(' ')} into ${dir}`);
  // --ignore-scripts: node-llama-cpp's postinstall would try to fetch or build binaries; the prebuilt ones are used.
  const args = ['install', '--omit=optional', '--ignore-scripts', '--no-audit', '--no-fund', '--loglevel=error', ...packages];
  try {
    execFileSync('npm', args, { cwd: dir, stdio: ['ignore', 2, 2], timeout: 600_000 });
  } catch (error) {
    throw new Error(`npm ${args.join(' ')} in ${dir} failed: ${(error as Error).message}`);
  }
  return dir;
}
