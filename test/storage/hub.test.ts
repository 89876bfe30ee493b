import { cpSync, lstatSync, mkdtempSync, readFileSync, readdirSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { StorageError } from '../../src/errors.ts';
import { hubCacheDir, listCache, removeFromCache, repoFolderName } from '../../src/storage/hf_cache.ts';
import { type HubOptions, cacheModel } from '../../src/storage/hf_model.ts';
import { filesToFetch, formatModelRef, hubEndpoint, parseModelRef, pickGguf, resolveUrl, shardsOfIndex } from '../../src/storage/hub.ts';
import { openModel } from '../../src/storage/locate.ts';
import { fixtureDir } from '../helpers/fixtures.ts';
import { type HubServer, filesOf, serveHub, sha256 } from '../helpers/hub_server.ts';

const ref = (text: string) => parseModelRef(text)!;

describe('model references', () => {
  it('parses ORG/NAME, @REVISION, :QUANT and /FILE.gguf', () => {
    expect(parseModelRef('Qwen/Qwen3.5-0.8B')).toEqual({ repo: 'Qwen/Qwen3.5-0.8B', revision: 'main' });
    expect(parseModelRef('Qwen/Qwen3.5-0.8B@v1.0')).toEqual({ repo: 'Qwen/Qwen3.5-0.8B', revision: 'v1.0' });
    expect(parseModelRef('unsloth/Qwen3.5-9B-GGUF:q4_k_m')).toEqual({ repo: 'unsloth/Qwen3.5-9B-GGUF', revision: 'main', quant: 'q4_k_m' });
    expect(parseModelRef('unsloth/X-GGUF@abc:Q8_0')).toEqual({ repo: 'unsloth/X-GGUF', revision: 'abc', quant: 'Q8_0' });
    expect(parseModelRef('unsloth/X-GGUF/sub/X-Q4_0.gguf@v2')).toEqual({ repo: 'unsloth/X-GGUF', revision: 'v2', file: 'sub/X-Q4_0.gguf' });
    expect(formatModelRef(ref('unsloth/X-GGUF@abc:Q8_0'))).toBe('unsloth/X-GGUF@abc:Q8_0');
  });

  it('leaves URLs, paths and single names alone', () => {
    for (const text of ['https://huggingface.co/Qwen/X', './models/x', '/abs/path', 'model', 'models/x.gguf', '../a/b', 'a/b/c', 'a/../b']) {
      expect(parseModelRef(text), text).toBeUndefined();
    }
  });

  it('builds hub URLs from HF_ENDPOINT', () => {
    expect(hubEndpoint(() => undefined)).toBe('https://huggingface.co');
    const endpoint = hubEndpoint((n) => (n === 'HF_ENDPOINT' ? 'http://127.0.0.1:9/' : undefined));
    expect(resolveUrl(endpoint, 'a/b', 'refs/pr/1', 'sub dir/x.gguf')).toBe('http://127.0.0.1:9/a/b/resolve/refs%2Fpr%2F1/sub%20dir/x.gguf');
  });

  it('picks a GGUF by quant as llama.cpp does: one match, a split file by its first part, else the candidates', () => {
    const files = ['README.md', 'X-Q4_K_M.gguf', 'X-Q8_0.gguf', 'X-Q4_0.gguf', 'big/X-Q6_K-00001-of-00002.gguf', 'big/X-Q6_K-00002-of-00002.gguf'];
    expect(pickGguf(ref('a/b:q8_0'), files)).toBe('X-Q8_0.gguf');
    expect(pickGguf(ref('a/b:Q6_K'), files)).toBe('big/X-Q6_K-00001-of-00002.gguf');
    expect(() => pickGguf(ref('a/b:Q4'), files)).toThrow(/Q4 matches several GGUFs \(X-Q4_K_M.gguf, X-Q4_0.gguf\)/);
    expect(() => pickGguf(ref('a/b:IQ2'), files)).toThrow(/no GGUF whose name holds IQ2 \(its GGUFs: X-Q4_K_M.gguf/);
    expect(pickGguf(ref('a/b/X-Q4_0.gguf'), files)).toBe('X-Q4_0.gguf');
  });

  it('fetches only what the engine reads of a safetensors repo', () => {
    const files = [
      'README.md',
      'config.json',
      'tokenizer.json',
      'tokenizer_config.json',
      'chat_template.jinja',
      'model.safetensors',
      'onnx/model.onnx',
      'x.png',
    ];
    expect(filesToFetch(ref('a/b'), files)).toEqual(['config.json', 'tokenizer.json', 'tokenizer_config.json', 'chat_template.jinja', 'model.safetensors']);
    expect(filesToFetch(ref('a/b'), ['config.json', 'model.safetensors.index.json', 'model-1.safetensors'])).toEqual([
      'config.json',
      'model.safetensors.index.json',
    ]);
    expect(() => filesToFetch(ref('a/b'), ['X-Q4_0.gguf'])).toThrow(/no model.safetensors .* it has GGUFs \(X-Q4_0.gguf\): name one as a\/b:QUANT/);
    expect(shardsOfIndex('{"weight_map": {"a": "m-1.safetensors", "b": "m-2.safetensors", "c": "m-1.safetensors"}}')).toEqual([
      'm-1.safetensors',
      'm-2.safetensors',
    ]);
    expect(() => shardsOfIndex('{"weight_map": {"a": "../etc/passwd"}}')).toThrow(/not a file of the repository/);
  });

  it('finds the cache where huggingface_hub does', () => {
    const env = (vars: Record<string, string>) => (n: string) => vars[n];
    expect(hubCacheDir(env({ HF_HUB_CACHE: '/c', HF_HOME: '/h' }))).toBe('/c');
    expect(hubCacheDir(env({ HF_HOME: '/h' }))).toBe('/h/hub');
    expect(hubCacheDir(env({ HOME: '/home/u' }))).toBe('/home/u/.cache/huggingface/hub');
  });
});

describe('the disk cache against a local hub', () => {
  const fixture = filesOf(fixtureDir('tiny-qwen35'), (n) => n.startsWith('golden'));
  const { 'generation_config.json': _, ...older } = fixture;
  const weights = fixture['model.safetensors'];
  // A sharded copy: the index points every tensor at one shard.
  const header = JSON.parse(new TextDecoder().decode(weights.subarray(8, 8 + Number(new DataView(weights.buffer, weights.byteOffset).getBigUint64(0, true)))));
  const weightMap = Object.fromEntries(
    Object.keys(header)
      .filter((k) => k !== '__metadata__')
      .map((k) => [k, 'model-00001-of-00001.safetensors']),
  );
  const { 'model.safetensors': __, ...small } = fixture;
  const main = 'a'.repeat(40);
  const v1 = 'b'.repeat(40);
  let server: HubServer;
  let home: string;
  const options = (vars: Record<string, string> = {}): HubOptions => ({ env: (n) => ({ HF_HOME: home, HF_ENDPOINT: server.url, ...vars })[n] });

  beforeAll(async () => {
    server = await serveHub({
      'tiny/qwen35': {
        commits: { [main]: { ...fixture, 'README.md': new TextEncoder().encode('# tiny'), 'onnx/model.onnx': new Uint8Array(10) }, [v1]: older },
        refs: { main, v1 },
      },
      'tiny/sharded': {
        commits: {
          [main]: {
            ...small,
            'model.safetensors.index.json': new TextEncoder().encode(JSON.stringify({ weight_map: weightMap })),
            'model-00001-of-00001.safetensors': weights,
          },
        },
        refs: { main },
      },
      'tiny/gated': { commits: { [main]: fixture }, refs: { main }, gatedToken: 'secret' },
    });
  });
  const homes: string[] = [];
  const freshHome = () => homes.push((home = mkdtempSync(join(tmpdir(), 'qwen-hub-'))));
  afterAll(async () => {
    await server.close();
    for (const dir of homes) rmSync(dir, { recursive: true, force: true });
  });

  it('downloads the checkpoint files into blobs/, links them from snapshots/<commit>/ and records refs/main', async () => {
    freshHome();
    const cached = await cacheModel(ref('tiny/qwen35'), options());
    const repoDir = join(home, 'hub', repoFolderName('tiny/qwen35'));
    expect(cached).toEqual({ dir: join(repoDir, 'snapshots', main), commit: main, offline: false });
    expect(readdirSync(cached.dir).sort()).toEqual(['config.json', 'generation_config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json']);
    expect(readlinkSync(join(cached.dir, 'model.safetensors'))).toBe(`../../blobs/${sha256(weights)}`);
    expect(lstatSync(join(cached.dir, 'config.json')).isSymbolicLink()).toBe(true);
    expect(readFileSync(join(repoDir, 'refs', 'main'), 'utf8')).toBe(main);
    expect(readdirSync(join(repoDir, 'blobs'))).toHaveLength(5);
    expect(server.log.filter((l) => l.includes('README') || l.includes('onnx'))).toEqual([]);

    // A second call asks the hub for the listing only.
    const before = server.log.length;
    expect((await cacheModel(ref('tiny/qwen35'), options())).dir).toBe(cached.dir);
    expect(server.log.slice(before)).toEqual([`GET /api/models/tiny/qwen35/revision/main`]);
  });

  it('resolves @REVISION to its own snapshot and ref', async () => {
    const cached = await cacheModel(ref('tiny/qwen35@v1'), options());
    expect(cached.commit).toBe(v1);
    expect(readdirSync(cached.dir)).not.toContain('generation_config.json');
    expect(readFileSync(join(home, 'hub', repoFolderName('tiny/qwen35'), 'refs', 'v1'), 'utf8')).toBe(v1);
    // The weights are the same blob: stored once.
    expect(readdirSync(join(home, 'hub', repoFolderName('tiny/qwen35'), 'blobs'))).toHaveLength(5);
  });

  it('works from refs/ when offline or when the hub is unreachable; a cold cache fails naming the model', async () => {
    const offline = await cacheModel(ref('tiny/qwen35'), options({ HF_HUB_OFFLINE: '1' }));
    expect(offline).toMatchObject({ commit: main, offline: true });
    const unreachable = await cacheModel(ref('tiny/qwen35@v1'), options({ HF_ENDPOINT: 'http://127.0.0.1:9' }));
    expect(unreachable).toMatchObject({ commit: v1, offline: true });
    await expect(cacheModel(ref('tiny/other@dev'), options({ HF_HUB_OFFLINE: '1' }))).rejects.toThrow(
      /tiny\/other@dev \(revision dev\) is not in the cache .* and HF_HUB_OFFLINE is set/,
    );
    await expect(cacheModel(ref('tiny/other'), options({ HF_ENDPOINT: 'http://127.0.0.1:9' }))).rejects.toThrow(
      /tiny\/other \(revision main\) is not in the cache .* the hub cannot be reached/,
    );
  });

  it('reads a sharded checkpoint through its index', async () => {
    const checkpoint = await openModel('tiny/sharded', { hub: options() });
    expect(checkpoint.tensors.size).toBe(Object.keys(weightMap).length);
    expect(readdirSync(join(home, 'hub', repoFolderName('tiny/sharded'), 'snapshots', main))).toContain('model-00001-of-00001.safetensors');
  });

  it('a local folder spelt like a hub id wins', async () => {
    const cwd = process.cwd();
    freshHome();
    cpSync(fixtureDir('tiny-qwen35'), join(home, 'tiny', 'local'), { recursive: true });
    process.chdir(home);
    try {
      const checkpoint = await openModel('tiny/local', { hub: options({ HF_HUB_OFFLINE: '1' }) });
      expect(checkpoint.location).toBe('tiny/local');
    } finally {
      process.chdir(cwd);
    }
  });

  it('needs HF_TOKEN for a gated repo and says so', async () => {
    await expect(cacheModel(ref('tiny/gated'), options())).rejects.toThrow(/tiny\/gated: .*HTTP 401.*gated or private; set HF_TOKEN/);
    await expect(cacheModel(ref('tiny/gated'), options({ HF_TOKEN: 'wrong' }))).rejects.toThrow(/HF_TOKEN does not grant access/);
    expect((await cacheModel(ref('tiny/gated'), options({ HF_TOKEN: 'secret' }))).offline).toBe(false);
    await expect(cacheModel(ref('tiny/none'), options())).rejects.toThrow(StorageError);
  });

  it('two downloads of one model at once share each blob', async () => {
    freshHome();
    server.throttle.bytesPerSecond = 20e6;
    try {
      const [a, b] = await Promise.all([cacheModel(ref('tiny/qwen35'), options()), cacheModel(ref('tiny/qwen35'), options())]);
      expect(a.dir).toBe(b.dir);
    } finally {
      server.throttle.bytesPerSecond = undefined;
    }
    const blobs = readdirSync(join(home, 'hub', repoFolderName('tiny/qwen35'), 'blobs'));
    expect(blobs.sort()).toEqual(
      readdirSync(join(home, 'hub', repoFolderName('tiny/qwen35'), 'blobs'))
        .filter((f) => !f.includes('.'))
        .sort(),
    );
    expect(blobs).toHaveLength(5);
    expect(sha256(readFileSync(join(home, 'hub', repoFolderName('tiny/qwen35'), 'snapshots', main, 'model.safetensors')))).toBe(sha256(weights));
  });

  it('resumes a partial download and drops one whose sha256 is wrong', async () => {
    freshHome();
    const blobs = join(home, 'hub', repoFolderName('tiny/qwen35'), 'blobs');
    await cacheModel(ref('tiny/qwen35@v1'), options());
    const blob = join(blobs, sha256(weights));
    rmSync(blob);
    writeFileSync(`${blob}.incomplete`, weights.subarray(0, 1000));
    server.log.length = 0;
    await cacheModel(ref('tiny/qwen35@v1'), options());
    expect(server.log).toContain(`GET /blobs/${sha256(weights)} bytes=1000-`);
    expect(sha256(readFileSync(blob))).toBe(sha256(weights));

    rmSync(blob);
    writeFileSync(`${blob}.incomplete`, new Uint8Array(1000).fill(7));
    await expect(cacheModel(ref('tiny/qwen35@v1'), options())).rejects.toThrow(/model.safetensors: its sha256 is [0-9a-f]{64}, the hub announced/);
    expect(readdirSync(blobs).filter((f) => f.startsWith(sha256(weights)))).toEqual([]);
  });

  it('lists and removes cached repos by their exact id', async () => {
    freshHome();
    await cacheModel(ref('tiny/qwen35'), options());
    await cacheModel(ref('tiny/qwen35@v1'), options());
    const cacheDir = join(home, 'hub');
    const [listed] = await listCache(cacheDir);
    expect(listed).toMatchObject({
      repo: 'tiny/qwen35',
      revisions: [
        { commit: main, refs: ['main'] },
        { commit: v1, refs: ['v1'] },
      ],
    });
    expect(listed.bytes).toBe(Object.values(fixture).reduce((s, f) => s + f.length, 0));
    await expect(removeFromCache(cacheDir, 'tiny/qwen')).rejects.toThrow(/tiny\/qwen is not in the cache .* \(did you mean tiny\/qwen35\?\)/);
    await removeFromCache(cacheDir, 'tiny/qwen35');
    expect(await listCache(cacheDir)).toEqual([]);
  });
});
