/** Pearson's chi-square test, for the statistical tests of sampling. */

// The survival function is Q(dof / 2, x / 2), the regularised upper incomplete gamma.

function logGamma(x: number): number {
  // Lanczos (g = 7, n = 9).
  const c = [
    0.99999999999980993, 676.5203681218851, -1259.1392167224028, 771.32342877765313, -176.61502916214059, 12.507343278686905, -0.13857109526572012,
    9.9843695780195716e-6, 1.5056327351493116e-7,
  ];
  if (x < 0.5) return Math.log(Math.PI / Math.sin(Math.PI * x)) - logGamma(1 - x);
  x -= 1;
  let a = c[0];
  const t = x + 7.5;
  for (let i = 1; i < 9; i++) a += c[i] / (x + i);
  return 0.5 * Math.log(2 * Math.PI) + (x + 0.5) * Math.log(t) - t + Math.log(a);
}

function gammaQ(a: number, x: number): number {
  if (x <= 0) return 1;
  const front = Math.exp(-x + a * Math.log(x) - logGamma(a));
  if (x < a + 1) {
    // Series for P.
    let term = 1 / a;
    let sum = term;
    for (let n = 1; n < 1000 && Math.abs(term) > 1e-16 * Math.abs(sum); n++) {
      term *= x / (a + n);
      sum += term;
    }
    return 1 - front * sum;
  }
  // Continued fraction for Q (modified Lentz).
  let b = x + 1 - a;
  let c = 1e300;
  let d = 1 / b;
  let h = d;
  for (let i = 1; i < 1000; i++) {
    const an = -i * (i - a);
    b += 2;
    d = an * d + b;
    if (Math.abs(d) < 1e-300) d = 1e-300;
    c = b + an / c;
    if (Math.abs(c) < 1e-300) c = 1e-300;
    d = 1 / d;
    const delta = d * c;
    h *= delta;
    if (Math.abs(delta - 1) < 1e-15) break;
  }
  return front * h;
}

export const chiSquareSurvival = (stat: number, dof: number) => gammaQ(dof / 2, stat / 2);

/** Pearson's test of counts against probabilities; bins with expected < 5 are merged with their neighbours. */
export function chiSquare(observed: ArrayLike<number>, probs: ArrayLike<number>, draws: number): { stat: number; dof: number; p: number } {
  const bins: { o: number; e: number }[] = [];
  let o = 0;
  let e = 0;
  for (let i = 0; i < probs.length; i++) {
    if (probs[i] === 0) continue;
    o += observed[i];
    e += probs[i] * draws;
    if (e >= 5) {
      bins.push({ o, e });
      o = 0;
      e = 0;
    }
  }
  if (e > 0) {
    if (bins.length) {
      bins[bins.length - 1].o += o;
      bins[bins.length - 1].e += e;
    } else bins.push({ o, e });
  }
  const stat = bins.reduce((s, b) => s + (b.o - b.e) ** 2 / b.e, 0);
  const dof = bins.length - 1;
  return { stat, dof, p: dof > 0 ? chiSquareSurvival(stat, dof) : 1 };
}
