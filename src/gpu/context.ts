import { AdapterError, CapabilityError, ContractError, InternalError } from '../errors.ts';
import { runProbe } from './probe.ts';
import { subgroupsWork } from './subgroups.ts';
import { type ActivationType, type Caps, type CapsMask, capsFingerprint, maskCaps } from './caps.ts';
import { memoise } from './memo.ts';
import { type Binding, type KernelDef, type ParamValues, type ParamsSchema, kernelSource, layoutEntries, packParams, stableJson } from './kernel.ts';

/** What the engine reports about its adapter (CLI JSON, bug reports). */
export interface AdapterSummary {
  name: string;
  vendor: string;
  architecture: string;
  backend: string;
  isFallback: boolean;
  features: string[];
  caps: Caps;
  /** Storage type of activations and caches (ContextOptions.activations). */
  activations: ActivationType;
}

export interface ContextOptions {
  /** Host-supplied name of the backend (e.g. "vulkan (Dawn)"), since WebGPU does not expose it. */
  backend?: string;
  mask?: CapsMask;
  /**
   * Storage type of activations, KV cache and conv state (default f32). 'f16' needs shader-f16 (not masked
   * off); norms, recurrent states, logits and every accumulator stay f32.
   */
  activations?: ActivationType;
  /**
   * Ask for WebGPU's default limits (8 storage buffers per stage, 128 MiB bindings, 16 KiB of workgroup memory...)
   * instead of all the adapter has: the least any adapter gives, so that a test on a software adapter runs as there.
   */
  defaultLimits?: boolean;
  /**
   * The adapter is Dawn's null backend, which takes every command and computes nothing: only the host's share of the
   * work can be measured there (bench --host-only), so it is not refused as a broken adapter.
   */
  nullBackend?: boolean;
  /** Debug hook: receives every kernel's WGSL as it is compiled. */
  dumpShader?: (label: string, code: string) => void;
}

export interface Pipeline {
  key: string;
  pipeline: GPUComputePipeline;
  layout: GPUBindGroupLayout;
  bindings: Binding[];
}

export type BufferRange = { buffer: GPUBuffer; offset?: number; size?: number };
/** A range to read back: `size` bytes from `offset`. */
export type ReadRange = BufferRange & { size: number };
/** What a binding is given: a buffer, a range of one, or (for uniforms) the param values themselves. */
export type Resource = GPUBuffer | BufferRange | Record<string, number>;

export type Workgroups = readonly [number, number?, number?] | { indirect: GPUBuffer; offset: number };

export interface Dispatch {
  pipeline: Pipeline;
  bindGroup: GPUBindGroup;
  workgroups: Workgroups;
}

const LIMIT_NAMES = [
  'maxStorageBufferBindingSize',
  'maxBufferSize',
  'maxComputeWorkgroupsPerDimension',
  'maxComputeInvocationsPerWorkgroup',
  'maxComputeWorkgroupSizeX',
  'maxComputeWorkgroupSizeY',
  'maxComputeWorkgroupSizeZ',
  'maxComputeWorkgroupStorageSize',
  'maxStorageBuffersPerShaderStage',
  'maxUniformBuffersPerShaderStage',
  'maxBindingsPerBindGroup',
  'maxUniformBufferBindingSize',
] as const;

/** Software adapters: Dawn marks them as fallback; Chromium names SwiftShader in the architecture. */
function isCpuAdapter(info: GPUAdapterInfo | undefined): boolean {
  if ((info as { isFallbackAdapter?: boolean } | undefined)?.isFallbackAdapter) return true;
  return /llvmpipe|lavapipe|swiftshader|software/i.test([info?.vendor, info?.architecture, info?.device, info?.description].join(' '));
}

/** The bytes of a readback submitted with some work: mapped when first asked for, or given up unread. */
export interface Readback {
  bytes(): Promise<ArrayBuffer>;
  discard(): void;
}

