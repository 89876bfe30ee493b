/** The peer benchmark's table: pure formatting, so it can be tested and reused on saved JSONL. */

export interface Speed {
  prefill_tokens_per_s: number;
  decode_tokens_per_s: number;
}

export interface Row {
  variant: string;
  dtype: string;
  ours?: Speed & Record<string, unknown>;
  /** A peer's figures, or why there are none. */
  peers: Record<string, (Speed & Record<string, unknown>) | PeerError>;
}

/** skipped: not set up (no toolkit, no file); failed: it ran and broke; refused: it ran, but not on the device asked for. */
export interface PeerError {
  error: string;
  status: 'skipped' | 'failed' | 'refused';
}

export const PEER_TITLES: Record<string, string> = { vulkan: 'llama.cpp Vulkan', cuda: 'llama.cpp CUDA', cpu: 'llama.cpp CPU' };

const num = (x: number) => (x >= 100 ? x.toFixed(0) : x >= 10 ? x.toFixed(1) : x.toFixed(2));
const pair = (s: Speed | undefined) => (s ? `${num(s.prefill_tokens_per_s)} / ${num(s.decode_tokens_per_s)}` : '–');
const ratio = (a: number | undefined, b: number | undefined) => (a && b ? `${(a / b).toFixed(2)}×` : '–');
const isSpeed = (x: unknown): x is Speed => typeof x === 'object' && x !== null && 'decode_tokens_per_s' in x;

/** Markdown: variant | ours | each peer | ours / peer, prefill / decode tok/s, plus our per-step figures when given. */
export function formatTable(rows: Row[], peers: string[]): string {
  const extras = (['copy_gb_per_s', 'dispatches_per_step', 'host_ms_per_step'] as const).filter((k) => rows.some((r) => r.ours?.[k] !== undefined));
  const extraTitle: Record<string, string> = {
    copy_gb_per_s: 'ours copy GB/s',
    dispatches_per_step: 'ours dispatches/step',
    host_ms_per_step: 'ours host ms/step',
  };
  const head = ['variant', 'ours prefill / decode'];
  for (const p of peers) head.push(`${PEER_TITLES[p]} prefill / decode`, `ours ÷ ${PEER_TITLES[p]} prefill / decode`);
  head.push(...extras.map((k) => extraTitle[k]));
  const lines = [`| ${head.join(' | ')} |`, `|${head.map(() => '---').join('|')}|`];
  for (const r of rows) {
    const cells = [`${r.variant} ${r.dtype}`, pair(r.ours)];
    for (const p of peers) {
      const peer = r.peers[p];
      const s = isSpeed(peer) ? peer : undefined;
      cells.push(s ? pair(s) : peer ? (peer as PeerError).status : '–');
      cells.push(`${ratio(r.ours?.prefill_tokens_per_s, s?.prefill_tokens_per_s)} / ${ratio(r.ours?.decode_tokens_per_s, s?.decode_tokens_per_s)}`);
    }
    for (const k of extras) cells.push(r.ours?.[k] === undefined ? '–' : String(r.ours[k]));
    lines.push(`| ${cells.join(' | ')} |`);
  }
  return lines.join('\n');
}
