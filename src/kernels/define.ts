import type { KernelDef } from '../gpu/kernel.ts';
import { SHADERS } from './shaders.generated.ts';
import { InternalError } from '../errors.ts';

/** Declares a kernel of this folder; its WGSL body is `shaders/<name>.wgsl`, embedded by `npm run shaders`. */
export function defineKernel<V = void>(def: Omit<KernelDef<V>, 'body'>): KernelDef<V> {
  const body = SHADERS[def.name];
  if (body === undefined) throw new InternalError(`no shader named ${def.name} (run npm run shaders)`);
  return { ...def, body };
}