/** Staging buffers kept for reuse: decoding holds one per step in flight (up to 9, runtime/run_ahead.ts), expert streaming one more. */
const MAX_STAGING = 12;
/** Larger staging buffers (rows of logits for `score`, a prefill chunk between pipeline stages) are not kept: a pool of them would pin memory. */
const MAX_STAGING_BYTES = 4 << 20;

/** A cached uniform buffer and the bind groups that hold it (pinned: handed out by `params`, so never freed). */
interface CachedUniform {
  key: string;
  buffer: GPUBuffer;
  refs: number;
  pinned: boolean;
}

/** A cached bind group, the uniform buffers (by content key) it holds, and the dispatches made with it. */
interface CachedGroup {
  key: string;
  group: GPUBindGroup;
  uniforms: string[];
  refs: number;
}

/** Live GPU buffers made through a context (GpuContext.memory). */
export interface GpuMemory {
  buffers: number;
  bytes: number;
  /** Bind groups the context caches. */
  bindGroups: number;
}

const isRange = (r: Resource): r is BufferRange => typeof r === 'object' && 'buffer' in r && !('mapAsync' in r);
const isBuffer = (r: Resource): r is GPUBuffer => typeof r === 'object' && 'mapAsync' in r;

/**
 * The device and everything cached against it: pipelines by variant, bind groups by resource identity,
 * uniform buffers by content. Host-agnostic: a host hands in its `GPU` object.
 *
 * Bind groups and the uniform buffers made for them are counted: each Dispatch holds one reference to its bind
 * group until `release`d, each bind group one to each uniform it made, and what nobody holds is freed. Plans
 * that are built per prompt length (Session) release theirs when dropped, so these caches do not grow per request.
 */
export class GpuContext {
  /** Storage type of activation buffers: kernels declare them `array<act>`. */
  readonly activations: ActivationType;
  /**
   * What reading a few bytes back costs beyond the GPU's work, measured at creation: about 10 ms where the runtime
   * polls maps on a timer (Deno), well under 1 ms under Dawn in Node. Decoding runs as many steps ahead as cover it.
   */
  readbackMs = 0;
  private readonly pipelines = new Map<string, Promise<Pipeline>>();
  private readonly bindGroups = new Map<string, CachedGroup>();
  /** The bind group reference each dispatch holds (deleted when released, so a second release does nothing). */
  private readonly dispatchGroups = new WeakMap<Dispatch, CachedGroup>();
  private readonly uniforms = new Map<string, CachedUniform>();
  private readonly transientUniforms = new Map<string, GPUBuffer>();
  private readonly bufferIds = new WeakMap<GPUBuffer, number>();
  private nextBufferId = 1;
  /** Bytes of each live buffer made here; `free` forgets it, so a buffer is counted out once. */
  private readonly liveBytes = new WeakMap<GPUBuffer, number>();
  private live = { buffers: 0, bytes: 0 };
  /** Free staging buffers for readbacks, smallest first. */
  private readonly staging: GPUBuffer[] = [];
  private failure: string | undefined;

  private constructor(
    /** Held so that the implementation behind it (Dawn's instance) lives as long as the device. */
    readonly gpu: GPU,
    readonly device: GPUDevice,
    readonly caps: Caps,
    readonly adapter: AdapterSummary,
    private readonly options: ContextOptions,
  ) {
    this.activations = adapter.activations;
    device.lost.then((info) => {
      this.failure ??= `device lost (${info.reason}): ${info.message}`;
    });
    device.addEventListener?.('uncapturederror', (event) => {
      this.failure ??= `WebGPU error: ${(event as GPUUncapturedErrorEvent).error.message}`;
    });
  }

