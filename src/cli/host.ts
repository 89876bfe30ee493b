import type { ActivationType, CapsMask } from '../gpu/caps.ts';
import type { GpuContext } from '../gpu/context.ts';

/** What the CLI needs of the runtime it runs under (Node or Deno): a GPU and a terminal. */
export interface CliHost {
  createContext(options: { adapter?: string; mask?: CapsMask; activations?: ActivationType }): Promise<GpuContext>;
  stdout(text: string): void;
  stderr(text: string): void;
  isTTY: boolean;
  /** An environment variable (undefined when unset). */
  env(name: string): string | undefined;
  /** Serves HTTP on hostname:port (port 0: a free one) with `fetch` answering each request; `close` stops listening. */
  listen(fetch: (request: Request) => Response | Promise<Response>, options: { hostname: string; port: number }): Promise<HttpListener>;
  /** Calls `handler` on every SIGINT and SIGTERM (instead of ending the process); returns the function that removes it. */
  onStopSignal(handler: () => void): () => void;
}

export interface HttpListener {
  /** The port it listens on (the one picked when asked for port 0). */
  port: number;
  close(): Promise<void>;
}
