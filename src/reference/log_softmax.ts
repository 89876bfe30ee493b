/** y = x - max - log Σ exp(x - max) over each row of `cols`; f64 arithmetic. */
export function logSoftmax(x: Float32Array, cols: number): Float32Array {
  const y = new Float32Array(x.length);
  for (let base = 0; base < x.length; base += cols) {
    let max = -Infinity;
    for (let c = 0; c < cols; c++) max = Math.max(max, x[base + c]);
    let sum = 0;
    for (let c = 0; c < cols; c++) sum += Math.exp(x[base + c] - max);
    const shift = max + Math.log(sum);
    for (let c = 0; c < cols; c++) y[base + c] = x[base + c] - shift;
  }
  return y;
}
