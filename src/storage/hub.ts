import { ModelFormatError, NetworkError, StorageError, UsageError } from '../errors.ts';

/**
 * Models named as on the Hugging Face hub, and the hub's HTTP API: no Node, Deno or DOM here, so the CLI's disk
 * cache (src/storage/hf_cache.ts) and the browser's worker share it.
 *
 *   ORG/NAME                the repository's safetensors checkpoint at `main`
 *   ORG/NAME@REVISION       at a branch, tag or commit
 *   ORG/NAME:QUANT          the repository's GGUF whose name holds QUANT (as llama.cpp's `-hf` picks it)
 *   ORG/NAME/FILE.gguf      a GGUF by its file name
 * A revision comes before a quant: `ORG/NAME@v1:Q4_K_M`, `ORG/NAME/FILE.gguf@v1`.
 */
export interface HubRef {
  /** ORG/NAME. */
  repo: string;
  /** A branch, tag or commit (default `main`). */
  revision: string;
  /** A GGUF quant to look for (`Q4_K_M`), case-insensitively. */
  quant?: string;
  /** A GGUF file of the repository, by its path. */
  file?: string;
}

/** The environment variables the hub reads (HF_ENDPOINT, HF_TOKEN, HF_HUB_OFFLINE, HF_HOME, HF_HUB_CACHE). */
export type Env = (name: string) => string | undefined;

export const DEFAULT_REVISION = 'main';
/** The hub when HF_ENDPOINT does not name another. */
export const HUB_ENDPOINT = 'https://huggingface.co';

// Hub repository names: letters, digits, '-', '_', '.'; neither part starts with a dot or a dash.
const PART = '[A-Za-z0-9_][A-Za-z0-9._-]*';
const REF = new RegExp(`^(${PART}/${PART})(?:/([^@:]+\\.gguf))?(?:@([^:@]+))?(?::([A-Za-z0-9_.-]+))?$`, 'i');

/**
 * A hub model reference, or undefined when `text` is not one (a URL, a path like `./x` or `/x`, a single name).
 * A local path that looks like ORG/NAME is the caller's to rule out first: local paths win.
 */
export function parseModelRef(text: string): HubRef | undefined {
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(text)) return undefined;
  const m = REF.exec(text);
  if (!m) return undefined;
  const [, repo, file, revision, quant] = m;
  if (file !== undefined && quant !== undefined) throw new UsageError(`${text}: give a GGUF by its file name or by :QUANT, not both`);
  // NAME.gguf is a local file that is missing, not a repository.
  if (/\.gguf$/i.test(repo) || repo.includes('..') || file?.split('/').some((p) => p === '..' || p === '.' || p === '')) return undefined;
  return { repo, revision: revision ?? DEFAULT_REVISION, ...(file !== undefined && { file }), ...(quant !== undefined && { quant }) };
}

/** How a reference is written back (messages, `pull`'s output). */
export function formatModelRef(ref: HubRef): string {
  const file = ref.file ? `/${ref.file}` : '';
  const revision = ref.revision === DEFAULT_REVISION ? '' : `@${ref.revision}`;
  return `${ref.repo}${file}${revision}${ref.quant ? `:${ref.quant}` : ''}`;
}

/** $HF_ENDPOINT, else https://huggingface.co (without a trailing slash). */
export function hubEndpoint(env: Env): string {
  return (env('HF_ENDPOINT') || HUB_ENDPOINT).replace(/\/+$/, '');
}

/** $HF_TOKEN (undefined when unset or empty). */
export function hubToken(env: Env): string | undefined {
  return env('HF_TOKEN') || undefined;
}

/** HF_HUB_OFFLINE set to 1, true, yes or on: no network at all. */
export function hubOffline(env: Env): boolean {
  return /^(1|true|yes|on)$/i.test(env('HF_HUB_OFFLINE') ?? '');
}

/** The headers of every hub request: the token, when there is one. */
export function hubHeaders(token: string | undefined): Record<string, string> {
  return token ? { Authorization: `Bearer ${token}` } : {};
}

/** The download URL of one file of a repository at a revision. */
export function resolveUrl(endpoint: string, repo: string, revision: string, file: string): string {
  return `${endpoint}/${repo}/resolve/${encodeURIComponent(revision)}/${file.split('/').map(encodeURIComponent).join('/')}`;
}

