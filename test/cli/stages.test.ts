import { type ChildProcess, spawn } from 'node:child_process';
import { rmSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Engine } from '../../src/api/engine.ts';
import type { GpuContext } from '../../src/gpu/context.ts';
import { createNodeContext } from '../../src/hosts/node/gpu.ts';
import { openModel } from '../../src/storage/locate.ts';
import { writeCheckpoint } from '../helpers/checkpoint.ts';
import { fixtureDir } from '../helpers/fixtures.ts';

// Pipeline stages as operators run them: `serve --stages N` starting N−1 `stage` processes on this machine (each its
// own Dawn device on lavapipe), or `serve --stage-listen` with stages started by hand (`stage --peer`).
const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const TEST_TIMEOUT_MS = 180_000;

interface Server {
  proc: ChildProcess;
  url: string;
  stderr: () => string;
  exited: Promise<number | null>;
}

/** A CLI command as its own process group; resolves once `ready` matches its stdout (rejects if it exits first). */
function start(args: string[], ready = /listening on (http:\/\/\S+)/, started?: (proc: ChildProcess) => void): Promise<Server> {
  const proc = spawn(process.execPath, ['bin/qwen-webgpu.js', ...args], { cwd: ROOT, detached: true });
  let stdout = '';
  let stderr = '';
  proc.stderr?.on('data', (d) => {
    stderr += d;
  });
  started?.(proc);
  const exited = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve(code)));
  return new Promise((resolve, reject) => {
    proc.stdout?.on('data', (d) => {
      stdout += d;
      const match = ready.exec(stdout);
      if (match) resolve({ proc, url: match[1], stderr: () => stderr, exited });
    });
    exited.then((code) => reject(new Error(`${args[0]} exited ${code} before it was ready:\n${stderr}`)));
  });
}

function kill(server: Server | undefined): void {
  if (server?.proc.exitCode === null && server.proc.pid) process.kill(-server.proc.pid, 'SIGKILL');
}

const serve = (model: string, extra: string[]) => start(['serve', '--model', model, '--adapter', 'llvmpipe', '--port', '0', ...extra]);

const PROMPTS = [
  { prompt: 'The pipeline', temperature: 0, max_tokens: 24 },
  { prompt: 'hi there', temperature: 0.8, top_p: 0.9, seed: 11, max_tokens: 24 },
];

type Choice = { text: string; finish_reason: string; logprobs: { content: { bytes: number[]; logprob: number }[] } | null };
/** What must match exactly: the text, each token (its bytes) with its logprob, and why it ended. */
const outcome = (c: Choice) => ({ text: c.text, tokens: c.logprobs?.content.map((t) => [t.bytes, t.logprob]), finish: c.finish_reason });

