import { ModelFormatError } from '../errors.ts';
import type { GgufScalar, GgufValue } from './gguf_header.ts';

/** Typed access to a GGUF file's metadata: a missing or mistyped key is a ModelFormatError naming the file and key. */
export class GgufMetadata {
  constructor(
    readonly file: string,
    private readonly values: Map<string, GgufValue>,
  ) {}

  has(key: string): boolean {
    return this.values.has(key);
  }

  private fail(key: string, message: string): never {
    throw new ModelFormatError(`metadata key ${key}: ${message}`, this.file);
  }

  private get(key: string, why: string): GgufValue {
    const value = this.values.get(key);
    if (value === undefined) this.fail(key, `missing (${why})`);
    return value;
  }

  string(key: string, why = 'required'): string {
    const value = this.get(key, why);
    if (typeof value !== 'string') this.fail(key, `expected a string, got ${describe(value)}`);
    return value;
  }

  optionalString(key: string): string | undefined {
    return this.values.has(key) ? this.string(key) : undefined;
  }

  /** An integer of any GGUF integer type, at least `min`. */
  int(key: string, why = 'required', min = 1): number {
    const value = this.get(key, why);
    if (typeof value !== 'number' || !Number.isSafeInteger(value)) this.fail(key, `expected an integer, got ${describe(value)}`);
    if (value < min) this.fail(key, `${value} is less than ${min}`);
    return value;
  }

  optionalInt(key: string, min = 0): number | undefined {
    return this.values.has(key) ? this.int(key, 'required', min) : undefined;
  }

  /** A finite number (f32, f64, or an integer). */
  number(key: string, why = 'required'): number {
    const value = this.get(key, why);
    if (typeof value !== 'number' || !Number.isFinite(value)) this.fail(key, `expected a finite number, got ${describe(value)}`);
    return value;
  }

  optionalNumber(key: string): number | undefined {
    return this.values.has(key) ? this.number(key) : undefined;
  }

  optionalBool(key: string): boolean | undefined {
    if (!this.values.has(key)) return undefined;
    const value = this.values.get(key);
    if (typeof value !== 'boolean') this.fail(key, `expected true or false, got ${describe(value!)}`);
    return value;
  }

  /** An integer, or a per-layer array of integers (llama.cpp accepts either for some keys). */
  intOrArray(key: string, why = 'required'): number | number[] {
    const value = this.get(key, why);
    if (!Array.isArray(value)) return this.int(key, why);
    value.forEach((v, i) => {
      if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) this.fail(key, `entry ${i} is ${describe(v)}, not a non-negative integer`);
    });
    return value as number[];
  }

  stringArray(key: string, why = 'required'): string[] {
    const value = this.get(key, why);
    if (!Array.isArray(value)) this.fail(key, `expected an array of strings, got ${describe(value)}`);
    value.forEach((v, i) => {
      if (typeof v !== 'string') this.fail(key, `entry ${i} is ${describe(v)}, not a string`);
    });
    return value as string[];
  }

  optionalIntArray(key: string): number[] | undefined {
    if (!this.values.has(key)) return undefined;
    const value = this.values.get(key)!;
    if (!Array.isArray(value)) this.fail(key, `expected an array of integers, got ${describe(value)}`);
    value.forEach((v, i) => {
      if (typeof v !== 'number' || !Number.isSafeInteger(v)) this.fail(key, `entry ${i} is ${describe(v)}, not an integer`);
    });
    return value as number[];
  }
}

function describe(value: GgufValue | GgufScalar): string {
  if (Array.isArray(value)) return `an array of ${value.length}`;
  if (typeof value === 'string') return JSON.stringify(value.length > 40 ? `${value.slice(0, 40)}…` : value);
  return `${typeof value} ${String(value)}`;
}
