import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { repoFolderName } from '../../src/storage/hf_cache.ts';
import { errorLine, jsonLine, runCli } from '../helpers/cli.ts';
import { fixtureDir, golden } from '../helpers/fixtures.ts';
import { removeWrittenGgufs, writeFixtureGguf } from '../helpers/gguf_writer.ts';
import { type HubRepo, type HubServer, filesOf, serveHub, sha256 } from '../helpers/hub_server.ts';

// Issue 12 (Node): --model ORG/NAME through the Hugging Face cache, against a local hub on 127.0.0.1.
const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const COMMIT = 'c'.repeat(40);
const fixture = filesOf(fixtureDir('tiny-qwen35'), (n) => n.startsWith('golden'));
const weightsSha = sha256(fixture['model.safetensors']);
const prompt = golden('tiny-qwen35').prompt_ids.slice(0, 6).join(',');
const GENERATE = ['generate', '--prompt-ids', prompt, '--max-tokens', '6', '--greedy', '--dtype', 'f32', '--json', '--adapter', 'llvmpipe'];

const homes: string[] = [];
let ggufPath: string;
let repos: Record<string, HubRepo>;
let server: HubServer;

/** A fresh HF_HOME and the environment that points the CLI at it and at `hub` (no token, online). */
function environment(hub: HubServer, vars: Record<string, string> = {}) {
  const home = mkdtempSync(join(tmpdir(), 'qwen-hub-cli-'));
  homes.push(home);
  const env = { HF_HOME: home, HF_ENDPOINT: hub.url, HF_HUB_CACHE: '', HF_TOKEN: '', HF_HUB_OFFLINE: '', ...vars };
  return { home, env, repoDir: (repo: string) => join(home, 'hub', repoFolderName(repo)) };
}

const idsOf = async (model: string, env: Record<string, string>) => jsonLine(await runCli('node', [...GENERATE, '--model', model], env)).ids;

beforeAll(async () => {
  const gguf = await writeFixtureGguf('tiny-qwen35', { types: (_n, dims) => (dims.length === 1 || dims[1] === 1 ? 'F32' : 'Q4_0') });
  ggufPath = join(gguf.dir, gguf.file);
  const ggufBytes = readFileSync(ggufPath);
  repos = {
    'tiny/qwen35': { commits: { [COMMIT]: { ...fixture, 'README.md': new TextEncoder().encode('# tiny') } }, refs: { main: COMMIT } },
    'tiny/qwen35-GGUF': { commits: { [COMMIT]: { 'tiny-qwen35-Q4_0.gguf': ggufBytes, 'tiny-qwen35-Q8_0.gguf': new Uint8Array(64) } }, refs: { main: COMMIT } },
    'tiny/gated': { commits: { [COMMIT]: fixture }, refs: { main: COMMIT }, gatedToken: 'secret' },
  };
  server = await serveHub(repos);
});
afterAll(async () => {
  await server.close();
  removeWrittenGgufs();
  for (const dir of homes) rmSync(dir, { recursive: true, force: true });
});

describe('--model ORG/NAME', () => {
  it('generates the local folder ids, then again from the cache with the hub gone', async () => {
    const hub = await serveHub(repos);
    const { env } = environment(hub);
    const local = await idsOf(fixtureDir('tiny-qwen35'), env);
    expect(await idsOf('tiny/qwen35', env)).toEqual(local);
    await hub.close();
    const before = hub.log.length;
    expect(await idsOf('tiny/qwen35', env)).toEqual(local);
    expect(hub.log.length).toBe(before);
  });

  it('--dtype int4 on a hub model converts once into the packed cache; later runs load that copy', async () => {
    const { env, home } = environment(server);
    const generateInt4 = GENERATE.map((a) => (a === 'f32' ? 'int4' : a));
    const int4 = (model: string) => runCli('node', [...generateInt4, '--model', model], env);
    const local = jsonLine(await int4(fixtureDir('tiny-qwen35'))).ids;
    const first = await int4('tiny/qwen35');
    expect(jsonLine(first).ids).toEqual(local);
    const packed = join(home, 'qwen-webgpu', 'packed', repoFolderName('tiny/qwen35'), `${COMMIT}-q4`);
    expect(first.stderr).toContain(`converting to int4 once, into ${packed}`);
    expect(readdirSync(packed)).toContain('qwen-webgpu.json');
    expect(readdirSync(dirname(packed))).toEqual([`${COMMIT}-q4`]);
    const again = await int4('tiny/qwen35');
    expect(jsonLine(again).ids).toEqual(local);
    expect(again.stderr).not.toContain('converting');
  });

  it('fails with HF_HUB_OFFLINE=1 and a cold cache, naming the model and revision', async () => {
    const { env } = environment(server, { HF_HUB_OFFLINE: '1' });
    const r = await runCli('node', [...GENERATE, '--model', 'tiny/qwen35@v2'], env);
    expect(errorLine(r)).toMatch(/tiny\/qwen35@v2 \(revision v2\) is not in the cache .* HF_HUB_OFFLINE is set/);
  });

  it('reads a GGUF by ORG/NAME:Q4_0 with the ids of the local file', async () => {
    const { env, repoDir } = environment(server);
    expect(await idsOf('tiny/qwen35-GGUF:q4_0', env)).toEqual(await idsOf(ggufPath, env));
    expect(readdirSync(join(repoDir('tiny/qwen35-GGUF'), 'snapshots', COMMIT))).toEqual(['tiny-qwen35-Q4_0.gguf']);
  });
});

