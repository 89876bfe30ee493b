import type { ByteLink } from '../runtime/pipeline/link.ts';
import type { ActivationType, CapsMask } from '../gpu/caps.ts';
import type { GpuContext } from '../gpu/context.ts';

/** What the CLI needs of the runtime it runs under (Node or Deno): a GPU and a terminal. */
export interface CliHost {
  /** `hostOnly`: Dawn's null backend, which computes nothing (bench --host-only: the host's share of a step). */
  createContext(options: { adapter?: string; mask?: CapsMask; activations?: ActivationType; hostOnly?: boolean }): Promise<GpuContext>;
  stdout(text: string): void;
  stderr(text: string): void;
  isTTY: boolean;
  /** An environment variable (undefined when unset). */
  env(name: string): string | undefined;
  /** Serves HTTP on hostname:port (port 0: a free one) with `fetch` answering each request; `close` stops listening. */
  listen(fetch: (request: Request) => Response | Promise<Response>, options: { hostname: string; port: number }): Promise<HttpListener>;
  /** Calls `handler` on every SIGINT and SIGTERM (instead of ending the process), until it exits. */
  onStopSignal(handler: () => void): void;
  /** Opens a TCP connection (no-delay) to hostname:port. */
  connect(hostname: string, port: number): Promise<ByteLink>;
  /** Accepts TCP connections (no-delay) on hostname:port (port 0: a free one), each handed to `onLink`. */
  listenTcp(options: { hostname: string; port: number }, onLink: (link: ByteLink) => void): Promise<TcpListener>;
  /** Starts this CLI again as a child process with `args` and extra environment; stdout and stderr go to this one's stderr. */
  spawnCli(args: string[], env: Record<string, string>): ChildCli;
}

export interface ChildCli {
  pid: number;
  /** Resolves with the exit code (or 1 when killed by a signal). */
  exited: Promise<number>;
  kill(): void;
}

export interface HttpListener {
  /** The port it listens on (the one picked when asked for port 0). */
  port: number;
  close(): Promise<void>;
}

export type { ByteLink };

export interface TcpListener {
  port: number;
  close(): void;
}
