/**
 * What the device can do, probed once and then passed around as plain data. Kernels read Caps, never the
 * host: the same source serves Dawn, wgpu (Deno) and browsers. `maskCaps` narrows them for tests and users
 * (force the no-f16 path on an f16 adapter, or a small binding limit to exercise tensor splitting).
 */
export interface Caps {
  /** shader-f16 enabled on the device: kernels may use f16 arithmetic. Storage never depends on it. */
  f16: boolean;
  /**
   * The subgroups feature, with subgroup_id and num_subgroups, checked by running them (subgroups.ts):
   * reductions combine a subgroup's lanes in registers and meet across subgroups once, instead of a tree of
   * barriers in workgroup memory. Sizes vary by adapter and even by pipeline, so kernels read them at run time.
   */
  subgroups: boolean;
  /** A CPU implementation (lavapipe, SwiftShader): workgroups run as SIMD lanes, kernels pick shapes for that. */
  cpu: boolean;
  /** Largest storage binding; bigger tensors are split into parts (lavapipe: 128 MiB). */
  maxStorageBindingBytes: number;
  maxBufferBytes: number;
  maxWorkgroupsPerDim: number;
  maxInvocationsPerWorkgroup: number;
  maxWorkgroupStorageBytes: number;
  maxStorageBuffersPerStage: number;
}

/**
 * The storage type of activations and caches (`act` in WGSL). 'f16' needs shader-f16; norms, states,
 * reductions and accumulators stay f32 either way.
 */
export type ActivationType = 'f32' | 'f16';

/** `cpu: false` runs the GPUs' kernel shapes on a CPU adapter (tests of those paths on machines without a GPU). */
export type CapsMask = Partial<Pick<Caps, 'f16' | 'subgroups' | 'cpu' | 'maxStorageBindingBytes'>>;

/** Narrows caps: a mask can switch features off or lower the binding limit, never raise them. */
export function maskCaps(caps: Caps, mask: CapsMask = {}): Caps {
  return {
    ...caps,
    f16: caps.f16 && mask.f16 !== false,
    subgroups: caps.subgroups && mask.subgroups !== false,
    cpu: caps.cpu && mask.cpu !== false,
    maxStorageBindingBytes: Math.min(caps.maxStorageBindingBytes, mask.maxStorageBindingBytes ?? Infinity),
  };
}

/** Stable key for pipeline caches: two devices with equal fingerprints compile the same WGSL. */
export function capsFingerprint(caps: Caps): string {
  return `${caps.f16 ? 'f16' : 'f32'}${caps.subgroups ? '+subgroups' : ''}`;
}
