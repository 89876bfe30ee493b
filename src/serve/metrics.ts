import type { EngineGauges } from '../api/engine.ts';

/**
 * The server's Prometheus metrics, named as vLLM names them where it has one (so dashboards built for vLLM read
 * them), rendered in the text exposition format.
 */

// vLLM's buckets, so histograms from both servers line up.
const TTFT_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80, 160, 640, 2560];
const E2E_BUCKETS = [0.3, 0.5, 0.8, 1, 1.5, 2, 2.5, 5, 10, 15, 20, 30, 40, 50, 60, 120, 240, 480, 960, 1920, 7680];
/** Generation tokens/s is averaged over this many recent seconds. */
const RATE_WINDOW_S = 10;

class Histogram {
  private readonly counts: number[];
  private sum = 0;
  private count = 0;

  constructor(private readonly bounds: readonly number[]) {
    this.counts = bounds.map(() => 0);
  }

  observe(value: number): void {
    this.sum += value;
    this.count++;
    this.bounds.forEach((bound, i) => {
      if (value <= bound) this.counts[i]++;
    });
  }

  lines(name: string, labels: string): string[] {
    const sep = labels ? ',' : '';
    return [
      ...this.bounds.map((bound, i) => `${name}_bucket{${labels}${sep}le="${bound}"} ${this.counts[i]}`),
      `${name}_bucket{${labels}${sep}le="+Inf"} ${this.count}`,
      `${name}_sum{${labels}} ${this.sum}`,
      `${name}_count{${labels}} ${this.count}`,
    ];
  }
}

export class Metrics {
  private promptTokens = 0;
  private generationTokens = 0;
  private readonly successes = new Map<string, number>();
  private readonly ttft = new Histogram(TTFT_BUCKETS);
  private readonly e2e = new Histogram(E2E_BUCKETS);
  /** When each recent generated token came (ms), oldest first: the tokens/s gauge. */
  private recentTokens: number[] = [];

  constructor(
    private readonly modelName: string,
    private readonly now: () => number = () => performance.now(),
  ) {}

  /** One generated token (the first of a request also gives its time to first token). */
  token(): void {
    this.generationTokens++;
    this.recentTokens.push(this.now());
    // Pruned here too, not only when scraped: a server nobody scrapes must not keep every token's time.
    if (this.recentTokens.length % 4096 === 0) this.prune();
  }

  firstToken(seconds: number): void {
    this.ttft.observe(seconds);
  }

  /** A request that finished (not aborted, not refused), with its prompt size and finish reason. */
  success(promptTokens: number, finishReason: string, seconds: number): void {
    this.promptTokens += promptTokens;
    this.successes.set(finishReason, (this.successes.get(finishReason) ?? 0) + 1);
    this.e2e.observe(seconds);
  }

  /** Drops the token times older than the rate window. */
  private prune(): void {
    const since = this.now() - RATE_WINDOW_S * 1000;
    const keep = this.recentTokens.findIndex((t) => t >= since);
    this.recentTokens = keep < 0 ? [] : this.recentTokens.slice(keep);
  }

  private tokensPerSecond(): number {
    this.prune();
    return this.recentTokens.length / RATE_WINDOW_S;
  }

  /** The exposition text, with the engine's gauges as they are now. */
  render(gauges: EngineGauges): string {
    const label = `model_name="${this.modelName.replace(/["\\\n]/g, (ch) => (ch === '\n' ? '\\n' : `\\${ch}`))}"`;
    const out: string[] = [];
    const metric = (name: string, type: string, help: string, samples: string[]) => out.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`, ...samples);
    const one = (name: string, type: string, help: string, value: number) => metric(name, type, help, [`${name}{${label}} ${value}`]);
    one('vllm:num_requests_running', 'gauge', 'Requests decoding now.', gauges.running);
    const spec = gauges.speculation;
    if (spec) {
      one('vllm:spec_decode_num_drafts_total', 'counter', 'Speculative verification passes (each verifies a set of drafts).', spec.passes);
      one('vllm:spec_decode_num_draft_tokens_total', 'counter', 'Tokens drafted by the MTP block.', spec.drafted);
      one('vllm:spec_decode_num_accepted_tokens_total', 'counter', 'Drafted tokens the model accepted.', spec.accepted);
    }
    one('vllm:num_requests_waiting', 'gauge', 'Requests waiting for a free sequence.', gauges.waiting);
    one(
      'vllm:kv_cache_usage_perc',
      'gauge',
      'Share of the KV cache and recurrent state memory in use (1 = full).',
      gauges.stateBytesTotal > 0 ? gauges.stateBytesUsed / gauges.stateBytesTotal : 0,
    );
    one('vllm:prompt_tokens_total', 'counter', 'Prompt tokens of finished requests.', this.promptTokens);
    one('vllm:generation_tokens_total', 'counter', 'Tokens generated.', this.generationTokens);
    const reasons = [...this.successes].map(([reason, n]) => `vllm:request_success_total{${label},finished_reason="${reason}"} ${n}`);
    metric('vllm:request_success_total', 'counter', 'Requests that finished, by finish reason.', reasons);
    metric(
      'vllm:time_to_first_token_seconds',
      'histogram',
      'Seconds from a request arriving to its first generated token.',
      this.ttft.lines('vllm:time_to_first_token_seconds', label),
    );
    metric(
      'vllm:e2e_request_latency_seconds',
      'histogram',
      'Seconds from a request arriving to its end.',
      this.e2e.lines('vllm:e2e_request_latency_seconds', label),
    );
    const experts = gauges.experts;
    if (experts) {
      one('qwen_expert_cache_slots', 'gauge', 'Experts each MoE layer keeps on the GPU; the others are streamed in as routing asks.', experts.slots);
      one('qwen_expert_cache_hits_total', 'counter', 'Routed experts found on the GPU (per layer and forward call).', experts.hits);
      one('qwen_expert_cache_misses_total', 'counter', 'Routed experts streamed in (per layer and forward call).', experts.misses);
      one('qwen_expert_streamed_bytes_total', 'counter', 'Bytes of experts uploaded to the GPU.', experts.bytesStreamed);
      one('qwen_expert_stall_seconds_total', 'counter', 'Seconds spent waiting for expert reads and uploads.', experts.stallMs / 1000);
    }
    one('qwen_batch_size', 'gauge', 'Sequences in the last decode step.', gauges.batchSize);
    one('qwen_max_batch', 'gauge', 'Sequences that may decode together.', gauges.maxBatch);
    one('qwen_generation_tokens_per_second', 'gauge', `Tokens generated per second over the last ${RATE_WINDOW_S} s.`, this.tokensPerSecond());
    return `${out.join('\n')}\n`;
  }
}
