/**
 * What speculative decoding with k drafted tokens would give, from measured costs (in decode steps): a verification
 * pass of k + 1 tokens costs `verifySteps`, each drafted token `draftSteps`. With each draft accepted with
 * probability `acceptance` (independently, given the ones before were), a pass yields on average
 * 1 + α + α² + … + α^k tokens (the target's own token after the accepted drafts included).
 */
export function projectSpeculation(acceptance: number, k: number, verifySteps: number, draftSteps: number) {
  let tokensPerPass = 0;
  for (let i = 0; i <= k; i++) tokensPerPass += acceptance ** i;
  const stepsPerPass = verifySteps + k * draftSteps;
  return { tokensPerPass, stepsPerPass, speedup: tokensPerPass / stepsPerPass };
}

/**
 * Published acceptance of Qwen3.5's own MTP head, for projections: mlx-lm pull request #990 (native MTP speculative
 * decoding for Qwen3.5) reports about 80.6% of single drafts accepted on Qwen3.5-27B at 4 bits, greedy.
 */
export const PUBLISHED_MTP_ACCEPTANCE = { rate: 0.806, source: 'mlx-lm PR #990, Qwen3.5-27B 4-bit, one draft, greedy' };
