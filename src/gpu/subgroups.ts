/**
 * Whether this device's subgroups can be used: the feature alone does not say that its WGSL compiler takes
 * subgroup_id and num_subgroups (newer than the feature) or that they number the subgroups as the reductions
 * expect, so a small kernel runs them and its answer is checked.
 */
const PROBE = `enable subgroups;
@group(0) @binding(0) var<storage, read_write> out: array<u32>;
var<workgroup> sums: array<u32, 64>;
@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) li: u32, @builtin(subgroup_invocation_id) lane: u32,
        @builtin(subgroup_id) sg: u32, @builtin(num_subgroups) count: u32) {
  let total = subgroupAdd(li) + subgroupShuffleXor(li, 1u) - (li ^ 1u);
  if (lane == 0u) { sums[sg] = total; }
  workgroupBarrier();
  if (li == 0u) {
    var all = 0u;
    for (var s = 0u; s < count; s++) { all += sums[s]; }
    out[0] = all;
    out[1] = count;
  }
}`;

/** Σ li over a workgroup of 256: each lane counted once whatever the subgroup size or layout. */
const EXPECTED = (256 * 255) / 2;

export async function subgroupsWork(device: GPUDevice): Promise<boolean> {
  if (!device.features.has('subgroups' as GPUFeatureName)) return false;
  const out = device.createBuffer({ label: 'subgroups probe', size: 16, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC });
  const readback = device.createBuffer({ label: 'subgroups probe readback', size: 16, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
  device.pushErrorScope('validation');
  device.pushErrorScope('internal');
  let submitted = false;
  try {
    const module = device.createShaderModule({ code: PROBE });
    const pipeline = device.createComputePipeline({ layout: 'auto', compute: { module, entryPoint: 'main' } });
    const encoder = device.createCommandEncoder();
    const pass = encoder.beginComputePass();
    pass.setPipeline(pipeline);
    pass.setBindGroup(0, device.createBindGroup({ layout: pipeline.getBindGroupLayout(0), entries: [{ binding: 0, resource: { buffer: out } }] }));
    pass.dispatchWorkgroups(1);
    pass.end();
    encoder.copyBufferToBuffer(out, 0, readback, 0, 16);
    device.queue.submit([encoder.finish()]);
    submitted = true;
  } catch {
    // A compiler that does not know the WGSL throws here on some runtimes rather than reporting to the scope.
  }
  const failed = (await device.popErrorScope()) || (await device.popErrorScope()) || !submitted;
  try {
    if (failed) return false;
    await readback.mapAsync(GPUMapMode.READ);
    const [sum, count] = new Uint32Array(readback.getMappedRange());
    readback.unmap();
    // Subgroups hold at least 4 lanes (WebGPU's minimum subgroup size), so there are at most 64 of them.
    return sum === EXPECTED && count >= 1 && count <= 64;
  } catch {
    return false;
  } finally {
    out.destroy();
    readback.destroy();
  }
}
