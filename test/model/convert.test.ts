import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { GpuContext } from '../../src/gpu/context.ts';
import { createNodeContext } from '../../src/hosts/node/gpu.ts';
import { convertModel } from '../../src/model/convert.ts';
import { loadModel } from '../../src/model/load.ts';
import { Session } from '../../src/runtime/session.ts';
import { scoreIds } from '../../src/runtime/score.ts';
import { FolderSink } from '../../src/storage/file_sink.ts';
import { openModel } from '../../src/storage/locate.ts';
import type { Checkpoint } from '../../src/formats/checkpoint.ts';
import type { OutputSink } from '../../src/formats/packed.ts';
import { fixtureDir, golden } from '../helpers/fixtures.ts';

// Converting holds one piece at a time on the host: source reads, GPU readbacks and writes are each measured
// and must stay within a cap far below the model's size (22 MB here), and the result must be the model.
let ctx: GpuContext;
beforeAll(async () => {
  ctx = await createNodeContext({ adapter: 'llvmpipe' });
});
afterAll(() => ctx?.destroy());

const CAP = 64 * 1024;

function measured(ckpt: Checkpoint, largest: { bytes: number }): Checkpoint {
  const tensors = new Map(
    [...ckpt.tensors].map(([name, t]) => [
      name,
      {
        ...t,
        readRows: async (first: number, count: number, signal?: AbortSignal) => {
          const bytes = await t.readRows(first, count, signal);
          largest.bytes = Math.max(largest.bytes, bytes.length);
          return bytes;
        },
      },
    ]),
  );
  return { ...ckpt, tensors };
}

function measuredSink(sink: OutputSink, largest: { bytes: number }): OutputSink {
  return {
    location: sink.location,
    create: async (name) => {
      const file = await sink.create(name);
      return { write: (b: Uint8Array) => ((largest.bytes = Math.max(largest.bytes, b.length)), file.write(b)), close: () => file.close() };
    },
    rename: (a, b) => sink.rename(a, b),
    remove: (a) => sink.remove(a),
  };
}

describe('convert', () => {
  it('converts the MoE fixture to INT4 with host memory capped to a 64 KiB piece, and the result is the model', async () => {
    const dir = fixtureDir('tiny-qwen35-moe');
    const reads = { bytes: 0 };
    const writes = { bytes: 0 };
    const readbacks = { bytes: 0 };
    const read = ctx.read.bind(ctx);
    ctx.read = async (buffer, offset, size) => ((readbacks.bytes = Math.max(readbacks.bytes, size)), read(buffer, offset, size));
    const out = mkdtempSync(join(tmpdir(), 'qwen-convert-'));
    try {
      const manifest = await convertModel(ctx, measured(await openModel(dir), reads), {
        dtype: 'q4',
        sink: measuredSink(new FolderSink(out), writes),
        pieceBytes: CAP,
        shardBytes: 1 << 20,
      });
      expect(manifest.shards.length).toBeGreaterThan(1);
      // The MTP block is kept in the packed model (a load leaves it out: nothing runs it yet).
      expect(manifest.tensors.some((t) => t.key === 'mtp.fc')).toBe(true);
    } finally {
      ctx.read = read;
    }
    for (const [what, peak] of [
      ['source read', reads],
      ['GPU readback', readbacks],
      ['write', writes],
    ] as const) {
      expect(peak.bytes, what).toBeGreaterThan(0);
      expect(peak.bytes, what).toBeLessThanOrEqual(CAP);
    }

    const g = golden('tiny-qwen35-moe');
    const scoreOf = async (model: Awaited<ReturnType<typeof loadModel>>) => {
      const session = Session.create(ctx, model, { contextLength: g.prompt_ids.length });
      const rows = new Float32Array(g.prompt_ids.length * g.vocab_size);
      await scoreIds(session, g.prompt_ids, (r, first) => rows.set(r, first * g.vocab_size));
      session.destroy();
      model.destroy();
      return rows;
    };
    // Loading puts nothing of the MTP block on the GPU, and does not report its tensors as unused.
    const load = async (location: string) => {
      const labels: string[] = [];
      const storage = ctx.storage.bind(ctx);
      ctx.storage = (label, size) => {
        labels.push(label);
        return storage(label, size);
      };
      try {
        const model = await loadModel(ctx, await openModel(location), { dtype: 'q4' });
        expect(labels.filter((l) => l.startsWith('layers.')).length, location).toBeGreaterThan(0);
        expect(
          labels.filter((l) => l.includes('mtp')),
          location,
        ).toEqual([]);
        expect(model.unusedTensors, location).toEqual([]);
        return model;
      } finally {
        ctx.storage = storage;
      }
    };
    const packed = await scoreOf(await load(out));
    const direct = await scoreOf(await load(dir));
    expect(packed).toEqual(direct);
  });
});