  static async create(gpu: GPU, options: ContextOptions = {}): Promise<GpuContext> {
    const activations = options.activations ?? 'f32';
    if (activations !== 'f32' && activations !== 'f16')
      throw new ContractError(`activations must be 'f32' or 'f16', got ${JSON.stringify(activations)}`, 'GpuContext.create');
    const adapter = await gpu.requestAdapter({ powerPreference: 'high-performance' });
    if (!adapter) throw new AdapterError('no WebGPU adapter found (run `npm run setup` on a machine without a GPU)');
    const wanted = (['shader-f16', 'subgroups'] as GPUFeatureName[]).filter((f) => adapter.features.has(f));
    const requiredLimits: Record<string, number> = {};
    const limits = adapter.limits as unknown as Record<string, number | undefined>;
    if (!options.defaultLimits) for (const name of LIMIT_NAMES) if (typeof limits[name] === 'number') requiredLimits[name] = limits[name];
    const device = await adapter.requestDevice({ requiredFeatures: wanted, requiredLimits, label: 'qwen-webgpu' });
    const info = adapter.info;
    const caps = maskCaps(
      {
        f16: device.features.has('shader-f16'),
        subgroups: await subgroupsWork(device),
        cpu: isCpuAdapter(info),
        maxStorageBindingBytes: device.limits.maxStorageBufferBindingSize,
        maxBufferBytes: device.limits.maxBufferSize,
        maxWorkgroupsPerDim: device.limits.maxComputeWorkgroupsPerDimension,
        maxInvocationsPerWorkgroup: device.limits.maxComputeInvocationsPerWorkgroup,
        maxWorkgroupStorageBytes: device.limits.maxComputeWorkgroupStorageSize,
        maxStorageBuffersPerStage: device.limits.maxStorageBuffersPerShaderStage,
      },
      options.mask,
    );
    const summary: AdapterSummary = {
      name: info?.description || info?.device || info?.vendor || 'unknown adapter',
      vendor: info?.vendor ?? '',
      architecture: info?.architecture ?? '',
      backend: options.backend ?? 'webgpu',
      isFallback: Boolean((info as { isFallbackAdapter?: boolean } | undefined)?.isFallbackAdapter),
      features: [...device.features].sort(),
      caps,
      activations,
    };
    if (caps.maxStorageBuffersPerStage < 8) {
      device.destroy();
      throw new CapabilityError(`adapter allows ${caps.maxStorageBuffersPerStage} storage buffers per stage; 8 are needed`, 'maxStorageBuffersPerShaderStage');
    }
    if (activations === 'f16' && !caps.f16) {
      device.destroy();
      const why = device.features.has('shader-f16') ? 'is masked off' : 'is not supported';
      throw new CapabilityError(`f16 activations need the shader-f16 feature, which ${why} on adapter "${summary.name}"; use f32 activations`, 'shader-f16');
    }
    const ctx = new GpuContext(gpu, device, caps, summary, options);
    if (!options.nullBackend) await ctx.checkComputes();
    await ctx.measureReadback();
    return ctx;
  }

  /** Refuses adapters that accept work but compute nothing (Dawn's null backend) or compute wrongly. */
  private async checkComputes(): Promise<void> {
    const n = 256;
    const code = `@group(0) @binding(0) var<storage, read_write> y: array<u32>;
@compute @workgroup_size(64) fn main(@builtin(global_invocation_id) g: vec3<u32>) { y[g.x] = g.x * 2654435761u + 7u; }`;
    const got = await runProbe(this.device, 'canary', code, n / 64, n);
    for (let i = 0; i < n; i++) {
      if (got[i] !== (Math.imul(i, 2654435761) + 7) >>> 0) {
        throw new AdapterError(`adapter "${this.adapter.name}" does not compute correctly (a null or fake adapter?)`);
      }
    }
  }

  /** Times a few 4-byte readbacks with the GPU idle and keeps the quickest (see readbackMs). */
  private async measureReadback(): Promise<void> {
    const probe = this.createBuffer('readback probe', 16, GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC);
    let best = Number.POSITIVE_INFINITY;
    for (let i = 0; i < 3; i++) {
      const t0 = performance.now();
      await this.read(probe, 0, 4);
      best = Math.min(best, performance.now() - t0);
    }
    this.free(probe);
    this.readbackMs = best;
  }

