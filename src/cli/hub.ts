import { UsageError } from '../errors.ts';
import { hubCacheDir, listCache, removeFromCache } from '../storage/hf_cache.ts';
import { type HubOptions, cacheModel } from '../storage/hf_model.ts';
import { formatModelRef, parseModelRef } from '../storage/hub.ts';
import { type Args, stringFlag } from './args.ts';
import type { CliHost } from './host.ts';
import { downloadProgress } from './progress.ts';

/** The commands that take the model as their first word (`pull ORG/NAME`) as well as by --model. */
const MODEL_FIRST = new Set(['pull', 'rm']);

/** `pull ORG/NAME ...` → `pull --model ORG/NAME ...`, so the flag parser sees flags only. */
export function modelAsFlag(argv: string[]): string[] {
  const [command, first, ...rest] = argv;
  return MODEL_FIRST.has(command) && first !== undefined && !first.startsWith('--') ? [command, '--model', first, ...rest] : argv;
}

/** How the CLI reaches the hub: the host's environment, downloads shown on stderr. */
export function hubOptions(host: CliHost, timeoutMs?: number): HubOptions {
  return { env: (name) => host.env(name), timeoutMs, onProgress: downloadProgress(host.stderr, host.isTTY) };
}

function hubRefFlag(args: Args, command: string) {
  const model = stringFlag(args, 'model');
  if (model === undefined) throw new UsageError(`${command} takes a hub model: qwen-webgpu ${command} ORG/NAME`);
  const ref = parseModelRef(model);
  if (!ref) throw new UsageError(`${model} is not a hub model id (ORG/NAME, ORG/NAME@REVISION, ORG/NAME:QUANT or ORG/NAME/FILE.gguf)`);
  return ref;
}

/** pull: the model into the cache; prints the snapshot folder (or the GGUF file in it). */
export async function pull(args: Args, host: CliHost, timeoutMs?: number): Promise<void> {
  const ref = hubRefFlag(args, 'pull');
  const cached = await cacheModel(ref, hubOptions(host, timeoutMs));
  const path = cached.file ? `${cached.dir}/${cached.file}` : cached.dir;
  if (args.flags.has('json')) host.stdout(`${JSON.stringify({ model: formatModelRef(ref), commit: cached.commit, path, offline: cached.offline })}\n`);
  else host.stdout(`${path}\n`);
}

/** models: the cache's repositories with their revisions and size. */
export async function listModels(args: Args, host: CliHost): Promise<void> {
  const cacheDir = hubCacheDir((name) => host.env(name));
  const repos = await listCache(cacheDir);
  if (args.flags.has('json')) {
    host.stdout(`${JSON.stringify({ cache: cacheDir, models: repos.map((r) => ({ id: r.repo, revisions: r.revisions, bytes: r.bytes })) })}\n`);
    return;
  }
  if (repos.length === 0) {
    host.stdout(`no models in ${cacheDir}\n`);
    return;
  }
  const rows = repos.map((r) => [
    r.repo,
    r.revisions.map((v) => (v.refs.length > 0 ? `${v.refs.join(',')} (${v.commit.slice(0, 8)})` : v.commit.slice(0, 8))).join(' '),
    `${(r.bytes / 1e6).toFixed(1)} MB`,
  ]);
  const table = [['ID', 'REVISIONS', 'SIZE'], ...rows];
  const widths = [0, 1].map((c) => Math.max(...table.map((row) => row[c].length)));
  for (const row of table) host.stdout(`${row[0].padEnd(widths[0])}  ${row[1].padEnd(widths[1])}  ${row[2]}\n`);
}

/** rm: one repository out of the cache, named exactly as `models` lists it. */
export async function removeModel(args: Args, host: CliHost): Promise<void> {
  const ref = hubRefFlag(args, 'rm');
  if (formatModelRef(ref) !== ref.repo) throw new UsageError(`rm removes a whole repository: give ${ref.repo}, without a revision, quant or file`);
  const removed = await removeFromCache(
    hubCacheDir((name) => host.env(name)),
    ref.repo,
  );
  host.stdout(`removed ${removed.repo} (${(removed.bytes / 1e6).toFixed(1)} MB, ${removed.dir})\n`);
}
