import { runCli } from '../../cli/main.ts';
import type { ByteLink } from '../../cli/host.ts';
import { GpuContext } from '../../gpu/context.ts';
import { AdapterError, UsageError } from '../../errors.ts';

const encoder = new TextEncoder();

/** A Deno TCP connection as the CLI's ByteLink (Nagle off: a decode step's small frame goes at once). */
function linkOf(conn: Deno.TcpConn): ByteLink {
  conn.setNoDelay(true);
  const addr = conn.remoteAddr as Deno.NetAddr;
  const writer = conn.writable.getWriter();
  return {
    remote: `${addr.hostname}:${addr.port}`,
    write: (bytes) => writer.write(bytes),
    chunks: conn.readable,
    close: () => {
      try {
        conn.close();
      } catch {
        // Already closed.
      }
    },
  };
}
const code = await runCli(Deno.args, {
  async createContext(o) {
    if (o.hostOnly) throw new UsageError("--host-only runs on Dawn's null backend, which Deno's WebGPU (wgpu) does not have: run it under Node");
    if (!navigator.gpu) throw new AdapterError('this Deno has no WebGPU (navigator.gpu)');
    const ctx = await GpuContext.create(navigator.gpu, { backend: 'wgpu (Deno)', mask: o.mask, activations: o.activations });
    if (o.adapter && !ctx.adapter.name.toLowerCase().includes(o.adapter.toLowerCase())) {
      ctx.destroy();
      throw new AdapterError(`Deno chose adapter "${ctx.adapter.name}", not "${o.adapter}" (Deno cannot pick adapters by name)`);
    }
    return ctx;
  },
  stdout: (t) => Deno.stdout.writeSync(encoder.encode(t)),
  stderr: (t) => Deno.stderr.writeSync(encoder.encode(t)),
  isTTY: Deno.stderr.isTerminal(),
  env: (name) => Deno.env.get(name),
  listen: (fetch, { hostname, port }) =>
    new Promise((resolve, reject) => {
      try {
        const server = Deno.serve({ hostname, port, onListen: (addr) => resolve({ port: addr.port, close: () => server.shutdown() }) }, fetch);
      } catch (error) {
        reject(new UsageError(`cannot listen on ${hostname}:${port} (--host, --port): ${(error as Error).message}`, { cause: error }));
      }
    }),
  async connect(hostname, port) {
    return linkOf(await Deno.connect({ hostname, port }));
  },
  listenTcp({ hostname, port }, onLink) {
    let listener: Deno.Listener;
    try {
      listener = Deno.listen({ hostname, port });
    } catch (error) {
      return Promise.reject(new UsageError(`cannot listen on ${hostname}:${port}: ${(error as Error).message}`, { cause: error }));
    }
    void (async () => {
      try {
        for await (const conn of listener) onLink(linkOf(conn as Deno.TcpConn));
      } catch {
        // Closed.
      }
    })();
    return Promise.resolve({ port: (listener.addr as Deno.NetAddr).port, close: () => listener.close() });
  },
  spawnCli(args, env) {
    const child = new Deno.Command(Deno.execPath(), {
      args: ['run', '--allow-all', new URL(import.meta.url).pathname, ...args],
      env,
      stdin: 'null',
      stdout: 'piped',
      stderr: 'inherit',
    }).spawn();
    // Its output goes to our stderr: our stdout is the user's (a URL, JSON).
    void child.stdout.pipeTo(new WritableStream({ write: (chunk) => void Deno.stderr.writeSync(chunk) }));
    return {
      pid: child.pid,
      exited: child.status.then((s) => s.code),
      kill: () => child.kill('SIGKILL'),
    };
  },
  onStopSignal(handler) {
    for (const signal of ['SIGINT', 'SIGTERM'] as const) Deno.addSignalListener(signal, handler);
  },
});
Deno.exit(code);
