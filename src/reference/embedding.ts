import { ContractError } from '../errors.ts';

/** out[t*H + c] = table[ids[t]*H + c] (nn.Embedding); table is [V, H] row-major. */
export function embedding(table: Float32Array, cols: number, ids: ArrayLike<number>): Float32Array {
  const out = new Float32Array(ids.length * cols);
  for (let t = 0; t < ids.length; t++) {
    const id = ids[t];
    if (!Number.isInteger(id) || id < 0 || (id + 1) * cols > table.length) throw new ContractError(`id ${id} is not a row`, 'embedding reference');
    out.set(table.subarray(id * cols, (id + 1) * cols), t * cols);
  }
  return out;
}