async function complete(url: string, body: object): Promise<ReturnType<typeof outcome>> {
  const response = await fetch(`${url}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ ...body, logprobs: true }),
  });
  const json = (await response.json()) as { choices: Choice[] };
  if (!response.ok) throw new Error(`${response.status}: ${JSON.stringify(json)}`);
  return outcome(json.choices[0]);
}

describe('pipeline stages give the ids of one process', { timeout: TEST_TIMEOUT_MS }, () => {
  let ctx: GpuContext;
  const dirs: string[] = [];
  const generated = () =>
    writeCheckpoint({
      seed: 23,
      hidden: 64,
      layers: 8,
      heads: [2, 1],
      linearHeads: [2, 4],
      experts: { count: 8, topk: 2, intermediate: 32, shared: 48 },
      tied: false,
      dtype: 'BF16',
    });
  const models: Record<string, () => string> = {
    dense: () => fixtureDir('tiny-qwen35'),
    moe: () => fixtureDir('tiny-qwen35-moe'),
    'generated 8-layer MoE': () => {
      const dir = generated();
      dirs.push(dir);
      return dir;
    },
  };
  beforeAll(async () => {
    ctx = await createNodeContext({ adapter: 'llvmpipe' });
  });
  afterAll(() => {
    ctx?.destroy();
    for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
  });

  for (const [name, dirOf] of Object.entries(models)) {
    it(`${name}: 2, 3 and 4 stages, a greedy and a seeded request in flight together`, async () => {
      const dir = dirOf();
      const engine = await Engine.load(ctx, await openModel(dir), {});
      const expected = await Promise.all(
        PROMPTS.map(async (p) => {
          const r = await engine.completions.create({ ...p, logprobs: true, stream: false });
          return outcome(r.choices[0] as Choice);
        }),
      );
      engine.destroy();
      for (const stages of [2, 3, 4]) {
        const server = await serve(dir, ['--stages', String(stages), '--max-batch', '2']);
        try {
          expect(server.stderr()).toMatch(new RegExp(`pipeline of ${stages} stages`));
          const got = await Promise.all(PROMPTS.map((p) => complete(server.url, p)));
          expect(got, `${stages} stages`).toEqual(expected);
        } finally {
          kill(server);
        }
      }
    });
  }
});

describe('pipeline stages speculating', { timeout: TEST_TIMEOUT_MS }, () => {
  it('serve --stages 2 --draft-tokens 2 --draft-vocab 200: the last stage drafts, every stage verifies; the text of one process', async () => {
    const dir = fixtureDir('tiny-qwen35');
    const text = async (url: string, body: object) => {
      const response = await fetch(`${url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
      const json = (await response.json()) as { choices: Choice[] };
      if (!response.ok) throw new Error(`${response.status}: ${JSON.stringify(json)}`);
      return [json.choices[0].text, json.choices[0].finish_reason];
    };
    const ctx = await createNodeContext({ adapter: 'llvmpipe' });
    const engine = await Engine.load(ctx, await openModel(dir), { mtp: false });
    const expected = await Promise.all(PROMPTS.map(async (p) => [(await engine.completions.create({ ...p, stream: false })).choices[0].text, 'length']));
    engine.destroy();
    ctx.destroy();
    const server = await serve(dir, ['--stages', '2', '--max-batch', '2', '--draft-tokens', '2', '--draft-vocab', '200']);
    try {
      expect(server.stderr()).toMatch(/MTP drafter \(2 drafts per pass from ids below 200\)/);
      expect(await Promise.all(PROMPTS.map((p) => text(server.url, p)))).toEqual(expected);
      const metrics = await (await fetch(`${server.url}/metrics`)).text();
      expect(Number(/vllm:spec_decode_num_drafts_total\{[^}]*\} (\d+)/.exec(metrics)?.[1])).toBeGreaterThan(10);
    } finally {
      kill(server);
    }
  });
});

