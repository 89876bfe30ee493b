import { runProbe } from './probe.ts';

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
  try {
    const [sum, count] = await runProbe(device, 'subgroups probe', PROBE, 1, 2);
    // Subgroups hold at least 4 lanes (WebGPU's minimum subgroup size), so there are at most 64 of them.
    return sum === EXPECTED && count >= 1 && count <= 64;
  } catch {
    // A compiler that does not know the WGSL: the portable path.
    return false;
  }
}
