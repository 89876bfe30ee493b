/** The middle of a set of timings (the upper middle for an even count). */
export const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

/** x to `digits` decimal places, for printed figures. */
export const roundTo = (x: number, digits: number): number => Math.round(x * 10 ** digits) / 10 ** digits;
