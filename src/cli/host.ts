import type { ActivationType, CapsMask } from '../gpu/caps.ts';
import type { GpuContext } from '../gpu/context.ts';

/** What the CLI needs of the runtime it runs under (Node or Deno): a GPU and a terminal. */
export interface CliHost {
  createContext(options: { adapter?: string; mask?: CapsMask; activations?: ActivationType }): Promise<GpuContext>;
  stdout(text: string): void;
  stderr(text: string): void;
  isTTY: boolean;
}
