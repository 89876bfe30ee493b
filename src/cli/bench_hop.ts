import type { GpuContext } from '../gpu/context.ts';
import { encodeFrame, readFrames } from '../runtime/pipeline/frame.ts';
import type { CliHost } from './host.ts';
import { median, roundTo } from '../bench/stats.ts';

/**
 * What one hop between pipeline stages costs on this machine for T rows of the hidden state: reading them back
 * from the GPU, sending them as a frame over loopback TCP (no-delay) until the other end has the whole frame, and
 * writing them into a GPU buffer on the other side (waited for). Medians over a few repetitions.
 */
export interface HopCost {
  rows: number;
  readback_ms: number;
  frame_ms: number;
  write_ms: number;
  total_ms: number;
}

const REPEATS = 9;
const round = (x: number) => roundTo(x, 3);

export async function measureHops(ctx: GpuContext, host: CliHost, hidden: number, rowCounts: number[]): Promise<HopCost[]> {
  const most = Math.max(...rowCounts) * hidden * 4;
  const from = ctx.storage('hop source', most);
  const to = ctx.storage('hop destination', most);
  let accept: (frames: AsyncGenerator<{ body: Uint8Array }>) => void = () => {};
  const accepted = new Promise<AsyncGenerator<{ body: Uint8Array }>>((resolve) => {
    accept = resolve;
  });
  const listener = await host.listenTcp({ hostname: '127.0.0.1', port: 0 }, (link) => accept(readFrames(link.chunks, 'hop receiver')));
  const sender = await host.connect('127.0.0.1', listener.port);
  const frames = await accepted;
  try {
    const out: HopCost[] = [];
    for (const rows of rowCounts) {
      const bytes = rows * hidden * 4;
      const times = { readback: [] as number[], frame: [] as number[], write: [] as number[] };
      for (let i = 0; i <= REPEATS; i++) {
        const t0 = performance.now();
        const data = new Uint8Array(await ctx.read(from, 0, bytes));
        const t1 = performance.now();
        await sender.write(encodeFrame({ type: 'step', rows }, data));
        const got = await frames.next();
        const t2 = performance.now();
        ctx.write(to, 0, got.value!.body);
        await ctx.read(to, 0, 4);
        const t3 = performance.now();
        // The first round warms the staging buffers and the connection.
        if (i === 0) continue;
        times.readback.push(t1 - t0);
        times.frame.push(t2 - t1);
        times.write.push(t3 - t2);
      }
      const [readback, frame, write] = [median(times.readback), median(times.frame), median(times.write)];
      out.push({ rows, readback_ms: round(readback), frame_ms: round(frame), write_ms: round(write), total_ms: round(readback + frame + write) });
    }
    return out;
  } finally {
    sender.close();
    listener.close();
    ctx.free(from, to);
  }
}
