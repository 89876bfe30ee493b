import { StageError } from '../../errors.ts';
import { type Frame, type FrameHeader, encodeFrame, readFrames } from './frame.ts';

/** A TCP connection as the pipeline stages use it: bytes out, byte chunks in, and who is at the other end. */
export interface ByteLink {
  /** "host:port" of the other end. */
  readonly remote: string;
  /** Resolves once the bytes are handed to the OS (Nagle off: small frames go at once). */
  write(bytes: Uint8Array): Promise<void>;
  /** The chunks as they arrive; ends when the other side closes; throws if the connection breaks. */
  readonly chunks: AsyncIterable<Uint8Array>;
  close(): void;
}

/**
 * Frames over a ByteLink: `next` takes the frames one by one (the handshake), then `serveCalls` matches each
 * reply to its call by `id` (the leader's side of a stage). A connection that closes, breaks, sends a frame the
 * protocol does not allow, or leaves a call unanswered past the timeout fails every call in flight with a
 * StageError naming the stage, and then every later call.
 */
export class FrameConnection {
  private readonly frames: AsyncGenerator<Frame>;
  private readonly calls = new Map<number, { resolve(frame: Frame): void; reject(error: StageError): void; timer: ReturnType<typeof setTimeout> }>();
  private nextId = 1;
  /** Why the connection is unusable, once it is. */
  failure?: StageError;

  constructor(
    private readonly link: ByteLink,
    /** Who is at the other end, for errors ("stage 2 (10.0.0.5:41234)"). */
    public name: string,
  ) {
    this.frames = readFrames(link.chunks, name);
  }

  get remote(): string {
    return this.link.remote;
  }

  /** The next frame, or a StageError if none comes within `timeoutMs` (default: no limit) or the connection ends first. */
  async next(timeoutMs?: number): Promise<Frame> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<never>((_, reject) => {
      if (timeoutMs !== undefined) timer = setTimeout(() => reject(new StageError(`sent nothing for ${timeoutMs / 1000} s`, this.name)), timeoutMs);
    });
    try {
      const got = await Promise.race([this.frames.next(), timeout]);
      if (got.done) throw new StageError('closed the connection', this.name);
      return got.value;
    } catch (error) {
      throw error instanceof StageError ? error : new StageError(`connection failed: ${(error as Error).message}`, this.name, { cause: error });
    } finally {
      clearTimeout(timer);
    }
  }

  send(header: FrameHeader, body?: Uint8Array): Promise<void> {
    return this.link.write(encodeFrame(header, body)).catch((error: Error) => {
      throw this.fail(new StageError(`connection failed: ${error.message}`, this.name, { cause: error }));
    });
  }

  /** From now on every frame that comes is the reply to the call with its `id`. */
  serveCalls(): void {
    void (async () => {
      try {
        for await (const frame of this.frames) {
          const id = frame.header.id;
          const call = typeof id === 'number' ? this.calls.get(id) : undefined;
          if (!call) throw new StageError(`sent a ${frame.header.type} frame that answers no call`, this.name);
          this.calls.delete(id as number);
          clearTimeout(call.timer);
          if (frame.header.type === 'error') call.reject(new StageError(String(frame.header.message), this.name));
          else call.resolve(frame);
        }
        this.fail(new StageError('closed the connection', this.name));
      } catch (error) {
        this.fail(error instanceof StageError ? error : new StageError(`connection failed: ${(error as Error).message}`, this.name, { cause: error }));
      }
    })();
  }

  /** Sends `header` (with a fresh id) and `body`; resolves with the reply, or rejects when the stage fails or does not answer in time. */
  call(header: FrameHeader, body: Uint8Array | undefined, timeoutMs: number): Promise<Frame> {
    if (this.failure) return Promise.reject(this.failure);
    const id = this.nextId++;
    const reply = new Promise<Frame>((resolve, reject) => {
      const timer = setTimeout(() => this.fail(new StageError(`did not answer a ${header.type} within ${timeoutMs / 1000} s`, this.name)), timeoutMs);
      this.calls.set(id, { resolve, reject, timer });
    });
    this.send({ ...header, id }, body).catch(() => {});
    return reply;
  }

  /** Marks the connection failed (once), fails every call in flight and closes it. */
  fail(error: StageError): StageError {
    if (this.failure) return this.failure;
    this.failure = error;
    for (const call of this.calls.values()) {
      clearTimeout(call.timer);
      call.reject(error);
    }
    this.calls.clear();
    this.link.close();
    return error;
  }

  close(): void {
    this.fail(new StageError('connection closed by this side', this.name));
  }
}
