import type { CliHost } from './host.ts';

/**
 * A signal this soon after the first is the same one relayed (`deno task`, npm and a terminal's Ctrl-C signal the
 * whole process group, and a wrapper forwards it again); a later one asks to stop at once.
 */
const RELAYED_MS = 1000;

/**
 * Resolves on the first SIGINT or SIGTERM (a graceful stop); a later one calls `now`. The handler stays until the
 * process exits: a copy of the signal relayed late (later still on a loaded machine) must find it, not the default
 * action that kills a process already stopping cleanly.
 */
export function stopSignal(host: CliHost, now: () => void): Promise<void> {
  let first: number | undefined;
  return new Promise((resolve) => {
    host.onStopSignal(() => {
      if (first === undefined) {
        first = performance.now();
        resolve();
      } else if (performance.now() - first > RELAYED_MS) {
        now();
      }
    });
  });
}