/** The hub API's description of a repository at a revision. */
export function revisionUrl(endpoint: string, repo: string, revision: string): string {
  return `${endpoint}/api/models/${repo}/revision/${encodeURIComponent(revision)}`;
}

export interface RepoListing {
  /** The commit the revision points at. */
  commit: string;
  /** Every file of the repository at that commit. */
  files: string[];
}

/**
 * The commit and files of `ref.repo` at `ref.revision` (GET /api/models/ORG/NAME/revision/REV). A gated or
 * private repository without a token (401/403) and a missing one (404) are StorageErrors naming the repo; a
 * failed connection is a NetworkError (the caller may fall back to a cache).
 */
export async function listRepo(ref: HubRef, options: { endpoint: string; token?: string; fetch?: typeof fetch }): Promise<RepoListing> {
  const url = revisionUrl(options.endpoint, ref.repo, ref.revision);
  const res = await hubFetch(url, ref, 'GET', options);
  const body = (await res.json().catch(() => undefined)) as { sha?: unknown; siblings?: unknown } | undefined;
  const siblings = Array.isArray(body?.siblings) ? body.siblings : undefined;
  if (typeof body?.sha !== 'string' || !siblings) throw new ModelFormatError(`${url} did not answer with a repository listing ({sha, siblings})`, ref.repo);
  return { commit: body.sha, files: siblings.map((s: { rfilename?: unknown }) => s.rfilename).filter((f): f is string => typeof f === 'string') };
}

/**
 * One hub request with the token and the hub's failures in words. `redirect: 'manual'` lets a HEAD read the
 * headers of the hub's own answer (X-Linked-Etag, X-Repo-Commit) rather than the storage it redirects to.
 */
export async function hubFetch(
  url: string,
  ref: HubRef,
  method: 'GET' | 'HEAD',
  options: { token?: string; fetch?: typeof fetch; headers?: Record<string, string>; redirect?: RequestRedirect; signal?: AbortSignal },
): Promise<Response> {
  const fetchImpl = options.fetch ?? globalThis.fetch.bind(globalThis);
  let res: Response;
  try {
    res = await fetchImpl(url, {
      method,
      headers: { ...hubHeaders(options.token), ...options.headers },
      redirect: options.redirect ?? 'follow',
      signal: options.signal,
    });
  } catch (error) {
    const cause = (error as { cause?: { code?: string; message?: string } }).cause;
    throw new NetworkError(`cannot reach ${new URL(url).origin} (${cause?.code ?? cause?.message ?? (error as Error).message})`, ref.repo, url, {
      cause: error,
    });
  }
  if (res.ok || (res.status >= 300 && res.status < 400) || res.status === 206) return res;
  res.body?.cancel().catch(() => {});
  if (res.status === 401 || res.status === 403) {
    throw new StorageError(
      `${ref.repo}: the hub refused access (HTTP ${res.status}): the repository is gated or private; ` +
        (options.token ? 'HF_TOKEN does not grant access to it (accept its terms on the hub)' : 'set HF_TOKEN to a token that may read it'),
    );
  }
  if (res.status === 404)
    throw new StorageError(`${ref.repo}: not found on ${new URL(url).origin} (no such repository, revision ${ref.revision} or file: ${url})`);
  throw new NetworkError(`HTTP ${res.status} from ${url}`, ref.repo, url);
}

/** Files of a Hugging Face safetensors checkpoint the engine reads (besides the weights); the others are skipped. */
export const CHECKPOINT_FILES = ['config.json', 'generation_config.json', 'tokenizer.json', 'tokenizer_config.json', 'chat_template.jinja'] as const;
export const SAFETENSORS_INDEX = 'model.safetensors.index.json';

/**
 * The GGUF a reference names in a repository's files: by file name, or the one file whose name holds the quant
 * (case-insensitively; a split GGUF's first part, `-00001-of-`, counts as one file). None, or several, is an
 * error listing the repository's GGUFs.
 */
