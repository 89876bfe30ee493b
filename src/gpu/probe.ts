import { AdapterError } from '../errors.ts';

/**
 * Runs a kernel with one read-write storage binding (`@group(0) @binding(0)`) once, over `workgroups`
 * workgroups, and reads back its first `words` u32 words: the start-up checks of what an adapter computes. Throws
 * an AdapterError naming `label` when the WGSL does not compile or the pipeline does not validate (some runtimes
 * throw, others report to an error scope).
 */
export async function runProbe(device: GPUDevice, label: string, code: string, workgroups: number, words: number): Promise<Uint32Array> {
  const size = Math.ceil((words * 4) / 16) * 16;
  const out = device.createBuffer({ label, size, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC });
  const readback = device.createBuffer({ label: `${label} readback`, size, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
  try {
    device.pushErrorScope('validation');
    device.pushErrorScope('internal');
    let thrown: unknown;
    try {
      const module = device.createShaderModule({ label, code });
      const pipeline = device.createComputePipeline({ label, layout: 'auto', compute: { module, entryPoint: 'main' } });
      const encoder = device.createCommandEncoder({ label });
      const pass = encoder.beginComputePass();
      pass.setPipeline(pipeline);
      pass.setBindGroup(0, device.createBindGroup({ layout: pipeline.getBindGroupLayout(0), entries: [{ binding: 0, resource: { buffer: out } }] }));
      pass.dispatchWorkgroups(workgroups);
      pass.end();
      encoder.copyBufferToBuffer(out, 0, readback, 0, size);
      device.queue.submit([encoder.finish()]);
    } catch (error) {
      thrown = error;
    }
    const internal = await device.popErrorScope();
    const validation = await device.popErrorScope();
    const error = thrown ?? internal ?? validation;
    if (error) throw new AdapterError(`${label}: ${(error as { message?: string }).message ?? String(error)}`, { cause: error });
    await readback.mapAsync(GPUMapMode.READ);
    const got = new Uint32Array(readback.getMappedRange().slice(0, words * 4));
    readback.unmap();
    return got;
  } finally {
    out.destroy();
    readback.destroy();
  }
}
