import { StageError } from '../../errors.ts';

/**
 * What pipeline stages send each other over a byte stream (TCP): length-prefixed frames, each a small JSON header
 * (what the frame is) and a binary body (hidden-state rows, a sampler's result):
 *   u32 LE  bytes that follow (header length field + header + body)
 *   u32 LE  header bytes
 *   header  UTF-8 JSON, an object with `type`
 *   body    the rest
 */
/** A frame's header: what it is (`type`) and its fields. */
export type FrameHeader = { type: string } & Record<string, unknown>;

export interface Frame<H extends FrameHeader = FrameHeader> {
  header: H;
  body: Uint8Array;
}

/** The most a frame may hold: a prefill chunk of hidden rows at the widest hidden size, with room to spare. */
export const MAX_FRAME_BYTES = 1 << 30;

const encoder = new TextEncoder();
const decoder = new TextDecoder();

export function encodeFrame(header: FrameHeader, body: Uint8Array = new Uint8Array(0)): Uint8Array {
  const head = encoder.encode(JSON.stringify(header));
  const out = new Uint8Array(8 + head.length + body.length);
  const view = new DataView(out.buffer);
  view.setUint32(0, 4 + head.length + body.length, true);
  view.setUint32(4, head.length, true);
  out.set(head, 8);
  out.set(body, 8 + head.length);
  return out;
}

/**
 * Frames from a stream of byte chunks, as they complete. A stream that ends inside a frame, a length past
 * MAX_FRAME_BYTES or a header that is not a JSON object with a `type` is a StageError naming `peer`.
 */
export async function* readFrames(chunks: AsyncIterable<Uint8Array>, peer: string): AsyncGenerator<Frame> {
  const pending: Uint8Array[] = [];
  let pendingBytes = 0;
  const take = (n: number): Uint8Array => {
    const out = new Uint8Array(n);
    let at = 0;
    while (at < n) {
      const first = pending[0];
      const used = Math.min(first.length, n - at);
      out.set(first.subarray(0, used), at);
      at += used;
      if (used === first.length) pending.shift();
      else pending[0] = first.subarray(used);
    }
    pendingBytes -= n;
    return out;
  };
  let need = 0;
  for await (const chunk of chunks) {
    pending.push(chunk);
    pendingBytes += chunk.length;
    for (;;) {
      if (need === 0) {
        if (pendingBytes < 4) break;
        need = new DataView(take(4).buffer).getUint32(0, true);
        if (need < 4 || need > MAX_FRAME_BYTES) throw new StageError(`sent a frame of ${need} bytes (4..${MAX_FRAME_BYTES} allowed)`, peer);
      }
      if (pendingBytes < need) break;
      const bytes = take(need);
      need = 0;
      yield parseFrame(bytes, peer);
    }
  }
  if (need > 0 || pendingBytes > 0) throw new StageError('closed the connection inside a frame', peer);
}

function parseFrame(bytes: Uint8Array, peer: string): Frame {
  const headBytes = new DataView(bytes.buffer, bytes.byteOffset).getUint32(0, true);
  if (headBytes > bytes.length - 4) throw new StageError(`sent a frame whose header (${headBytes} bytes) overruns it`, peer);
  let header: unknown;
  try {
    header = JSON.parse(decoder.decode(bytes.subarray(4, 4 + headBytes)));
  } catch {
    throw new StageError(`sent a frame header that is not JSON`, peer);
  }
  if (typeof header !== 'object' || header === null || typeof (header as { type?: unknown }).type !== 'string') {
    throw new StageError(`sent a frame header without a "type"`, peer);
  }
  return { header: header as Frame['header'], body: bytes.subarray(4 + headBytes) };
}
