import { describe, expect, it } from 'vitest';
import { checks } from '../../src/kernels/checks.ts';

// Only size and label are read, so plain objects stand in for buffers (no adapter needed).
const buffer = (size: number, label = 'b') => ({ size, label }) as GPUBuffer;

describe('checks', () => {
  const check = checks('op');

  it('counts: positive u32 by default, or a given range', () => {
    expect(() => check.count('n', 1)).not.toThrow();
    expect(() => check.count('n', 0xffffffff)).not.toThrow();
    expect(() => check.count('n', 0)).toThrow('op: n = 0 must be a positive integer');
    expect(() => check.count('n', 1.5)).toThrow('op: n = 1.5 must be a positive integer');
    expect(() => check.count('n', 2 ** 32)).toThrow(/n = 4294967296/);
    expect(() => check.count('k', 9, 2, 8)).toThrow('op: k = 9 must be an integer in [2, 8]');
    expect(() => check.index('off', 0)).not.toThrow();
    expect(() => check.index('off', -1)).toThrow('op: off = -1 must be a non-negative integer');
    expect(() => check.counts({ a: 1, b: 0 })).toThrow('op: b = 0 must be a positive integer');
    expect(() => check.counts({ a: 0 }, 0)).not.toThrow();
  });

  it('fits: names the argument, the need and the buffer', () => {
    expect(() => check.fits('x', buffer(64), 16)).not.toThrow();
    expect(() => check.fits('x', buffer(60, 'acts'), 16)).toThrow('op: x needs 16 elements (64 bytes) but buffer acts has 60 bytes');
    expect(() => check.fits('x', buffer(60, ''), 16)).toThrow(/buffer \(unlabelled\)/);
    expect(() => check.fits('tiles', buffer(32), 3, 16)).toThrow('op: tiles needs 3 elements (48 bytes) but buffer b has 32 bytes');
  });

  it('distinct: names the list and the pair that alias', () => {
    const [a, b, c] = [buffer(16), buffer(16), buffer(16)];
    expect(() => check.distinct({ x: a, y: b, z: c })).not.toThrow();
    expect(() => check.distinct({ x: a, y: b })).not.toThrow();
    expect(() => check.distinct({ x: a, y: a })).toThrow('op: x and y must be distinct buffers (y is x)');
    expect(() => check.distinct({ x: a, y: b, z: a })).toThrow('op: x, y and z must be distinct buffers (z is x)');
  });

  it('fail prefixes the op', () => {
    expect(() => check.fail('why')).toThrow('op: why');
  });
});
