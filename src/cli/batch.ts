import { open, readFile, truncate } from 'node:fs/promises';
import { resolve } from 'node:path';
import type { Engine } from '../api/engine.ts';
import type { ChatCompletion, Completion } from '../api/types.ts';
import { AbortError, RequestError } from '../errors.ts';
import { chatRequestFromBody, completionRequestFromBody, openAiError } from '../serve/openai_body.ts';
import { type Args, UsageError, intFlag, stringFlag } from './args.ts';
import type { CliHost } from './host.ts';
import { stopSignal } from './stop_signal.ts';

/**
 * `batch`: an OpenAI Batch API input file (one request per line) run on one Engine, up to --max-batch requests at
 * a time, each result appended to --out as one whole line the moment it is done. A rerun after a crash cuts off a
 * torn last line and skips the custom_ids the output already has: a job resumes, it never repeats a request.
 */

const URLS = ['/v1/chat/completions', '/v1/completions'] as const;
type Url = (typeof URLS)[number];

/** An input line that asks for a completion. */
interface BatchRequest {
  customId: string;
  url: Url;
  body: unknown;
}

/** An input line refused before it reaches the engine (not JSON, a field missing, a repeated custom_id). */
interface InvalidLine {
  customId: string;
  message: string;
}

/** One line of OpenAI's batch output file. */
interface ResultLine {
  id: string;
  custom_id: string;
  response: { status_code: number; request_id: string; body: unknown } | null;
  error: { code: string; message: string } | null;
}

export async function runBatch(args: Args, host: CliHost, load: (maxBatch: number, contextLength: number) => Promise<Engine>): Promise<void> {
  const inPath = stringFlag(args, 'in', true);
  const outPath = stringFlag(args, 'out', true);
  const maxBatch = intFlag(args, 'max-batch', 4);
  const contextLength = intFlag(args, 'context', 4096);
  if (resolve(inPath) === resolve(outPath)) throw new UsageError('--in and --out name the same file');
  const text = await readFile(inPath, 'utf8').catch((error: { code?: string; message: string }) => {
    throw new RequestError(`cannot read ${inPath} (${error.code ?? error.message})`, '--in');
  });
  const lines = parseInput(text);
  const done = await resumeOutput(outPath);
  const pending = lines.filter((line) => !done.has(line.customId));
  const skipped = lines.length - pending.length;

  const file = await open(outPath, 'a').catch((error: { code?: string; message: string }) => {
    throw new RequestError(`cannot write ${outPath} (${error.code ?? error.message})`, '--out');
  });
  const encoder = new TextEncoder();
  let writing = Promise.resolve();
  // One write call per line on a file opened for append, one at a time: a kill leaves at most the last line torn.
  const append = (line: ResultLine) => {
    writing = writing.then(async () => {
      await file.write(encoder.encode(`${JSON.stringify(line)}\n`));
    });
    return writing;
  };
  // Taken from the front by each of up to maxBatch workers, so that many requests are in flight at once.
  const queue = pending.filter((line): line is BatchRequest => 'url' in line);
  let succeeded = 0;
  const invalid = pending.length - queue.length;
  let answered = 0;
  try {
    for (const line of pending) {
      if ('message' in line)
        await append({ id: batchRequestId(), custom_id: line.customId, response: null, error: { code: 'invalid_request', message: line.message } });
    }
    if (queue.length > 0) {
      const engine = await load(maxBatch, contextLength);
      const progress = batchProgress(host, queue.length);
      // A stop signal ends the job between requests, a second one aborts those in flight: what was not written is
      // what a rerun does.
      const abort = new AbortController();
      let stopping = false;
      const newLine = host.isTTY ? '\n' : ''; // past the progress bar
      void stopSignal(host, () => {
        host.stderr(`${newLine}batch: stopping now: aborting the requests in flight\n`);
        abort.abort();
      }).then(() => {
        stopping = true;
        host.stderr(`${newLine}batch: stopping: finishing the requests in flight (a second signal aborts them)\n`);
      });
      try {
        const next = async (): Promise<void> => {
          for (let request = queue.shift(); request && !stopping; request = queue.shift()) {
            let status = 200;
            let body: unknown;
            let tokens = 0;
            try {
              const completion = await complete(engine, request, abort.signal);
              body = completion;
              tokens = completion.usage.completion_tokens;
            } catch (error) {
              if (abort.signal.aborted) return;
              ({ status, body } = openAiError(error));
            }
            await append({
              id: batchRequestId(),
              custom_id: request.customId,
              response: { status_code: status, request_id: `req_${randomHex(12)}`, body },
              error: null,
            });
            answered++;
            if (status === 200) succeeded++;
            progress.add(tokens);
          }
        };
        await Promise.all(Array.from({ length: Math.min(maxBatch, queue.length) }, next));
      } finally {
        progress.finish();
        engine.destroy();
      }
      await writing;
      const written = invalid + answered;
      if (written < pending.length) {
        throw new AbortError(
          `batch stopped by a signal: ${written} of ${pending.length} requests written (${outPath}), ${pending.length - written} left: run the same command again to resume`,
        );
      }
    }
  } finally {
    await file.close();
  }
  host.stderr(`batch: ${succeeded} done, ${pending.length - succeeded} errors, ${skipped} skipped as already done (${outPath})\n`);
}

