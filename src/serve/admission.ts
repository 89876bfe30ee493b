/**
 * Which generation requests the server takes: at most `limit` at once (the engine's batch plus a bounded queue;
 * one more is refused rather than left to wait without end), none once stopping. Each admitted request holds a
 * ticket whose signal aborts when its client goes away or when a stop's grace period runs out.
 */

export interface Ticket {
  /** Aborts when the client disconnects, when `abort()` is called, or when the server stops past its grace. */
  readonly signal: AbortSignal;
  abort(): void;
  /** The request is done (finished, failed or aborted): its place is free. Idempotent. */
  release(): void;
}

export type Refusal = 'full' | 'stopping';

export class Admission {
  private readonly inFlight = new Set<AbortController>();
  private stopping = false;
  private onDrained: (() => void) | undefined;

  constructor(readonly limit: number) {}

  get accepting(): boolean {
    return !this.stopping;
  }

  get count(): number {
    return this.inFlight.size;
  }

  /** A ticket for one request, tied to the client's signal; or why there is none. */
  enter(clientSignal: AbortSignal): Ticket | Refusal {
    if (this.stopping) return 'stopping';
    if (this.inFlight.size >= this.limit) return 'full';
    const controller = new AbortController();
    const abort = () => controller.abort();
    clientSignal.addEventListener('abort', abort, { once: true });
    if (clientSignal.aborted) abort();
    this.inFlight.add(controller);
    return {
      signal: controller.signal,
      abort,
      release: () => {
        clientSignal.removeEventListener('abort', abort);
        if (this.inFlight.delete(controller) && this.inFlight.size === 0) this.onDrained?.();
      },
    };
  }

  /** Refuses new requests, waits up to `graceMs` for those in flight, aborts the rest, and resolves when all are done. */
  async stop(graceMs: number): Promise<void> {
    this.stopping = true;
    if (this.inFlight.size === 0) return;
    const drained = new Promise<void>((resolve) => {
      this.onDrained = resolve;
    });
    const timer = setTimeout(() => this.abortAll(), graceMs);
    await drained;
    clearTimeout(timer);
  }

  /** Aborts every request in flight. */
  abortAll(): void {
    for (const controller of this.inFlight) controller.abort();
  }
}
