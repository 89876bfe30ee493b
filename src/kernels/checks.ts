import { ContractError } from '../errors.ts';

/** Largest value of a u32 param: counts and offsets that pass it cannot be handed to a kernel. */
export const U32_MAX = 0xffffffff;

/**
 * Argument checks of one kernel wrapper. Every message starts with the op's name, and names the argument,
 * its value and the bound it breaks, so that a failure deep in a layer plan says which call and why.
 */
export interface Checks {
  fail(message: string): never;
  /** An integer in [min, max]: by default a positive u32. */
  count(what: string, n: number, min?: number, max?: number): void;
  /** `count` for each entry of `values`. */
  counts(values: Readonly<Record<string, number>>, min?: number, max?: number): void;
  /** A non-negative u32 (an offset or a stride). */
  index(what: string, n: number): void;
  /** `buffer` holds `elements` elements of `elementBytes` bytes (default 4: f32 or u32). */
  fits(what: string, buffer: GPUBuffer, elements: number, elementBytes?: number): void;
  /** No two of the named buffers are one buffer. */
  distinct(buffers: Readonly<Record<string, GPUBuffer>>): void;
}

function describeRange(min: number, max: number): string {
  if (max === U32_MAX && min === 1) return 'a positive integer';
  if (max === U32_MAX && min === 0) return 'a non-negative integer';
  return `an integer in [${min}, ${max}]`;
}

const names = (list: string[]) => (list.length < 2 ? list.join('') : `${list.slice(0, -1).join(', ')} and ${list[list.length - 1]}`);

export function checks(op: string): Checks {
  const fail = (message: string): never => {
    throw new ContractError(message, op);
  };
  const count = (what: string, n: number, min = 1, max = U32_MAX) => {
    if (!Number.isInteger(n) || n < min || n > max) fail(`${what} = ${n} must be ${describeRange(min, max)}`);
  };
  return {
    fail,
    count,
    counts(values, min, max) {
      for (const [what, n] of Object.entries(values)) count(what, n, min, max);
    },
    index: (what, n) => count(what, n, 0),
    fits(what, buffer, elements, elementBytes = 4) {
      const bytes = elements * elementBytes;
      if (bytes > buffer.size) {
        fail(`${what} needs ${elements} elements (${bytes} bytes) but buffer ${buffer.label || '(unlabelled)'} has ${buffer.size} bytes`);
      }
    },
    distinct(buffers) {
      const entries = Object.entries(buffers);
      for (let i = 1; i < entries.length; i++) {
        const j = entries.findIndex(([, b]) => b === entries[i][1]);
        if (j < i) fail(`${names(entries.map(([what]) => what))} must be distinct buffers (${entries[i][0]} is ${entries[j][0]})`);
      }
    },
  };
}
