import type { Caps } from '../gpu/caps.ts';
import { CapabilityError } from '../errors.ts';

/** Workgroup counts for n workgroups: 1-D until the per-dimension limit, then 2-D (kernels use flat_id). */
export function grid(n: number, caps: Caps): [number, number] {
  const max = caps.maxWorkgroupsPerDim;
  if (n <= max) return [n, 1];
  const y = Math.ceil(n / max);
  if (y > max) throw new CapabilityError(`${n} workgroups do not fit a ${max} x ${max} grid`, 'maxComputeWorkgroupsPerDimension');
  return [Math.ceil(n / y), y];
}
