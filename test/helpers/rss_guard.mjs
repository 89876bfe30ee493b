// Preloaded into a CLI process by test/helpers/cli.ts runBounded (node --import): exits 99 the moment the
// process's resident memory passes QWEN_RSS_LIMIT_MB, so a test sees a runaway allocation as a failure
// instead of a machine out of memory.
const limit = Number(process.env.QWEN_RSS_LIMIT_MB) * 1024 * 1024;
if (limit > 0) {
  const check = () => {
    const rss = process.memoryUsage.rss();
    if (rss > limit) {
      process.stderr.write(`rss guard: ${Math.round(rss / 1048576)} MiB is more than QWEN_RSS_LIMIT_MB=${process.env.QWEN_RSS_LIMIT_MB}\n`);
      process.exit(99);
    }
  };
  setInterval(check, 20).unref();
}