describe('pull, models, rm', () => {
  it('resumes a download killed mid-file (Range) and finishes it', async () => {
    const { env, repoDir } = environment(server);
    const blob = join(repoDir('tiny/qwen35'), 'blobs', weightsSha);
    server.throttle.bytesPerSecond = 400e3;
    const child = spawn(process.execPath, ['bin/qwen-webgpu.js', 'pull', 'tiny/qwen35'], { cwd: ROOT, env: { ...process.env, ...env }, stdio: 'ignore' });
    try {
      for (let waited = 0; (statSync(`${blob}.incomplete`, { throwIfNoEntry: false })?.size ?? 0) < 200e3; waited += 50) {
        if (waited > 60_000) throw new Error('the download never started');
        await new Promise((done) => setTimeout(done, 50));
      }
      child.kill('SIGKILL');
      await new Promise((done) => child.once('exit', done));
    } finally {
      server.throttle.bytesPerSecond = undefined;
    }
    const kept = statSync(`${blob}.incomplete`).size;
    expect(kept).toBeLessThan(fixture['model.safetensors'].length);
    server.log.length = 0;
    const r = await runCli('node', ['pull', 'tiny/qwen35'], env);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout.trim()).toBe(join(repoDir('tiny/qwen35'), 'snapshots', COMMIT));
    const resumedAt = server.log.map((l) => /^GET \/blobs\/\w+ bytes=(\d+)-$/.exec(l)?.[1]).find(Boolean);
    expect(Number(resumedAt)).toBeGreaterThanOrEqual(kept);
    expect(sha256(readFileSync(blob))).toBe(weightsSha);
  }, 120_000);

  it('two processes pulling one model at once both succeed and store each blob once', async () => {
    const { env, repoDir } = environment(server);
    server.throttle.bytesPerSecond = 5e6;
    server.log.length = 0;
    try {
      const [a, b] = await Promise.all([runCli('node', ['pull', 'tiny/qwen35'], env), runCli('node', ['pull', 'tiny/qwen35'], env)]);
      expect([a.code, b.code], a.stderr + b.stderr).toEqual([0, 0]);
      expect(a.stdout).toBe(b.stdout);
    } finally {
      server.throttle.bytesPerSecond = undefined;
    }
    expect(readdirSync(join(repoDir('tiny/qwen35'), 'blobs'))).toHaveLength(5);
    expect(server.log.filter((l) => l.startsWith(`GET /blobs/${weightsSha}`))).toHaveLength(1);
  });

  it('a gated repo needs HF_TOKEN', async () => {
    const { env } = environment(server);
    expect(errorLine(await runCli('node', ['pull', 'tiny/gated'], env))).toMatch(/tiny\/gated: the hub refused access \(HTTP 401\).*set HF_TOKEN/);
    expect((await runCli('node', ['pull', 'tiny/gated'], { ...env, HF_TOKEN: 'secret' })).code).toBe(0);
  });

  it('models lists the cache; rm removes a repo only by its exact id', async () => {
    const { env } = environment(server);
    expect((await runCli('node', ['pull', 'tiny/qwen35-GGUF:Q4_0', '--json'], env)).code).toBe(0);
    const listed = jsonLine(await runCli('node', ['models', '--json'], env)).models as { id: string; revisions: unknown[]; bytes: number }[];
    expect(listed).toEqual([{ id: 'tiny/qwen35-GGUF', revisions: [{ commit: COMMIT, refs: ['main'] }], bytes: statSync(ggufPath).size }]);
    expect((await runCli('node', ['models'], env)).stdout).toMatch(/^ID +REVISIONS +SIZE\ntiny\/qwen35-GGUF +main \(cccccccc\) +\d+\.\d MB\n$/);
    expect(errorLine(await runCli('node', ['rm', 'tiny/qwen35'], env))).toMatch(/tiny\/qwen35 is not in the cache .*did you mean tiny\/qwen35-GGUF/);
    expect((await runCli('node', ['rm', 'tiny/qwen35-GGUF'], env)).code).toBe(0);
    expect(jsonLine(await runCli('node', ['models', '--json'], env)).models).toEqual([]);
  });
});
