import type { ActivationType, Caps } from './caps.ts';
import { prelude } from './wgsl.ts';
import type { WeightFormat } from './tensor.ts';
import { q4ItemWords } from '../numeric/q4.ts';
import { ContractError, InternalError } from '../errors.ts';

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
  | { kind: 'weight'; name: string; format: WeightFormat };

/** Read-only storage array of `type`: 'act' for activations and caches (f32 or f16, see ActivationType). */
export const read = (name: string, type = 'f32'): Binding => ({ kind: 'read', name, type });
/**
 * Element type of a buffer a kernel variant reads or writes: 'act' (the context's activation type) or 'f32'
 * (the residual stream, its norm, router logits and logits, f32 whatever the activations).
 */
export type ElementType = 'act' | 'f32';

/** The variant's element type: 'f32' folds into 'act' when activations are f32, so both share one pipeline. */
export function elementType(ctx: { activations: ActivationType }, what: string, value: ElementType | undefined, fail: (m: string) => never): ElementType {
  if (value !== undefined && value !== 'act' && value !== 'f32') fail(`${what} must be 'act' or 'f32', got ${String(value)}`);
  return value === 'f32' && ctx.activations !== 'f32' ? 'f32' : 'act';
}

export const elementBytes = (ctx: { activationBytes: number }, type: ElementType): number => (type === 'f32' ? 4 : ctx.activationBytes);

/** Read-write storage array. */
export const write = (name: string, type = 'f32'): Binding => ({ kind: 'write', name, type });
export const uniform = (name: string, schema: ParamsSchema): Binding => ({ kind: 'uniform', name, schema });
/**
 * A weight tensor part (`format`: see weightFormat). Generates `<name>_load8(i)` (logical elements 8i..8i+7 as
 * W8) and `<name>_at(e)` (one element); q4 adds the parts of a group of 32 (`<name>_words4`, `<name>_nib8`,
 * `<name>_scale`, `<name>_IS32`, `<name>_IW`) for kernels that load a group whole.
 */
export const weight = (name: string, format: WeightFormat): Binding => ({ kind: 'weight', name, format });

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
  /** The WGSL that follows the generated declarations: `shaders/<name>.wgsl` (src/kernels/define.ts finds it). */
  body: string;
}

const structName = (binding: string) => binding.replace(/(^|_)(\w)/g, (_, __, c: string) => c.toUpperCase());

function weightDecl(name: string, format: WeightFormat, index: number): string {
  switch (format.dtype) {
    case 'f32':
      return `@group(0) @binding(${index}) var<storage, read> ${name}: array<vec4<f32>>;
fn ${name}_load8(i: u32) -> W8 { return W8(${name}[2u * i], ${name}[2u * i + 1u]); }
fn ${name}_at(e: u32) -> f32 { return ${name}[e / 4u][e % 4u]; }`;
    case 'f16':
      return `@group(0) @binding(${index}) var<storage, read> ${name}: array<vec4<u32>>;
fn ${name}_load8(i: u32) -> W8 { return unpack_h8(${name}[i]); }
fn ${name}_at(e: u32) -> f32 { return unpack2x16float(${name}[e / 8u][(e % 8u) / 2u])[e % 2u]; }`;
    case 'q4':
      return q4Decl(name, format.itemStride, index);
    default: {
      const never: never = format;
      throw new InternalError(`unknown weight format ${JSON.stringify(never)}`);
    }
  }
}

/**
 * q4 (src/numeric/q4.ts): logical element e of the part is element e % IS of item e / IS, whose block is IW
 * words at item * IW: nibble words first, then the scale words. With IW a multiple of 4 every block, and so
 * every group's 4 nibble words, is 16-byte aligned and read as one vec4.
 */
function q4Decl(name: string, itemStride: number, index: number): string {
  if (!Number.isInteger(itemStride) || itemStride <= 0 || itemStride % 64 !== 0)
    throw new ContractError(`weight ${name}: itemStride ${itemStride} is not a positive multiple of 64`, 'q4');
  const iw = q4ItemWords(itemStride);
  const aligned = iw % 4 === 0;
  const n = name;
  return `@group(0) @binding(${index}) var<storage, read> ${n}: array<${aligned ? 'vec4<u32>' : 'u32'}>;
const ${n}_IS = ${itemStride}u;
const ${n}_IS8 = ${itemStride / 8}u;
const ${n}_IS32 = ${itemStride / 32}u;
const ${n}_IW = ${iw}u;
fn ${n}_word(i: u32) -> u32 { return ${aligned ? `${n}[i / 4u][i % 4u]` : `${n}[i]`}; }
fn ${n}_words4(i: u32) -> vec4<u32> { return ${aligned ? `${n}[i / 4u]` : `vec4<u32>(${n}[i], ${n}[i + 1u], ${n}[i + 2u], ${n}[i + 3u])`}; }
fn ${n}_scale(item: u32, g: u32) -> f32 { return unpack2x16float(${n}_word(item * ${n}_IW + ${n}_IS8 + g / 2u))[g % 2u]; }
// n - 8 for the 8 nibbles of a word: the nibble or-ed into the mantissa of 2^23 gives 2^23 + n exactly.
fn ${n}_nib8(v: u32) -> W8 {
  let m = vec4<u32>(15u);
  let b = vec4<u32>(0x4b000000u);
  let lo = bitcast<vec4<f32>>(((vec4<u32>(v) >> vec4<u32>(0u, 4u, 8u, 12u)) & m) | b);
  let hi = bitcast<vec4<f32>>(((vec4<u32>(v) >> vec4<u32>(16u, 20u, 24u, 28u)) & m) | b);
  return W8(lo - 8388616.0, hi - 8388616.0);
}
fn ${n}_load8(i: u32) -> W8 {
  let item = i / ${n}_IS8;
  let c = i - item * ${n}_IS8;
  let s = ${n}_scale(item, c / 4u);
  let d = ${n}_nib8(${n}_word(item * ${n}_IW + c));
  return W8(d.lo * s, d.hi * s);
}
fn ${n}_at(e: u32) -> f32 {
  let item = e / ${n}_IS;
  let r = e - item * ${n}_IS;
  let q = (${n}_word(item * ${n}_IW + r / 8u) >> (4u * (r % 8u))) & 15u;
  return (f32(q) - 8.0) * ${n}_scale(item, r / 32u);
}`;
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
          return weightDecl(b.name, b.format, i);
      }
    })
    .join('\n');
}

/** The full WGSL of one kernel variant: prelude, declarations, variant helpers, then the shader file's body. */
export function kernelSource<V>(def: KernelDef<V>, variant: V, caps: Caps, activations: ActivationType = 'f32'): string {
  return [prelude(caps, activations), declareBindings(def.bindings(variant)), def.helpers?.(variant, caps) ?? '', def.body].join('\n');
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
    if (typeof v !== 'number' || !Number.isFinite(v)) throw new ContractError(`param ${field} is ${String(v)}`, 'packParams');
    if (type === 'f32') view.setFloat32(i * 4, v, true);
    else if (type === 'i32') view.setInt32(i * 4, v, true);
    else {
      if (!Number.isInteger(v) || v < 0 || v > 0xffffffff) throw new ContractError(`param ${field} = ${v} is not a u32`, 'packParams');
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
