import type { Server } from 'node:http';
import { serve } from '@hono/node-server';
import { runCli } from '../../cli/main.ts';
import { UsageError } from '../../errors.ts';
import { createNodeContext } from './gpu.ts';
import { connectTcp, listenTcp, spawnCli } from './tcp.ts';

const code = await runCli(process.argv.slice(2), {
  createContext: (o) => createNodeContext(o),
  stdout: (t) => process.stdout.write(t),
  stderr: (t) => process.stderr.write(t),
  isTTY: Boolean(process.stderr.isTTY),
  env: (name) => process.env[name],
  listen: (fetch, { hostname, port }) =>
    new Promise((resolve, reject) => {
      const server = serve({ fetch: (request) => fetch(request), hostname, port }, (info) =>
        resolve({
          port: info.port,
          // Called once every request is answered: keep-alive connections left open a second later are idle.
          close: () =>
            new Promise<void>((done) => {
              server.close(() => done());
              server.closeIdleConnections();
              setTimeout(() => server.closeAllConnections(), 1000).unref();
            }),
        }),
      ) as Server;
      server.once('error', (error) => reject(new UsageError(`cannot listen on ${hostname}:${port} (--host, --port): ${error.message}`, { cause: error })));
    }),
  connect: connectTcp,
  listenTcp,
  spawnCli,
  onStopSignal(handler) {
    process.on('SIGINT', handler);
    process.on('SIGTERM', handler);
  },
});
// Dawn keeps the process alive while its instance exists: exit explicitly.
process.exitCode = code;
process.stdout.write('', () => process.exit(code));