describe('pipeline stage failures', { timeout: TEST_TIMEOUT_MS }, () => {
  const MODEL = fixtureDir('tiny-qwen35');
  /** A greedy completion of this prompt runs to max_tokens on the fixture (no eos): a request that lasts. */
  const LONG = { prompt: 'hi', temperature: 0, max_tokens: 1500, stream: true };

  it('a stage killed mid-request fails it naming the stage, then 503 until the stage is back', async () => {
    const server = await serve(MODEL, ['--stages', '2', '--max-batch', '2']);
    try {
      const before = await complete(server.url, { prompt: 'hi', temperature: 0, max_tokens: 16 });
      const pid = Number(/started stage 1 \(pid (\d+)\)/.exec(server.stderr())?.[1]);
      expect(pid).toBeGreaterThan(0);
      const response = await fetch(`${server.url}/v1/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify(LONG),
      });
      const reader = response.body!.getReader();
      await reader.read();
      const killedAt = performance.now();
      process.kill(pid, 'SIGKILL');
      let rest = '';
      for (let chunk = await reader.read(); !chunk.done; chunk = await reader.read()) rest += new TextDecoder().decode(chunk.value);
      expect(performance.now() - killedAt).toBeLessThan(5000);
      expect(rest).toMatch(/"code":"stage_unavailable"/);
      expect(rest).toMatch(/stage 1/);
      expect(rest).not.toMatch(/"finish_reason":"length"/);

      const health = await fetch(`${server.url}/health`);
      expect(health.status).toBe(503);
      expect(await health.text()).toMatch(/stage 1/);
      const refused = await fetch(`${server.url}/v1/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ prompt: 'hi', max_tokens: 4 }),
      });
      expect(refused.status).toBe(503);

      // serve starts the stage again; once it is back the group serves as before.
      let status = 503;
      for (let i = 0; i < 120 && status !== 200; i++) {
        await new Promise((r) => setTimeout(r, 500));
        status = (await fetch(`${server.url}/health`)).status;
      }
      expect(status).toBe(200);
      expect(server.stderr()).toMatch(/stage 1 is back/);
      expect(await complete(server.url, { prompt: 'hi', temperature: 0, max_tokens: 16 })).toEqual(before);
    } finally {
      kill(server);
    }
  });

  it('a stage that hangs (stopped) fails the request within --stage-timeout-s, naming the stage, then 503', async () => {
    const server = await serve(MODEL, ['--stages', '2', '--stage-timeout-s', '2']);
    const pid = Number(/started stage 1 \(pid (\d+)\)/.exec(server.stderr())?.[1]);
    try {
      process.kill(pid, 'SIGSTOP');
      const t0 = performance.now();
      const response = await fetch(`${server.url}/v1/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ prompt: 'hi', max_tokens: 4 }),
      });
      expect(response.status).toBe(503);
      expect(await response.text()).toMatch(/stage 1 \(.*\): did not answer a step within 2 s/);
      expect(performance.now() - t0).toBeLessThan(6000);
      expect((await fetch(`${server.url}/health`)).status).toBe(503);
    } finally {
      process.kill(pid, 'SIGCONT');
      kill(server);
    }
  });

  it('refuses a stage started with another model or layer range; a right one then completes the group', async () => {
    const port = 19400 + Math.floor(Math.random() * 500);
    let leader: ChildProcess | undefined;
    const server = start(
      ['serve', '--model', MODEL, '--adapter', 'llvmpipe', '--port', '0', '--stages', '2', '--stage-listen', `127.0.0.1:${port}`],
      undefined,
      (p) => {
        leader = p;
      },
    );
    server.catch(() => {});
    const stage = (model: string, extra: string[] = []) =>
      new Promise<{ code: number | null; stderr: string }>((resolve) => {
        const proc = spawn(
          process.execPath,
          ['bin/qwen-webgpu.js', 'stage', '--model', model, '--adapter', 'llvmpipe', '--stage', '1', '--stages', '2', '--peer', `127.0.0.1:${port}`, ...extra],
          { cwd: ROOT },
        );
        let stderr = '';
        proc.stderr.on('data', (d) => {
          stderr += d;
        });
        proc.once('exit', (code) => resolve({ code, stderr }));
      });
    let running: Server | undefined;
    try {
      const wrongModel = await stage(fixtureDir('tiny-qwen35-moe'));
      expect(wrongModel.code).toBe(1);
      expect(wrongModel.stderr).toMatch(
        /error: stage 1: stage 0 refused: runs model tiny-qwen35-moe \(revision \w+\), stage 0 runs tiny-qwen35 \(revision \w+\)/,
      );
      const wrongLayers = await stage(MODEL, ['--layers', '0:1']);
      expect(wrongLayers.code).toBe(1);
      expect(wrongLayers.stderr).toMatch(/error: stage 1: stage 0 refused: was started for layers 0:1, stage 0 assigns it \d+:4/);
      const right = stage(MODEL);
      running = await server;
      const got = await complete(running.url, { prompt: 'hi', temperature: 0, max_tokens: 8 });
      expect(got.tokens).toHaveLength(8);
      // Stage 0 gone, the stage ends too.
      kill(running);
      expect(await right).toMatchObject({ code: 0 });
    } finally {
      try {
        if (leader?.pid) process.kill(-leader.pid, 'SIGKILL');
      } catch {
        // Gone already.
      }
    }
  });
});
