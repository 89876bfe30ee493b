import type { Engine } from '../api/engine.ts';
import { createApp } from '../serve/app.ts';
import { type Args, UsageError, intFlag, stringFlag } from './args.ts';
import type { CliHost } from './host.ts';
import { stopSignal } from './stop_signal.ts';

/** `serve`: the OpenAI-compatible HTTP API over one Engine until SIGINT or SIGTERM, then a graceful stop. */

export const SERVE_FLAGS = ['port', 'host', 'api-key', 'max-batch', 'max-queue', 'cors', 'max-body-kb', 'served-model-name', 'context'];

/** How long running requests may take to finish once a stop signal came, before they are aborted. */
const GRACE_MS = 30_000;

/** `stop`: what to end besides the engine (a pipeline's stage processes). */
export async function runServe(
  args: Args,
  host: CliHost,
  load: (contextLength: number, maxBatch: number) => Promise<{ engine: Engine; stop?(): void }>,
): Promise<void> {
  // Every flag is checked before the model loads: a typo fails at once, not after minutes of loading.
  const port = intFlag(args, 'port', 8080, 0);
  if (port > 65535) throw new UsageError(`--port must be at most 65535, got ${port}`);
  const hostname = stringFlag(args, 'host') ?? '127.0.0.1';
  const apiKey = stringFlag(args, 'api-key') ?? host.env('QWEN_API_KEY');
  if (apiKey === '') throw new UsageError('--api-key (or QWEN_API_KEY) must not be empty');
  const maxBatch = intFlag(args, 'max-batch', 4);
  const maxQueue = intFlag(args, 'max-queue', 16, 0);
  const maxBodyBytes = intFlag(args, 'max-body-kb', 1024) * 1024;
  const corsOrigins = stringFlag(args, 'cors')
    ?.split(',')
    .map((origin) => origin.trim())
    .filter(Boolean);
  const { engine, stop } = await load(intFlag(args, 'context', 4096), maxBatch);
  const modelName = stringFlag(args, 'served-model-name') ?? engine.name;
  try {
    const server = createApp(engine, {
      modelName,
      apiKey,
      corsOrigins,
      maxBodyBytes,
      maxBatch,
      maxQueue,
      graceMs: GRACE_MS,
    });
    // A second signal aborts the running requests at once.
    const stopRequested = stopSignal(host, () => {
      host.stderr('stopping now: aborting the running requests\n');
      server.abort();
    });
    const listener = await host.listen((request) => server.app.fetch(request), { hostname, port });
    host.stdout(`listening on http://${hostname.includes(':') ? `[${hostname}]` : hostname}:${listener.port}\n`);
    host.stderr(`serving ${modelName}: ${servingMode(engine, maxBatch)}\n`);
    await stopRequested;
    host.stderr('stopping: finishing the running requests\n');
    await server.stop();
    await listener.close();
  } finally {
    engine.destroy();
    stop?.();
  }
}

/** How requests will run, for the operator: sequences decoded together, and speculation. */
function servingMode(engine: Engine, maxBatch: number): string {
  const together = maxBatch > 1 ? `up to ${maxBatch} sequences decode together` : 'one sequence at a time';
  if (engine.gauges().speculation === undefined) return `${together}, speculative decoding off`;
  return maxBatch > 1
    ? `${together}; a request that finds no other running decodes speculatively with the MTP block`
    : `${together}, speculative decoding with the MTP block`;
}
