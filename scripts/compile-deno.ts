/**
 * Compiles kernel variants on Deno (wgpu/naga), which validates WGSL differently from Dawn (Tint): with f16 on,
 * with f16 masked off, and with f16 activations (when the adapter has shader-f16).
 *   npx deno run -A scripts/compile-deno.ts src/kernels/<op>.ts <exportName> '<variant JSON>' [...more variants]
 */
import { GpuContext, type ContextOptions } from '../src/gpu/context.ts';
import type { KernelDef } from '../src/gpu/kernel.ts';

const [path, name, ...variants] = Deno.args;
const module = await import(new URL(`../${path}`, import.meta.url).href);
const def = module[name] as KernelDef<unknown>;
if (!def?.bindings) throw new Error(`${path} has no kernel export ${name}`);
const backend = 'wgpu (Deno)';
const settings: { label: string; options: ContextOptions }[] = [
  { label: 'f16', options: { backend } },
  { label: 'no-f16', options: { backend, mask: { f16: false } } },
  { label: 'act16', options: { backend, activations: 'f16' } },
];
let compiled = 0;
for (const { label, options } of settings) {
  const c = await GpuContext.create(navigator.gpu, options).catch((error: Error) => {
    console.log(`skip ${label}: ${error.message}`);
    return undefined;
  });
  if (!c) continue;
  for (const v of variants.length ? variants : ['null']) {
    await c.pipeline(def, JSON.parse(v) ?? undefined);
    console.log(`ok ${def.name} ${v} ${label} (f16=${c.caps.f16}, activations=${c.activations})`);
    compiled++;
  }
  c.destroy();
}
if (compiled === 0) throw new Error('nothing compiled');
Deno.exit(0);
