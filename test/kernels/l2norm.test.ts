import { it } from 'vitest';
import { l2norm } from '../../src/kernels/l2norm.ts';
import { l2norm as reference } from '../../src/reference/l2norm.ts';
import { actTolerance, describeOnAdapters, readAct, roundAct, uploadAct } from '../helpers/gpu.ts';
import { randn } from '../helpers/random.ts';
import { expectClose } from '../helpers/compare.ts';

describeOnAdapters(
  'l2norm',
  (ctx) => {
    // The q and k heads of the conv output (rows of 2*nk*dk + nv*dv): the v columns must stay untouched.
    const cases = [
      { tokens: 3, nk: 2, nv: 4, dim: 128 },
      { tokens: 1, nk: 1, nv: 2, dim: 128 },
      { tokens: 4, nk: 3, nv: 3, dim: 100 },
      { tokens: 2, nk: 2, nv: 2, dim: 37 },
    ];
    for (const { tokens, nk, nv, dim } of cases) {
      it(`tokens=${tokens} q/k heads=${2 * nk} dim=${dim}`, async () => {
        const c = ctx();
        const tokenStride = 2 * nk * dim + nv * dim;
        const raw = randn(tokens * tokenStride, tokens * 13 + dim, 3);
        // One head nearly zero: the 1e-6 inside the root matters there.
        raw.fill(1e-4, 0, dim);
        const x = roundAct(c, raw);
        const buf = uploadAct(c, x);
        const a = { tokens, heads: 2 * nk, dim, tokenStride, scaledHeads: nk, scale: 1 / Math.sqrt(dim) };
        c.run([await l2norm(c, { x: buf, ...a })]);
        expectClose(await readAct(c, buf, x.length), reference(x, a), ...actTolerance(c, 1e-6, 1e-5));
      });
    }
  },
  { act16: true },
);
