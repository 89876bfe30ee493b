import type { GpuContext } from '../gpu/context.ts';
import type { GpuTensor } from '../gpu/tensor.ts';
import { bytesPerElement } from '../gpu/tensor.ts';
import type { Model } from '../model/model.ts';

/**
 * The adapter's own memory bandwidth as buffer copies see it: bytes read plus bytes written per second,
 * over several copies of a large buffer in one submission.
 */
export async function copyBandwidth(ctx: GpuContext): Promise<number> {
  const bytes = Math.min(256 * 1024 * 1024, Math.floor(ctx.caps.maxBufferBytes / 4 / 256) * 256);
  const src = ctx.storage('bandwidth src', bytes);
  const dst = ctx.storage('bandwidth dst', bytes);
  try {
    const copies = async (n: number) => {
      const encoder = ctx.device.createCommandEncoder({ label: 'bandwidth' });
      for (let i = 0; i < n; i++) encoder.copyBufferToBuffer(i % 2 ? dst : src, 0, i % 2 ? src : dst, 0, bytes);
      const t0 = performance.now();
      ctx.device.queue.submit([encoder.finish()]);
      await ctx.sync();
      return performance.now() - t0;
    };
    await copies(2);
    const n = 8;
    const ms = await copies(n);
    return (2 * bytes * n) / (ms / 1000);
  } finally {
    ctx.free(src, dst);
  }
}

const tensorBytes = (t: GpuTensor, items = t.shape[0]) => items * t.itemStride * bytesPerElement(t.dtype);

/** Weight bytes one decode step reads: every matrix once, the routed experts' share, one embedding row. */
export function decodeWeightBytes(model: Model): number {
  const w = model.weights;
  let bytes = (w.embed ? tensorBytes(w.embed, 1) : 0) + (w.lmHead ? tensorBytes(w.lmHead) : 0);
  for (const layer of w.layers) {
    const m = layer.mixer;
    bytes += m.kind === 'linear_attention' ? tensorBytes(m.inProj) + tensorBytes(m.outProj) : tensorBytes(m.qkvProj) + tensorBytes(m.oProj);
    const f = layer.mlp;
    if (f.kind === 'dense') bytes += tensorBytes(f.gateUp) + tensorBytes(f.down);
    else {
      const k = model.config.moe!.topk;
      bytes +=
        tensorBytes(f.router) + tensorBytes(f.expertsGateUp, k) + tensorBytes(f.expertsDown, k) + tensorBytes(f.sharedGateUp) + tensorBytes(f.sharedDown);
    }
  }
  return bytes;
}
