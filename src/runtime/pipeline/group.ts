import { StageError } from '../../errors.ts';
import type { LayerRange } from '../../model/tensors.ts';
import { type Assign, type Hello, type ModelIdentity, refusal } from './handshake.ts';
import { type ByteLink, FrameConnection } from './link.ts';
import type { StagePool } from './stage_pool.ts';

/** How long a stage has, once connected, to say hello. */
const HELLO_TIMEOUT_MS = 30_000;

/**
 * Stage 0's side of the handshake: takes the connections of stages 1..N−1, refuses those that run another model,
 * dtype or protocol (or want another layer range than theirs), and once all have said hello, hands out the layer
 * ranges and waits for every stage to load. A stage that comes back later (restarted) gets its range again and takes
 * its place in the pool: the group is whole again.
 */
export class StageGroup {
  private readonly joined = new Map<number, { conn: FrameConnection; hello: Hello }>();
  private everyone?: () => void;
  private readonly allJoined = new Promise<void>((resolve) => (this.everyone = resolve));
  private assigns?: Assign[];
  private pool?: StagePool;
  /** Stages whose first connection was refused at its assignment, waiting for one that takes it. */
  private readonly awaited = new Map<number, (conn: FrameConnection) => void>();

  constructor(
    readonly identity: ModelIdentity,
    readonly stages: number,
    private readonly log: (line: string) => void,
  ) {}

  /** A new connection from a stage: its hello is checked; refused ones are told why and closed. */
  async accept(link: ByteLink): Promise<void> {
    const conn = new FrameConnection(link, `a stage at ${link.remote}`);
    try {
      const frame = await conn.next(HELLO_TIMEOUT_MS);
      if (frame.header.type !== 'hello') throw new StageError(`sent ${frame.header.type} before hello`, conn.name);
      const hello = frame.header as unknown as Hello;
      conn.name = `stage ${hello.stage} (${link.remote})`;
      const why = refusal(hello, this.identity, this.stages, new Set([...this.joined].filter(([, j]) => !j.conn.failure).map(([s]) => s)));
      if (why) throw new StageError(`refused: ${why}`, conn.name);
      this.joined.set(hello.stage, { conn, hello });
      if (this.assigns) await this.rejoin(hello.stage, conn, hello);
      else if (this.joined.size === this.stages - 1) this.everyone?.();
    } catch (error) {
      await this.refuse(conn, error);
    }
  }

  /** The hellos of stages 1..N−1, once all have come (index i − 1: stage i). */
  async hellos(): Promise<Hello[]> {
    await this.allJoined;
    return Array.from({ length: this.stages - 1 }, (_, i) => this.joined.get(i + 1)!.hello);
  }

  /**
   * Sends every stage its assignment (assigns[i − 1] to stage i) and resolves with their connections once each has
   * loaded its layers. A stage that asked for another range is refused (the error names it).
   */
  async start(assigns: Assign[]): Promise<FrameConnection[]> {
    this.assigns = assigns;
    return Promise.all(
      assigns.map(async (assign, i) => {
        const { conn, hello } = this.joined.get(i + 1)!;
        try {
          await this.handOut(conn, hello, assign);
          return conn;
        } catch (error) {
          await this.refuse(conn, error);
          return new Promise<FrameConnection>((resolve) => this.awaited.set(i + 1, resolve));
        }
      }),
    );
  }

  /** Where a stage that comes back takes its place. */
  attach(pool: StagePool): void {
    this.pool = pool;
  }

  private async rejoin(stage: number, conn: FrameConnection, hello: Hello): Promise<void> {
    await this.handOut(conn, hello, this.assigns![stage - 1]);
    const waiting = this.awaited.get(stage);
    this.awaited.delete(stage);
    if (waiting) return waiting(conn);
    this.pool?.replace(stage, conn);
    this.log(`stage ${stage} is back (${conn.remote}): the group is whole again\n`);
  }

  /** Logs why a stage is turned away, tells it, and closes its connection. */
  private async refuse(conn: FrameConnection, error: unknown): Promise<void> {
    const why = error instanceof StageError ? error : new StageError(String(error), conn.name);
    this.log(`${why.message}\n`);
    await conn.send({ type: 'refused', reason: why.detail }).catch(() => {});
    conn.close();
  }

  private async handOut(conn: FrameConnection, hello: Hello, assign: Assign): Promise<void> {
    if (hello.layers && !sameRange(hello.layers, assign.layers)) {
      throw new StageError(`refused: was started for layers ${rangeText(hello.layers)}, stage 0 assigns it ${rangeText(assign.layers)}`, conn.name);
    }
    await conn.send({ ...assign });
    const ready = await conn.next();
    if (ready.header.type !== 'ready') throw new StageError(`answered ${ready.header.type} to its assignment: ${String(ready.header.reason ?? '')}`, conn.name);
  }
}

const sameRange = (a: LayerRange, b: LayerRange) => a.first === b.first && a.end === b.end;
export const rangeText = (r: LayerRange) => `${r.first}:${r.end}`;