function complete(engine: Engine, request: BatchRequest, signal: AbortSignal): Promise<ChatCompletion | Completion> {
  if (request.url === '/v1/chat/completions') {
    const chat = chatRequestFromBody(request.body);
    if (chat.stream) throw new RequestError('a batch request is answered whole, not streamed', 'stream');
    return engine.chat.completions.create({ ...chat, stream: false, signal });
  }
  const text = completionRequestFromBody(request.body);
  if (text.stream) throw new RequestError('a batch request is answered whole, not streamed', 'stream');
  return engine.completions.create({ ...text, stream: false, signal });
}

/** Every non-blank input line, as a request or as the reason it is refused (keyed `line-<n>` when it has no usable custom_id). */
function parseInput(text: string): (BatchRequest | InvalidLine)[] {
  const firstLineOf = new Map<string, number>();
  const result: (BatchRequest | InvalidLine)[] = [];
  text.split('\n').forEach((line, i) => {
    if (line.trim() !== '') result.push(parseLine(line, i + 1, firstLineOf));
  });
  return result;
}

function parseLine(line: string, n: number, firstLineOf: Map<string, number>): BatchRequest | InvalidLine {
  const invalid = (customId: string, why: string): InvalidLine => ({ customId, message: `line ${n}: ${why}` });
  let parsed: unknown;
  try {
    parsed = JSON.parse(line);
  } catch (error) {
    return invalid(`line-${n}`, `not JSON (${(error as Error).message})`);
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) return invalid(`line-${n}`, 'not a JSON object');
  const { custom_id: customId, method, url, body } = parsed as Record<string, unknown>;
  if (typeof customId !== 'string' || customId === '') return invalid(`line-${n}`, 'custom_id must be a non-empty string');
  // The repeat gets an id of its own, so the output keeps one line per custom_id.
  const first = firstLineOf.get(customId);
  if (first !== undefined) return invalid(`line-${n}`, `custom_id ${JSON.stringify(customId)} was already used on line ${first} (custom_ids must be unique)`);
  firstLineOf.set(customId, n);
  if (method !== undefined && method !== 'POST') return invalid(customId, `method must be "POST", got ${JSON.stringify(method)}`);
  if (!URLS.includes(url as Url)) return invalid(customId, `url must be ${URLS.map((u) => `"${u}"`).join(' or ')}, got ${JSON.stringify(url)}`);
  if (body === undefined) return invalid(customId, 'body is missing');
  return { customId, url: url as Url, body };
}

/**
 * The custom_ids the output already holds. A kill can leave the last line torn (no newline, or not JSON): it is
 * cut off, so that the lines appended next start on a line of their own.
 */
async function resumeOutput(path: string): Promise<Set<string>> {
  let bytes: Uint8Array;
  try {
    bytes = await readFile(path);
  } catch (error) {
    if ((error as { code?: string }).code === 'ENOENT') return new Set();
    throw new RequestError(`cannot read ${path} (${(error as { code?: string }).code ?? (error as Error).message})`, '--out');
  }
  let end = bytes.lastIndexOf(0x0a) + 1;
  const lines = new TextDecoder().decode(bytes.subarray(0, end)).split('\n').slice(0, -1);
  const ids = lines.map(parseCustomId);
  if (ids.length > 0 && ids[ids.length - 1] === undefined) {
    ids.pop();
    // (lastIndexOf counts a negative start from the end, hence the guard)
    end = end >= 2 ? bytes.lastIndexOf(0x0a, end - 2) + 1 : 0;
  }
  if (end < bytes.length) await truncate(path, end);
  return new Set(ids.filter((id): id is string => id !== undefined));
}

function parseCustomId(line: string): string | undefined {
  try {
    const id = (JSON.parse(line) as { custom_id?: unknown } | null)?.custom_id;
    return typeof id === 'string' ? id : undefined;
  } catch {
    return undefined;
  }
}

const randomHex = (bytes: number) => Array.from(crypto.getRandomValues(new Uint8Array(bytes)), (b) => b.toString(16).padStart(2, '0')).join('');
const batchRequestId = () => `batch_req_${randomHex(12)}`;

/** done/total requests (timed from the model being loaded) with tokens/s and the time left: a bar on a terminal, elsewhere a line per ~10% or per 10 s. */
function batchProgress(host: CliHost, total: number) {
  const t0 = performance.now();
  let done = 0;
  let tokens = 0;
  let lastWrite = t0;
  let lastTenth = 0;
  return {
    add(completionTokens: number): void {
      done++;
      tokens += completionTokens;
      const now = performance.now();
      const seconds = (now - t0) / 1000;
      const figures = `${done}/${total} requests, ${(tokens / seconds).toFixed(1)} tokens/s, ${Math.ceil((seconds / done) * (total - done))} s left`;
      if (host.isTTY) {
        if (now - lastWrite < 100 && done < total) return;
        const filled = Math.round((done / total) * 30);
        host.stderr(`\rbatch [${'#'.repeat(filled)}${'.'.repeat(30 - filled)}] ${figures}`.padEnd(90));
      } else {
        const tenth = Math.floor((done * 10) / total);
        if (tenth === lastTenth && now - lastWrite < 10_000) return;
        lastTenth = tenth;
        host.stderr(`batch: ${figures}\n`);
      }
      lastWrite = now;
    },
    finish(): void {
      if (host.isTTY && done > 0) host.stderr('\n');
    },
  };
}
