/**
 * Compiles kernel variants on Deno (wgpu/naga), which validates WGSL differently from Dawn (Tint).
 *   npx deno run -A scripts/compile-deno.ts src/kernels/<op>.ts <exportName> '<variant JSON>' [...more variants]
 */
import { GpuContext } from '../src/gpu/context.ts';
import type { KernelDef } from '../src/gpu/kernel.ts';

const [path, name, ...variants] = Deno.args;
const module = await import(new URL(`../${path}`, import.meta.url).href);
const def = module[name] as KernelDef<unknown>;
if (!def?.bindings) throw new Error(`${path} has no kernel export ${name}`);
const ctx = await GpuContext.create(navigator.gpu, { backend: 'wgpu (Deno)' });
for (const masked of [false, true]) {
  const c = masked ? await GpuContext.create(navigator.gpu, { backend: 'wgpu (Deno)', mask: { f16: false } }) : ctx;
  for (const v of variants.length ? variants : ['null']) {
    await c.pipeline(def, JSON.parse(v) ?? undefined);
    console.log(`ok ${def.name} ${v} f16=${c.caps.f16}`);
  }
}
Deno.exit(0);
