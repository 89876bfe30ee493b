import { spawn } from 'node:child_process';
import { appendFileSync, existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { type CliResult, runCli } from '../helpers/cli.ts';
import { fixtureDir } from '../helpers/fixtures.ts';

// `batch` as users run it: one result line per custom_id (bad lines and failed requests included), each result the
// same as the request run alone, resumption after SIGKILL or a stop signal without a repeated or torn line, and
// Node = Deno.
const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const MODEL = fixtureDir('tiny-qwen35');
const NODE_GPU = ['--adapter', 'llvmpipe', '--dtype', 'f32'];
const dir = mkdtempSync(join(tmpdir(), 'qwen-batch-'));

interface ResultLine {
  id: string;
  custom_id: string;
  response: { status_code: number; request_id: string; body: Record<string, unknown> } | null;
  error: { code: string; message: string } | null;
}

const chat = (customId: string, content: string, extra: Record<string, unknown> = {}) => ({
  custom_id: customId,
  method: 'POST',
  url: '/v1/chat/completions',
  body: { messages: [{ role: 'user', content }], max_tokens: 6, temperature: 0, ...extra },
});
const text = (customId: string, prompt: string, extra: Record<string, unknown> = {}) => ({
  custom_id: customId,
  method: 'POST',
  url: '/v1/completions',
  body: { prompt, max_tokens: 6, temperature: 0, ...extra },
});

const REQUESTS = [
  chat('chat-1', 'Hello there'),
  chat('chat-2', 'Name three colours', { reasoning_effort: 'none' }),
  chat('chat-3', 'What is 2+2?', { max_tokens: 3 }),
  text('text-1', 'The quick brown'),
  text('text-2', 'Once upon a time', { max_tokens: 4 }),
  text('text-3', '1, 2, 3,', { max_tokens: 5 }),
];
/** Lines 7 to 10: not JSON, a field of the wrong type, a repeated custom_id, no url. */
const SMALL_INPUT = [
  ...REQUESTS.map((r) => JSON.stringify(r)),
  '{"custom_id": "torn", "body":',
  JSON.stringify(text('hot', 'x', { temperature: 'hot' })),
  JSON.stringify(chat('chat-1', 'again')),
  JSON.stringify({ custom_id: 'no-url', body: { prompt: 'x' } }),
];

function writeInput(name: string, lines: string[]): string {
  const path = join(dir, name);
  writeFileSync(path, `${lines.join('\n')}\n`);
  return path;
}

const batch = (host: 'node' | 'deno', input: string, out: string, extra: string[] = []): Promise<CliResult> =>
  runCli(host, ['batch', '--model', MODEL, '--in', input, '--out', out, ...(host === 'node' ? NODE_GPU : ['--dtype', 'f32']), ...extra]);

function readResults(path: string): ResultLine[] {
  const content = readFileSync(path, 'utf8');
  expect(content.endsWith('\n')).toBe(true);
  return content
    .slice(0, -1)
    .split('\n')
    .map((line) => JSON.parse(line));
}

const byId = (lines: ResultLine[]) => new Map(lines.map((l) => [l.custom_id, l]));
/** What a completion says, without its id and timestamp. */
const answer = (line: ResultLine | undefined) => {
  const body = line?.response?.body as { choices: unknown; usage: unknown } | undefined;
  return { status: line?.response?.status_code, choices: body?.choices, usage: body?.usage };
};

describe('batch', () => {
  const smallOut = join(dir, 'small.out.jsonl');
  const smallIn = writeInput('small.jsonl', SMALL_INPUT);

  it('writes one line per custom_id: results equal to each request run alone, and error lines', async () => {
    const r = await batch('node', smallIn, smallOut);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toContain('batch: 6 done, 4 errors, 0 skipped as already done');
    const lines = readResults(smallOut);
    expect(lines.map((l) => l.custom_id).sort()).toEqual(['chat-1', 'chat-2', 'chat-3', 'hot', 'line-7', 'line-9', 'no-url', 'text-1', 'text-2', 'text-3']);
    for (const line of lines) expect(line.id).toMatch(/^batch_req_\w+$/);
    const results = byId(lines);

    expect(results.get('line-7')).toMatchObject({ response: null, error: { code: 'invalid_request' } });
    expect(results.get('line-7')?.error?.message).toMatch(/^line 7: not JSON/);
    expect(results.get('line-9')?.error?.message).toBe('line 9: custom_id "chat-1" was already used on line 1 (custom_ids must be unique)');
    expect(results.get('no-url')?.error?.message).toMatch(/^line 10: url must be/);
    expect(results.get('hot')).toMatchObject({
      response: { status_code: 400, body: { error: { type: 'invalid_request_error', param: 'temperature' } } },
      error: null,
    });

    for (const request of REQUESTS) {
      const line = results.get(request.custom_id);
      expect(line?.error).toBeNull();
      expect(line?.response).toMatchObject({ status_code: 200, request_id: expect.any(String) });
      expect(line?.response?.body.object).toBe(request.url === '/v1/completions' ? 'text_completion' : 'chat.completion');
    }
    // Each request alone: one-line batches, and chat-1 through `generate` too.
    const alone = await Promise.all(
      REQUESTS.map(async (request) => {
        const out = join(dir, `alone-${request.custom_id}.out.jsonl`);
        const run = await batch('node', writeInput(`alone-${request.custom_id}.jsonl`, [JSON.stringify(request)]), out, ['--max-batch', '1']);
        expect(run.code, run.stderr).toBe(0);
        return readResults(out)[0];
      }),
    );
    for (const line of alone) expect(answer(results.get(line.custom_id))).toEqual(answer(line));
    const generated = await runCli('node', ['generate', '--model', MODEL, '--prompt', 'Hello there', '--greedy', '--max-tokens', '6', '--json', ...NODE_GPU]);
    const chat1 = results.get('chat-1')?.response?.body as { choices: { message: unknown }[] };
    expect(chat1.choices[0].message).toEqual((JSON.parse(generated.stdout.trim().split('\n').pop()!) as typeof chat1).choices[0].message);

    // Run again: everything is done; a last line that is not JSON is cut off.
    const before = readFileSync(smallOut, 'utf8');
    appendFileSync(smallOut, 'not json\n');
    const again = await batch('node', smallIn, smallOut);
    expect(again.code, again.stderr).toBe(0);
    expect(again.stderr).toContain('batch: 0 done, 0 errors, 10 skipped as already done');
    expect(readFileSync(smallOut, 'utf8')).toBe(before);
  });

  /** `batch` on `lines` in a child process, with its stderr so far, lines written so far, and a wait for a condition. */
  function startBatch(name: string, lines: object[]) {
    const input = writeInput(
      `${name}.jsonl`,
      lines.map((line) => JSON.stringify(line)),
    );
    const out = join(dir, `${name}.out.jsonl`);
    const child = spawn(process.execPath, ['bin/qwen-webgpu.js', 'batch', '--model', MODEL, '--in', input, '--out', out, ...NODE_GPU], {
      cwd: ROOT,
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let stderr = '';
    child.stderr.on('data', (chunk) => {
      stderr += chunk;
    });
    // 'close': the process exited and its stderr is read to the end.
    const exited = new Promise<number | null>((resolve) => child.on('close', resolve));
    return {
      input,
      out,
      child,
      exited,
      stderr: () => stderr,
      linesWritten: () => (existsSync(out) ? readFileSync(out, 'utf8').split('\n').length - 1 : 0),
      async until(done: () => boolean): Promise<void> {
        while (!done()) {
          if (child.exitCode !== null) {
            const code = await exited;
            if (done()) return;
            throw new Error(`batch exited ${code} too early:\n${stderr}`);
          }
          await new Promise((resolve) => setTimeout(resolve, 20));
        }
      },
    };
  }

  it('resumes after SIGKILL and a torn last line: every custom_id once, no line repeated', async () => {
    const ids = Array.from({ length: 30 }, (_, i) => `kill-${i}`);
    const run = startBatch(
      'kill',
      ids.map((id, i) => chat(id, `Count to ${i + 10} slowly, please.`, { max_tokens: 48 })),
    );
    const { input, out } = run;
    await run.until(() => run.linesWritten() >= 3);
    run.child.kill('SIGKILL');
    await run.exited;

    const written = readFileSync(out, 'utf8');
    const complete = written.slice(0, written.lastIndexOf('\n') + 1);
    const doneBefore = complete.split('\n').length - 1;
    expect(doneBefore).toBeGreaterThanOrEqual(3);
    expect(doneBefore).toBeLessThan(ids.length);
    // As a kill in the middle of a write would leave it: the start of a line for a request not done yet.
    writeFileSync(out, `${complete}{"id":"batch_req_torn","custom_id":"kill-29","response":{"status_code":200,"requ`);

    const r = await batch('node', input, out);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toContain(`batch: ${ids.length - doneBefore} done, 0 errors, ${doneBefore} skipped as already done`);
    const final = readFileSync(out, 'utf8');
    expect(final.startsWith(complete)).toBe(true);
    const lines = readResults(out);
    expect(lines.map((l) => l.custom_id).sort()).toEqual([...ids].sort());
    for (const line of lines) expect(line.response?.status_code).toBe(200);
  });

  it('stops on SIGINT once the requests in flight are written; a rerun does the rest', async () => {
    const ids = Array.from({ length: 12 }, (_, i) => `stop-${i}`);
    const run = startBatch(
      'stop',
      ids.map((id, i) => chat(id, `Count to ${i + 10} slowly, please.`, { max_tokens: 64 })),
    );
    await run.until(() => run.linesWritten() >= 1);
    run.child.kill('SIGINT');
    await run.until(() => run.stderr().includes('batch: stopping: finishing the requests in flight'));
    const atSignal = run.linesWritten();
    expect(await run.exited, run.stderr()).toBe(1);
    const written = readResults(run.out);
    // Four requests run at once (--max-batch 4): those finish, no new one starts.
    expect(written.length).toBeGreaterThanOrEqual(atSignal);
    expect(written.length).toBeLessThanOrEqual(atSignal + 4);
    expect(written.length).toBeLessThan(ids.length);
    expect(run.stderr()).toContain(`error: batch stopped by a signal: ${written.length} of ${ids.length} requests written`);
    for (const line of written) expect(line.response?.status_code).toBe(200);

    const r = await batch('node', run.input, run.out);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toContain(`batch: ${ids.length - written.length} done, 0 errors, ${written.length} skipped as already done`);
    expect(
      readResults(run.out)
        .map((l) => l.custom_id)
        .sort(),
    ).toEqual([...ids].sort());
  });

  it('aborts the requests in flight on a second SIGINT, writing nothing for them', async () => {
    // The first request is short, so that a line is written while the long ones run.
    const run = startBatch('abort', [
      chat('short', 'Hi', { max_tokens: 2 }),
      ...Array.from({ length: 5 }, (_, i) => chat(`long-${i}`, `Count to ${i + 1000}, please.`, { max_tokens: 2000 })),
    ]);
    await run.until(() => run.linesWritten() >= 1);
    run.child.kill('SIGINT');
    await run.until(() => run.stderr().includes('batch: stopping: finishing the requests in flight'));
    // Past the window in which a second signal counts as the first one relayed.
    await new Promise((resolve) => setTimeout(resolve, 1200));
    run.child.kill('SIGINT');
    expect(await run.exited, run.stderr()).toBe(1);
    expect(run.stderr()).toContain('batch: stopping now: aborting the requests in flight');
    // Some greedy answers end early (eos); those that run on are aborted, and an aborted request leaves no line.
    const written = readResults(run.out);
    expect(written.map((l) => l.custom_id)).toContain('short');
    expect(written.length).toBeLessThan(6);
    for (const line of written) expect(line.response?.status_code).toBe(200);
    expect(run.stderr()).toContain(`error: batch stopped by a signal: ${written.length} of 6 requests written`);
  });

  it('gives the same results under Deno', async () => {
    const out = join(dir, 'small.deno.jsonl');
    const r = await batch('deno', smallIn, out);
    expect(r.code, r.stderr).toBe(0);
    const deno = byId(readResults(out));
    const node = byId(readResults(smallOut));
    expect([...deno.keys()].sort()).toEqual([...node.keys()].sort());
    for (const [customId, line] of node) {
      expect(answer(deno.get(customId)), customId).toEqual(answer(line));
      expect(deno.get(customId)?.error).toEqual(line.error);
    }
  });
});
