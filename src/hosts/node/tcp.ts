import { createConnection, createServer, type Socket } from 'node:net';
import { spawn } from 'node:child_process';
import type { ByteLink, ChildCli, TcpListener } from '../../cli/host.ts';
import { UsageError } from '../../errors.ts';

/** node:net sockets as the CLI's ByteLinks (pipeline stages), Nagle off so a decode step's small frame goes at once. */

function linkOf(socket: Socket): ByteLink {
  socket.setNoDelay(true);
  const remote = `${socket.remoteAddress}:${socket.remotePort}`;
  return {
    remote,
    write: (bytes) =>
      new Promise((resolve, reject) => {
        socket.write(bytes, (error) => (error ? reject(error) : resolve()));
      }),
    chunks: (async function* () {
      for await (const chunk of socket) yield chunk as Uint8Array;
    })(),
    close: () => socket.destroy(),
  };
}

export const connectTcp = (hostname: string, port: number): Promise<ByteLink> =>
  new Promise((resolve, reject) => {
    const socket = createConnection({ host: hostname, port }, () => {
      socket.off('error', reject);
      resolve(linkOf(socket));
    });
    socket.once('error', reject);
  });

export const listenTcp = (options: { hostname: string; port: number }, onLink: (link: ByteLink) => void): Promise<TcpListener> =>
  new Promise((resolve, reject) => {
    const server = createServer((socket) => onLink(linkOf(socket)));
    server.once('error', (error) => reject(new UsageError(`cannot listen on ${options.hostname}:${options.port}: ${error.message}`, { cause: error })));
    server.listen(options.port, options.hostname, () => {
      const address = server.address();
      resolve({ port: typeof address === 'object' && address ? address.port : options.port, close: () => server.close() });
    });
  });

/** This CLI again (the same Node, flags and entry script) with `args`. */
export function spawnCli(args: string[], env: Record<string, string>): ChildCli {
  const child = spawn(process.execPath, [...process.execArgv, process.argv[1], ...args], {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  // Its output goes to our stderr: our stdout is the user's (a URL, JSON).
  child.stdout?.pipe(process.stderr);
  return {
    pid: child.pid ?? 0,
    exited: new Promise((resolve) => child.once('exit', (code) => resolve(code ?? 1))),
    kill: () => void child.kill('SIGKILL'),
  };
}