  /** Pipeline cache key of the device: its caps and the activation type (every kernel compiles once per pair). */
  get capsKey(): string {
    return `${capsFingerprint(this.caps)}${this.activations === 'f16' ? '+act16' : ''}`;
  }

  /** Bytes per activation element: 2 or 4. */
  get activationBytes(): 2 | 4 {
    return this.activations === 'f16' ? 2 : 4;
  }

  createBuffer(label: string, size: number, usage: number): GPUBuffer {
    if (size > this.caps.maxBufferBytes) {
      throw new CapabilityError(`${label}: ${size} bytes is more than the adapter's maxBufferSize ${this.caps.maxBufferBytes}`, 'maxBufferSize');
    }
    const buffer = this.device.createBuffer({ label, size: Math.max(16, Math.ceil(size / 16) * 16), usage });
    this.bufferIds.set(buffer, this.nextBufferId++);
    this.liveBytes.set(buffer, buffer.size);
    this.live.buffers += 1;
    this.live.bytes += buffer.size;
    return buffer;
  }

  /**
   * Destroys buffers made by this context and counts them out of `memory()` (undefined entries are skipped, a
   * buffer freed twice is counted once). Work already submitted that reads them still completes: WebGPU frees
   * the memory only once the queue is done with it.
   */
  free(...buffers: (GPUBuffer | undefined)[]): void {
    for (const buffer of buffers) {
      if (!buffer) continue;
      const bytes = this.liveBytes.get(buffer);
      if (bytes !== undefined) {
        this.liveBytes.delete(buffer);
        this.live.buffers -= 1;
        this.live.bytes -= bytes;
      }
      buffer.destroy();
    }
  }

  /** Buffers made by this context and not yet freed (`free`), their bytes, and the bind groups cached. */
  memory(): GpuMemory {
    return { ...this.live, bindGroups: this.bindGroups.size };
  }

  /** A storage buffer that kernels read and write and that can be copied to and from. */
  storage(label: string, size: number): GPUBuffer {
    return this.createBuffer(label, size, GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST);
  }

  /** Indirect-dispatch arguments that kernels write (MoE tile counts). */
  indirect(label: string, size: number): GPUBuffer {
    return this.createBuffer(label, size, GPUBufferUsage.STORAGE | GPUBufferUsage.INDIRECT | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST);
  }

  write(buffer: GPUBuffer, offset: number, data: ArrayBufferView | ArrayBuffer): void {
    const view = data instanceof ArrayBuffer ? new Uint8Array(data) : new Uint8Array(data.buffer as ArrayBuffer, data.byteOffset, data.byteLength);
    this.device.queue.writeBuffer(buffer, offset, view);
  }

  /** Compiles (once per variant and caps) and returns a kernel's pipeline. */
  pipeline<V>(def: KernelDef<V>, variant: V): Promise<Pipeline> {
    const overrides = def.overrides?.(variant, this.caps) ?? {};
    const key = `${def.name}${stableJson(variant ?? {})}${stableJson(overrides)}:${this.capsKey}`;
    return memoise(this.pipelines, key, () => this.compile(def, variant, overrides, key));
  }

  private async compile<V>(def: KernelDef<V>, variant: V, constants: Record<string, number>, key: string): Promise<Pipeline> {
    const code = kernelSource(def, variant, this.caps, this.activations);
    this.options.dumpShader?.(key, code);
    const bindings = def.bindings(variant);
    const storage = bindings.filter((b) => b.kind !== 'uniform').length;
    if (storage > this.caps.maxStorageBuffersPerStage) {
      throw new InternalError(`internal: kernel ${key} binds ${storage} storage buffers; the adapter allows ${this.caps.maxStorageBuffersPerStage}`);
    }
    const layout = this.device.createBindGroupLayout({ label: key, entries: layoutEntries(bindings) });
    const module = this.device.createShaderModule({ label: key, code });
    try {
      const pipeline = await this.device.createComputePipelineAsync({
        label: key,
        layout: this.device.createPipelineLayout({ label: key, bindGroupLayouts: [layout] }),
        compute: { module, entryPoint: 'main', constants },
      });
      return { key, pipeline, layout, bindings };
    } catch (error) {
      const info = await module.getCompilationInfo();
      const messages = info.messages.map((m) => `${m.type} at ${m.lineNum}:${m.linePos}: ${m.message}`).join('\n');
      throw new CapabilityError(`kernel ${key} failed to compile on "${this.adapter.name}": ${(error as Error).message}\n${messages}`, def.name, {
        cause: error,
      });
    }
  }

