import type { Caps } from './caps.ts';
import { prelude } from './wgsl.ts';
import type { WeightDtype } from './tensor.ts';
import { SHADERS } from '../kernels/shaders.generated.ts';

/**
 * Kernels are declared once in TypeScript: their bindings, their uniform params and the numeric constants
 * they are tuned with. From that one declaration come the WGSL declarations that precede the body in
 * `shaders/<name>.wgsl`, the explicit bind group layout, and the byte packing of the params. Binding indices
 * and struct field order are never written by hand in two languages.
 */

export type ParamType = 'u32' | 'i32' | 'f32';
export type ParamsSchema = Readonly<Record<string, ParamType>>;
export type ParamValues<S extends ParamsSchema> = { [K in keyof S]: number };

export type Binding =
  | { kind: 'read' | 'write'; name: string; type: string }
  | { kind: 'uniform'; name: string; schema: ParamsSchema }
  | { kind: 'weight'; name: string; dtype: WeightDtype };

/** Read-only storage array. */
export const read = (name: string, type = 'f32'): Binding => ({ kind: 'read', name, type });
/** Read-write storage array. */
export const write = (name: string, type = 'f32'): Binding => ({ kind: 'write', name, type });
export const uniform = (name: string, schema: ParamsSchema): Binding => ({ kind: 'uniform', name, schema });
/** A weight tensor part. Generates `<name>_load8(i)` (elements 8i..8i+7 as W8) and `<name>_at(e)` (one element). */
export const weight = (name: string, dtype: WeightDtype): Binding => ({ kind: 'weight', name, dtype });

/** Written once per forward call: the absolute position of its first token (RoPE, KV cache, causal mask). */
export const StepParams = { pos: 'u32' } as const satisfies ParamsSchema;

export interface KernelDef<V> {
  /** Op name: the shader file `shaders/<name>.wgsl`, the pipeline label, the test file. */
  name: string;
  bindings(variant: V): Binding[];
  /** Small WGSL functions that differ by variant (how an expert's weights or an input row are found). */
  helpers?(variant: V, caps: Caps): string;
  /** Numeric tuning: WGSL `override` constants. */
  overrides?(variant: V, caps: Caps): Record<string, number>;
}

export function defineKernel<V = void>(def: KernelDef<V>): KernelDef<V> {
  return def;
}

const structName = (binding: string) => binding.replace(/(^|_)(\w)/g, (_, __, c: string) => c.toUpperCase());

function weightDecl(name: string, dtype: WeightDtype, index: number): string {
  switch (dtype) {
    case 'f32':
      return `@group(0) @binding(${index}) var<storage, read> ${name}: array<vec4<f32>>;
fn ${name}_load8(i: u32) -> W8 { return W8(${name}[2u * i], ${name}[2u * i + 1u]); }
fn ${name}_at(e: u32) -> f32 { return ${name}[e / 4u][e % 4u]; }`;
    case 'f16':
      return `@group(0) @binding(${index}) var<storage, read> ${name}: array<vec4<u32>>;
fn ${name}_load8(i: u32) -> W8 { return unpack_h8(${name}[i]); }
fn ${name}_at(e: u32) -> f32 { return unpack2x16float(${name}[e / 8u][(e % 8u) / 2u])[e % 2u]; }`;
    default: {
      const never: never = dtype;
      throw new Error(`unknown weight dtype ${never as string}`);
    }
  }
}

/** WGSL declarations for a binding list, in binding order. */
export function declareBindings(bindings: Binding[]): string {
  return bindings
    .map((b, i) => {
      switch (b.kind) {
        case 'read':
          return `@group(0) @binding(${i}) var<storage, read> ${b.name}: array<${b.type}>;`;
        case 'write':
          return `@group(0) @binding(${i}) var<storage, read_write> ${b.name}: array<${b.type}>;`;
        case 'uniform': {
          const fields = Object.entries(b.schema).map(([f, t]) => `${f}: ${t}`);
          return `struct ${structName(b.name)} { ${fields.join(', ')} }
@group(0) @binding(${i}) var<uniform> ${b.name}: ${structName(b.name)};`;
        }
        case 'weight':
          return weightDecl(b.name, b.dtype, i);
      }
    })
    .join('\n');
}

/** The full WGSL of one kernel variant: prelude, declarations, variant helpers, then the shader file's body. */
export function kernelSource<V>(def: KernelDef<V>, variant: V, caps: Caps): string {
  const body = SHADERS[def.name];
  if (body === undefined) throw new Error(`no shader named ${def.name} (run npm run shaders)`);
  return [prelude(caps), declareBindings(def.bindings(variant)), def.helpers?.(variant, caps) ?? '', body].join('\n');
}

export function layoutEntries(bindings: Binding[]): GPUBindGroupLayoutEntry[] {
  return bindings.map((b, binding) => ({
    binding,
    visibility: GPUShaderStage.COMPUTE,
    buffer: { type: b.kind === 'uniform' ? 'uniform' : b.kind === 'write' ? 'storage' : 'read-only-storage' },
  }));
}

/** Bytes of a params struct: 4 per field, rounded up to 16 as uniform buffers require. */
export const paramsSize = (schema: ParamsSchema): number => Math.max(16, Math.ceil((Object.keys(schema).length * 4) / 16) * 16);

/** Packs params by field name in the schema's order (the order the WGSL struct was generated in). */
export function packParams<S extends ParamsSchema>(schema: S, values: ParamValues<S>): ArrayBuffer {
  const buffer = new ArrayBuffer(paramsSize(schema));
  const view = new DataView(buffer);
  Object.entries(schema).forEach(([field, type], i) => {
    const v = values[field];
    if (typeof v !== 'number' || !Number.isFinite(v)) throw new Error(`param ${field} is ${String(v)}`);
    if (type === 'f32') view.setFloat32(i * 4, v, true);
    else if (type === 'i32') view.setInt32(i * 4, v, true);
    else {
      if (!Number.isInteger(v) || v < 0 || v > 0xffffffff) throw new Error(`param ${field} = ${v} is not a u32`);
      view.setUint32(i * 4, v, true);
    }
  });
  return buffer;
}

/** Stable JSON (sorted keys): cache keys and labels derived from a variant, never concatenated by hand. */
export function stableJson(value: unknown): string {
  if (value === null || typeof value !== 'object') return JSON.stringify(value) ?? 'null';
  if (Array.isArray(value)) return `[${value.map(stableJson).join(',')}]`;
  const entries = Object.entries(value as Record<string, unknown>).sort(([a], [b]) => (a < b ? -1 : 1));
  return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${stableJson(v)}`).join(',')}}`;
}
