import { describe, expect, it } from 'vitest';
import { Metrics } from '../../src/serve/metrics.ts';

const gauges = { running: 1, waiting: 2, maxBatch: 4, batchSize: 1, stateBytesUsed: 25, stateBytesTotal: 100 };

/** The value of one sample line (`name{...} value`). */
const sample = (text: string, name: string) => {
  const line = text.split('\n').find((l) => l.startsWith(`${name}{`)) ?? '';
  return Number(line.slice(line.lastIndexOf(' ') + 1));
};

describe('Metrics', () => {
  it('renders the engine gauges and counters under vLLM names, with HELP and TYPE', () => {
    const m = new Metrics('tiny "model"', () => 0);
    m.token();
    m.firstToken(0.03);
    m.success(7, 'stop', 0.4);
    const text = m.render(gauges);
    expect(text).toContain('# TYPE vllm:num_requests_running gauge');
    expect(text).toContain('vllm:request_success_total{model_name="tiny \\"model\\"",finished_reason="stop"} 1');
    expect(sample(text, 'vllm:num_requests_waiting')).toBe(2);
    expect(sample(text, 'vllm:kv_cache_usage_perc')).toBe(0.25);
    expect(sample(text, 'vllm:prompt_tokens_total')).toBe(7);
    expect(text).toContain('vllm:time_to_first_token_seconds_bucket{model_name="tiny \\"model\\"",le="0.04"} 1');
  });

  it('adds the expert cache counters when the experts are streamed, stall time in seconds', () => {
    const m = new Metrics('m', () => 0);
    expect(m.render(gauges)).not.toContain('qwen_expert');
    const text = m.render({ ...gauges, experts: { slots: 64, hits: 900, misses: 100, bytesStreamed: 100 * 4096, stallMs: 2500 } });
    expect(text).toContain('# TYPE qwen_expert_cache_hits_total counter');
    expect(sample(text, 'qwen_expert_cache_slots')).toBe(64);
    expect(sample(text, 'qwen_expert_cache_hits_total')).toBe(900);
    expect(sample(text, 'qwen_expert_cache_misses_total')).toBe(100);
    expect(sample(text, 'qwen_expert_streamed_bytes_total')).toBe(409_600);
    expect(sample(text, 'qwen_expert_stall_seconds_total')).toBe(2.5);
  });

  it('counts tokens/s over the last 10 s only, however long nobody scrapes', () => {
    let now = 0;
    const m = new Metrics('m', () => now);
    // 100,000 tokens over 100 s (1,000/s), then 20 tokens in the last second.
    for (let i = 0; i < 100_000; i++, now += 1) m.token();
    for (let i = 0; i < 20; i++) m.token();
    expect(sample(m.render(gauges), 'qwen_generation_tokens_per_second')).toBe((10_000 + 20) / 10);
    now += 20_000;
    expect(sample(m.render(gauges), 'qwen_generation_tokens_per_second')).toBe(0);
    expect(sample(m.render(gauges), 'vllm:generation_tokens_total')).toBe(100_020);
  });
});