  /** A uniform buffer holding these params; identical params share one buffer. It lives as long as the context. */
  params<S extends ParamsSchema>(schema: S, values: ParamValues<S>): GPUBuffer {
    const uniform = this.uniform(schema, values);
    uniform.pinned = true;
    return uniform.buffer;
  }

  private uniform<S extends ParamsSchema>(schema: S, values: ParamValues<S>): CachedUniform {
    const bytes = packParams(schema, values);
    const key = Array.from(new Uint32Array(bytes)).join(',');
    let uniform = this.uniforms.get(key);
    if (!uniform) {
      const buffer = this.createBuffer('params', bytes.byteLength, GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST);
      this.write(buffer, 0, bytes);
      uniform = { key, buffer, refs: 0, pinned: false };
      this.uniforms.set(key, uniform);
    }
    return uniform;
  }

  /**
   * The bind group for these resources, created once per distinct set of buffers and ranges. With
   * `transient`, param values go into one uniform buffer per pipeline and binding, rewritten each time:
   * for one-off dispatches (weight upload pieces) that are submitted before the next one is bound.
   * A group got here directly is never freed; `dispatch` hands out groups that `release` gives back.
   */
  bind(pipeline: Pipeline, resources: Record<string, Resource>, transient = false): GPUBindGroup {
    return this.cachedGroup(pipeline, resources, transient).group;
  }

  /** The cached group for these resources, with one more reference taken. */
  private cachedGroup(pipeline: Pipeline, resources: Record<string, Resource>, transient: boolean): CachedGroup {
    const entries: GPUBindGroupEntry[] = [];
    const keyParts = [pipeline.key];
    const uniforms: CachedUniform[] = [];
    pipeline.bindings.forEach((b, binding) => {
      const r = resources[b.name];
      if (r === undefined) throw new ContractError(`no resource for binding ${b.name}`, pipeline.key);
      let range: BufferRange;
      if (b.kind === 'uniform' && !isBuffer(r) && !isRange(r)) {
        const values = r as ParamValues<typeof b.schema>;
        if (transient) range = { buffer: this.transientParams(`${pipeline.key}/${b.name}`, b.schema, values) };
        else {
          const uniform = this.uniform(b.schema, values);
          uniforms.push(uniform);
          range = { buffer: uniform.buffer };
        }
      } else if (isBuffer(r)) range = { buffer: r };
      else if (isRange(r)) range = r;
      else throw new ContractError(`binding ${b.name} needs a buffer`, pipeline.key);
      if (range.size !== undefined && range.size > this.caps.maxStorageBindingBytes && b.kind !== 'uniform') {
        throw new CapabilityError(
          `${pipeline.key}: binding ${b.name} of ${range.size} bytes passes maxStorageBufferBindingSize`,
          'maxStorageBufferBindingSize',
        );
      }
      if (range.size === undefined && b.kind !== 'uniform' && range.buffer.size - (range.offset ?? 0) > this.caps.maxStorageBindingBytes) {
        throw new CapabilityError(
          `${pipeline.key}: binding ${b.name} (buffer ${range.buffer.label}, ${range.buffer.size} bytes) passes maxStorageBufferBindingSize`,
          'maxStorageBufferBindingSize',
        );
      }
      entries.push({ binding, resource: range });
      keyParts.push(`${this.bufferIds.get(range.buffer) ?? range.buffer.label}:${range.offset ?? 0}:${range.size ?? -1}`);
    });
    const key = keyParts.join('|');
    let cached = this.bindGroups.get(key);
    if (!cached) {
      const group = this.device.createBindGroup({ label: pipeline.key, layout: pipeline.layout, entries });
      cached = { key, group, uniforms: uniforms.map((u) => u.key), refs: 0 };
      for (const u of uniforms) u.refs += 1;
      this.bindGroups.set(key, cached);
    }
    cached.refs += 1;
    return cached;
  }

