import type { Dispatch, GpuContext } from '../gpu/context.ts';
import { type PromiseCache, memoise } from '../gpu/memo.ts';

/**
 * Plans by key, built once; past `limit` entries the least recently used is dropped and its dispatches released
 * (GpuContext.release frees the uniform buffers and bind groups that no other plan holds). The plan in use is the
 * most recent one, so it is never the one dropped; work already submitted with a dropped plan still runs.
 */
export class PlanCache<P> implements PromiseCache<string, P> {
  private readonly plans = new Map<string, { plan: Promise<P>; built?: P }>();

  constructor(
    private readonly ctx: GpuContext,
    private readonly limit: number,
    private readonly dispatchesOf: (plan: P) => Dispatch[],
  ) {}

  /** The plan under `key`, built (memoise: once, forgotten if the build fails) when there is none. */
  plan(key: string, build: () => Promise<P>): Promise<P> {
    return memoise(this, key, build);
  }

  get(key: string): Promise<P> | undefined {
    const hit = this.plans.get(key);
    if (!hit) return undefined;
    // Map order is insertion order: moving a hit to the end keeps the least recently used first.
    this.plans.delete(key);
    this.plans.set(key, hit);
    return hit.plan;
  }

  set(key: string, plan: Promise<P>): void {
    const entry: { plan: Promise<P>; built?: P } = { plan };
    this.plans.set(key, entry);
    plan.then(
      (built) => void (entry.built = built),
      () => {},
    );
    for (const [old, dropped] of this.plans) {
      if (this.plans.size <= this.limit) break;
      this.plans.delete(old);
      this.release(dropped);
    }
  }

  delete(key: string): void {
    this.plans.delete(key);
  }

  /** Drops every plan (a plan still being built is released once built). */
  clear(): void {
    for (const entry of this.plans.values()) this.release(entry);
    this.plans.clear();
  }

  private release(entry: { plan: Promise<P>; built?: P }): void {
    if (entry.built) this.ctx.release(this.dispatchesOf(entry.built));
    else
      entry.plan.then(
        (p) => this.ctx.release(this.dispatchesOf(p)),
        () => {},
      );
  }
}