export function pickGguf(ref: HubRef, files: readonly string[]): string {
  const ggufs = files.filter((f) => /\.gguf$/i.test(f));
  const list = ggufs.length > 0 ? ggufs.join(', ') : 'none';
  if (ref.file !== undefined) {
    if (files.includes(ref.file)) return ref.file;
    throw new StorageError(`${ref.repo}@${ref.revision} has no file ${ref.file} (its GGUFs: ${list})`);
  }
  const quant = (ref.quant ?? '').toLowerCase();
  const matches = ggufs.filter((f) => (f.split('/').pop() ?? f).toLowerCase().includes(quant));
  const whole = matches.filter((f) => !/-\d{5}-of-\d{5}\.gguf$/i.test(f) || /-00001-of-\d{5}\.gguf$/i.test(f));
  if (whole.length === 1) return whole[0];
  if (whole.length === 0) throw new StorageError(`${ref.repo}@${ref.revision} has no GGUF whose name holds ${ref.quant} (its GGUFs: ${list})`);
  throw new StorageError(`${ref.repo}@${ref.revision}: ${ref.quant} matches several GGUFs (${whole.join(', ')}): name one as ${ref.repo}/FILE.gguf`);
}

/**
 * What to download for a reference, given the repository's files: the GGUF alone, or the checkpoint's small
 * files and model.safetensors or its index (whose shards the caller reads from the index once it has it).
 */
export function filesToFetch(ref: HubRef, files: readonly string[]): string[] {
  if (ref.file !== undefined || ref.quant !== undefined) return [pickGguf(ref, files)];
  const weights = files.includes('model.safetensors') ? 'model.safetensors' : files.includes(SAFETENSORS_INDEX) ? SAFETENSORS_INDEX : undefined;
  if (weights === undefined) {
    const ggufs = files.filter((f) => /\.gguf$/i.test(f));
    const hint = ggufs.length > 0 ? `; it has GGUFs (${ggufs.join(', ')}): name one as ${ref.repo}:QUANT` : '';
    throw new StorageError(`${ref.repo}@${ref.revision} has no model.safetensors or ${SAFETENSORS_INDEX}${hint}`);
  }
  return [...CHECKPOINT_FILES.filter((f) => files.includes(f)), weights];
}

/** The shard files a model.safetensors.index.json names (its weight_map's values), each once. */
export function shardsOfIndex(indexText: string): string[] {
  let index: { weight_map?: unknown };
  try {
    index = JSON.parse(indexText);
  } catch (error) {
    throw new ModelFormatError(`not valid JSON (${(error as Error).message})`, SAFETENSORS_INDEX, undefined, { cause: error });
  }
  const map = index.weight_map;
  if (typeof map !== 'object' || map === null) throw new ModelFormatError('has no weight_map object', SAFETENSORS_INDEX);
  const shards = [...new Set(Object.values(map))];
  for (const s of shards) {
    if (typeof s !== 'string' || s.split('/').some((p) => p === '..' || p === ''))
      throw new ModelFormatError(`weight_map names ${JSON.stringify(s)}, not a file of the repository`, SAFETENSORS_INDEX);
  }
  return shards as string[];
}

/**
 * The hub's answer about one file (a HEAD of its resolve URL, redirects not followed): the blob's hash
 * (X-Linked-Etag, the sha256 of an LFS file; else the ETag), the commit (X-Repo-Commit), its size and where
 * its bytes are (the redirect's Location, for LFS files).
 */
export interface FileHead {
  etag: string;
  commit: string | undefined;
  size: number | undefined;
  location: string;
}

export function readFileHead(res: Response, url: string): FileHead {
  const raw = res.headers.get('x-linked-etag') ?? res.headers.get('etag') ?? '';
  const etag = raw.replace(/^W\//, '').replace(/"/g, '');
  const size = Number(res.headers.get('x-linked-size') ?? res.headers.get('content-length') ?? Number.NaN);
  const location = res.headers.get('location');
  return {
    etag,
    commit: res.headers.get('x-repo-commit') ?? undefined,
    size: Number.isFinite(size) ? size : undefined,
    location: location ? new URL(location, url).href : url,
  };
}

/** An LFS file's hub ETag is the sha256 of its bytes: 64 hex digits. */
export const isSha256 = (etag: string): boolean => /^[0-9a-f]{64}$/.test(etag);