  /**
   * Gives back the bind groups of dispatches that will not be submitted again (a dropped plan): a group no
   * dispatch holds any more leaves the cache, and a uniform buffer no group holds is freed. Dispatches already
   * submitted still run. Releasing a dispatch twice, or one not made by `dispatch`, does nothing.
   */
  release(dispatches: Iterable<Dispatch>): void {
    for (const d of dispatches) {
      const cached = this.dispatchGroups.get(d);
      if (!cached) continue;
      this.dispatchGroups.delete(d);
      if (--cached.refs > 0) continue;
      this.bindGroups.delete(cached.key);
      for (const key of cached.uniforms) {
        const uniform = this.uniforms.get(key);
        if (!uniform || --uniform.refs > 0 || uniform.pinned) continue;
        this.uniforms.delete(key);
        this.free(uniform.buffer);
      }
    }
  }

  private transientParams<S extends ParamsSchema>(key: string, schema: S, values: ParamValues<S>): GPUBuffer {
    const bytes = packParams(schema, values);
    let buffer = this.transientUniforms.get(key);
    if (!buffer) {
      buffer = this.createBuffer(`transient params ${key}`, bytes.byteLength, GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST);
      this.transientUniforms.set(key, buffer);
    }
    this.write(buffer, 0, bytes);
    return buffer;
  }

  /**
   * One dispatch, ready to encode: compiles the variant if needed and binds the resources. A `transient`
   * dispatch must be submitted before the next transient dispatch of the same kernel is made (see bind).
   */
  async dispatch<V>(def: KernelDef<V>, variant: V, resources: Record<string, Resource>, workgroups: Workgroups, transient = false): Promise<Dispatch> {
    const pipeline = await this.pipeline(def, variant);
    const cached = this.cachedGroup(pipeline, resources, transient);
    const dispatch: Dispatch = { pipeline, bindGroup: cached.group, workgroups };
    this.dispatchGroups.set(dispatch, cached);
    return dispatch;
  }

  encode(pass: GPUComputePassEncoder, dispatches: readonly Dispatch[]): void {
    for (const d of dispatches) {
      pass.setPipeline(d.pipeline.pipeline);
      pass.setBindGroup(0, d.bindGroup);
      if ('indirect' in d.workgroups) pass.dispatchWorkgroupsIndirect(d.workgroups.indirect, d.workgroups.offset);
      else {
        const [x, y = 1, z = 1] = d.workgroups;
        if (x === 0 || y === 0 || z === 0) continue;
        pass.dispatchWorkgroups(x, y, z);
      }
    }
  }

  /** Encodes and submits dispatches in one compute pass. */
  run(dispatches: readonly Dispatch[], label = 'run'): void {
    this.submit(dispatches, label);
  }

  /**
   * Encodes dispatches in one compute pass and, in the same submission, a copy of `readback` into a staging
   * buffer, whose bytes the returned Readback maps when asked. Several may be in flight at once (each holds its own
   * staging buffer until read or discarded), so a caller can submit the next step before reading this one: the map
   * is requested only at `bytes()`, since Deno's mapAsync blocks the thread until the GPU is done.
   */
  submit(dispatches: readonly Dispatch[], label: string): void;
  submit(dispatches: readonly Dispatch[], label: string, readback: ReadRange | readonly ReadRange[]): Readback;
  submit(dispatches: readonly Dispatch[], label: string, readback?: ReadRange | readonly ReadRange[]): Readback | undefined {
    const encoder = this.device.createCommandEncoder({ label });
    if (dispatches.length > 0) {
      const pass = encoder.beginComputePass({ label });
      this.encode(pass, dispatches);
      pass.end();
    }
    const staged = readback && this.stage(encoder, Array.isArray(readback) ? readback : [readback as ReadRange]);
    this.device.queue.submit([encoder.finish()]);
    return staged;
  }

