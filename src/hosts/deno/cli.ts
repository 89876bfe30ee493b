import { runCli } from '../../cli/main.ts';
import { GpuContext } from '../../gpu/context.ts';
import { AdapterError, UsageError } from '../../errors.ts';

const encoder = new TextEncoder();
const code = await runCli(Deno.args, {
  async createContext(o) {
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
  onStopSignal(handler) {
    const signals = ['SIGINT', 'SIGTERM'] as const;
    for (const signal of signals) Deno.addSignalListener(signal, handler);
    return () => {
      for (const signal of signals) Deno.removeSignalListener(signal, handler);
    };
  },
});
Deno.exit(code);
