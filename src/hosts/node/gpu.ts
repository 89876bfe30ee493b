import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { fileURLToPath } from 'node:url';
import { GpuContext, type ContextOptions } from '../../gpu/context.ts';
import { AdapterError, CapabilityError } from '../../errors.ts';

const packageRoot = fileURLToPath(new URL('../../../', import.meta.url));
const LAVAPIPE_ICD = `${packageRoot}.cache/lavapipe/lvp_icd.json`;
const SWIFTSHADER_ICD = '/usr/lib/chromium/vk_swiftshader_icd.json';

export interface NodeGpuOptions extends Omit<ContextOptions, 'backend'> {
  /** Part of an adapter's name (Dawn's `adapter=` option), e.g. "llvmpipe" or "SwiftShader". */
  adapter?: string;
  /** Dawn's null backend instead of an adapter: the engine's host work alone (bench --host-only). */
  hostOnly?: boolean;
}

/**
 * Makes the software Vulkan drivers that `npm run setup` provides visible to Dawn, beside any real GPU's
 * driver: VK_ADD_DRIVER_FILES adds to the loader's search instead of replacing it. A user's own
 * VK_ICD_FILENAMES / VK_DRIVER_FILES are left alone.
 */
function addSoftwareDrivers(): void {
  const env = process.env;
  env.XDG_RUNTIME_DIR ??= tmpdir();
  if (env.VK_ICD_FILENAMES || env.VK_DRIVER_FILES) return;
  const extra = [LAVAPIPE_ICD, SWIFTSHADER_ICD].filter((f) => existsSync(f));
  const current = env.VK_ADD_DRIVER_FILES ? env.VK_ADD_DRIVER_FILES.split(':') : [];
  env.VK_ADD_DRIVER_FILES = [...new Set([...current, ...extra])].join(':');
}

async function dawn(flags: string[]): Promise<GPU> {
  const { create, globals } = await import('webgpu');
  Object.assign(globalThis, globals);
  return create(flags) as GPU;
}

/**
 * A GpuContext on Dawn. With no adapter named, Dawn's high-performance choice is taken, except that among
 * software adapters lavapipe is preferred to SwiftShader (it has shader-f16 and is faster).
 */
export async function createNodeContext(options: NodeGpuOptions = {}): Promise<GpuContext> {
  addSoftwareDrivers();
  const context = { ...options, backend: 'vulkan (Dawn)' };
  if (options.hostOnly) return GpuContext.create(await dawn(['backend=null']), { ...context, backend: 'null (Dawn)', nullBackend: true });
  if (options.adapter) {
    try {
      return await GpuContext.create(await dawn([`adapter=${options.adapter}`]), context);
    } catch (error) {
      // The adapter was found; it lacks what was asked of it (f16 activations without shader-f16).
      if (error instanceof CapabilityError) throw error;
      throw new AdapterError(`adapter "${options.adapter}": ${(error as Error).message}`, { cause: error });
    }
  }
  // Chosen from the adapter's info before a context is made: SwiftShader would refuse f16 activations.
  const gpu = await dawn([]);
  const info = (await gpu.requestAdapter({ powerPreference: 'high-performance' }))?.info;
  const name = [info?.description, info?.device, info?.vendor].join(' ');
  const fallback = Boolean((info as { isFallbackAdapter?: boolean } | undefined)?.isFallbackAdapter);
  if (fallback && !/llvmpipe/i.test(name) && existsSync(LAVAPIPE_ICD)) return GpuContext.create(await dawn(['adapter=llvmpipe']), context);
  return GpuContext.create(gpu, context);
}