  /** Copies between buffers, in one submission (queue order: after what was submitted before). */
  copy(copies: readonly { from: GPUBuffer; fromOffset?: number; to: GPUBuffer; toOffset?: number; size: number }[], label = 'copy'): void {
    const encoder = this.device.createCommandEncoder({ label });
    for (const c of copies) encoder.copyBufferToBuffer(c.from, c.fromOffset ?? 0, c.to, c.toOffset ?? 0, c.size);
    this.device.queue.submit([encoder.finish()]);
  }

  /** Copies a range of a GPU buffer back to the CPU. */
  read(buffer: GPUBuffer, offset: number, size: number): Promise<ArrayBuffer> {
    return this.submit([], 'readback', { buffer, offset, size }).bytes();
  }

  /**
   * Encodes copies of the ranges, one after another (each from a multiple of 4 bytes), into a free staging buffer
   * (see submit); the bytes come back in that order, each range padded to a multiple of 4.
   */
  private stage(encoder: GPUCommandEncoder, ranges: readonly ReadRange[]): Readback {
    this.throwIfFailed();
    const padded = ranges.map((r) => Math.ceil(r.size / 4) * 4);
    const bytes = padded.reduce((a, b) => a + b, 0);
    const size = ranges.length === 1 ? ranges[0].size : bytes;
    const index = this.staging.findIndex((b) => b.size >= bytes);
    const staging =
      index >= 0 ? this.staging.splice(index, 1)[0] : this.createBuffer('readback', Math.max(bytes, 256), GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST);
    let at = 0;
    ranges.forEach((r, i) => {
      encoder.copyBufferToBuffer(r.buffer, r.offset ?? 0, staging, at, padded[i]);
      at += padded[i];
    });
    let result: Promise<ArrayBuffer> | undefined;
    let released = false;
    const release = () => {
      if (released) return;
      released = true;
      // A buffer whose mapping failed is dropped rather than reused in an unknown state.
      if (staging.mapState === 'unmapped') this.recycle(staging);
      else this.free(staging);
    };
    return {
      bytes: () =>
        (result ??= (async () => {
          try {
            await staging.mapAsync(GPUMapMode.READ, 0, bytes);
            const copy = staging.getMappedRange(0, bytes).slice(0, size);
            staging.unmap();
            this.throwIfFailed();
            return copy;
          } finally {
            release();
          }
        })()),
      // The copy may still be pending on the GPU: the queue orders it before any later use of the buffer.
      discard: () => {
        if (!result) release();
      },
    };
  }

  /** Keeps a few staging buffers (the largest up to MAX_STAGING_BYTES) for reuse. */
  private recycle(staging: GPUBuffer): void {
    if (staging.size > MAX_STAGING_BYTES) {
      this.free(staging);
      return;
    }
    this.staging.push(staging);
    this.staging.sort((a, b) => a.size - b.size);
    if (this.staging.length > MAX_STAGING) this.free(this.staging.shift());
  }

  /** Waits for submitted work; surfaces device loss and validation errors as exceptions. */
  async sync(): Promise<void> {
    await this.device.queue.onSubmittedWorkDone();
    this.throwIfFailed();
  }

  private throwIfFailed(): void {
    if (this.failure) throw new AdapterError(this.failure);
  }

  destroy(): void {
    this.free(...[...this.uniforms.values()].map((u) => u.buffer), ...this.transientUniforms.values(), ...this.staging.splice(0));
    this.uniforms.clear();
    this.transientUniforms.clear();
    this.bindGroups.clear();
    this.device.destroy();
    // Every buffer went with the device.
    this.live = { buffers: 0, bytes: 0 };
  }
}
