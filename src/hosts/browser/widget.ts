/**
 * `<qwen-chat>`: a chat box over the browser engine, for any web page, from one module script tag:
 *
 *   <script type="module" src="/qwen/qwen-chat.js"></script>
 *   <qwen-chat model="https://host/Qwen3.5-0.8B/" max-tokens="256" reasoning="off"></qwen-chat>
 *
 * `npm run build` emits it as dist/browser/qwen-chat.js beside index.js and worker.js. Everything it draws
 * lives in its shadow root with its own styles, so the page's CSS does not reach in and its CSS does not
 * leak out. The only global it adds is the element's registration (a second copy of the module keeps the
 * first registration). Each element runs its own engine worker.
 *
 * Attributes (and properties): model (URL; changing it loads it), expert-cache-mb (expertCacheMb),
 * system-prompt (systemPrompt), max-tokens (maxTokens), reasoning ('on' | 'off').
 * Events, bubbling out of the shadow root: qwen-progress {loadedBytes, totalBytes, tensor},
 * qwen-ready (the LoadResult), qwen-message {role, content} for each message sent and each finished reply,
 * qwen-error {error}.
 */
import { QwenError } from '../../errors.ts';
import type { ChatMessage } from '../../text/chat_template.ts';
import { type BrowserEngine, createEngine } from './index.ts';
import type { ChatCompletionChunkWithStats, LoadProgress } from './index.ts';

const STYLE = `
:host { display: block; contain: content; }
:host([hidden]) { display: none; }
.root {
  all: initial; display: flex; flex-direction: column; box-sizing: border-box; height: 100%; min-height: 16rem;
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d2330; background: #fff;
  border: 1px solid #d5d9e2; border-radius: 10px; overflow: hidden;
}
.root * { box-sizing: border-box; font: inherit; }
.status { padding: 6px 10px; font-size: 12px; color: #5b6477; background: #f5f6f9; border-bottom: 1px solid #e4e7ee; }
progress { display: block; width: 100%; height: 4px; appearance: none; border: 0; background: #e4e7ee; }
progress::-webkit-progress-bar { background: #e4e7ee; }
progress::-webkit-progress-value { background: #3d6df2; }
.messages { flex: 1; overflow-y: auto; padding: 10px; display: flex; flex-direction: column; gap: 8px; }
.msg { max-width: 85%; padding: 7px 10px; border-radius: 10px; white-space: pre-wrap; word-break: break-word; }
.msg.user { align-self: flex-end; background: #3d6df2; color: #fff; }
.msg.assistant { align-self: flex-start; background: #eef0f5; }
.msg.error { align-self: stretch; background: #fdecec; color: #9b1c1c; }
details { font-size: 12px; color: #5b6477; margin-bottom: 4px; }
summary { cursor: pointer; }
form { display: flex; gap: 6px; padding: 8px; border-top: 1px solid #e4e7ee; margin: 0; }
textarea { flex: 1; resize: none; padding: 6px 8px; border: 1px solid #cfd4de; border-radius: 6px; background: #fff; color: inherit; }
button { padding: 6px 12px; border: 0; border-radius: 6px; background: #3d6df2; color: #fff; cursor: pointer; }
button[disabled] { opacity: .45; cursor: default; }
button.stop { background: #6b7385; }
`;

const ATTRIBUTES = ['model', 'expert-cache-mb', 'system-prompt', 'max-tokens', 'reasoning'] as const;

export class QwenChatElement extends HTMLElement {
  static readonly observedAttributes = ATTRIBUTES;

  private readonly ui: {
    status: HTMLDivElement;
    progress: HTMLProgressElement;
    messages: HTMLDivElement;
    input: HTMLTextAreaElement;
    send: HTMLButtonElement;
    stop: HTMLButtonElement;
  };
  private engine: Promise<BrowserEngine> | undefined;
  private loaded: string | undefined;
  private loading: AbortController | undefined;
  private replying: AbortController | undefined;
  private readonly history: ChatMessage[] = [];

  constructor() {
    super();
    const root = this.attachShadow({ mode: 'open' });
    root.innerHTML = `<style>${STYLE}</style>
      <div class="root" part="root">
        <div class="status" part="status">No model.</div>
        <progress value="0" max="1"></progress>
        <div class="messages" part="messages" role="log" aria-live="polite"></div>
        <form part="form">
          <textarea rows="2" placeholder="Message" aria-label="Message"></textarea>
          <button type="submit" class="send" disabled>Send</button>
          <button type="button" class="stop" disabled>Stop</button>
        </form>
      </div>`;
    const q = <T extends Element>(selector: string) => root.querySelector(selector) as T;
    this.ui = {
      status: q('.status'),
      progress: q('progress'),
      messages: q('.messages'),
      input: q('textarea'),
      send: q('button.send'),
      stop: q('button.stop'),
    };
    q<HTMLFormElement>('form').addEventListener('submit', (event) => {
      event.preventDefault();
      void this.send(this.ui.input.value);
    });
    this.ui.input.addEventListener('keydown', (event) => {
      if (event.key === 'Enter' && !event.shiftKey) {
        event.preventDefault();
        void this.send(this.ui.input.value);
      }
    });
    this.ui.stop.addEventListener('click', () => this.stop());
  }

  get model(): string {
    return this.getAttribute('model') ?? '';
  }
  set model(value: string) {
    this.setAttribute('model', value);
  }
  get expertCacheMb(): number | undefined {
    return this.number('expert-cache-mb');
  }
  set expertCacheMb(value: number | undefined) {
    this.setOrRemove('expert-cache-mb', value);
  }
  get systemPrompt(): string {
    return this.getAttribute('system-prompt') ?? '';
  }
  set systemPrompt(value: string) {
    this.setAttribute('system-prompt', value);
  }
  get maxTokens(): number {
    return this.number('max-tokens') ?? 512;
  }
  set maxTokens(value: number) {
    this.setAttribute('max-tokens', String(value));
  }
  get reasoning(): 'on' | 'off' | undefined {
    const r = this.getAttribute('reasoning');
    return r === 'on' || r === 'off' ? r : undefined;
  }
  set reasoning(value: 'on' | 'off' | undefined) {
    this.setOrRemove('reasoning', value);
  }
  /** The conversation so far (system prompt excluded). */
  get messages(): readonly ChatMessage[] {
    return this.history;
  }

  connectedCallback(): void {
    if (this.model && this.model !== this.loaded && !this.loading) void this.load();
  }

  disconnectedCallback(): void {
    // Moving the element fires disconnected then connected: only a removal that lasts ends the worker.
    queueMicrotask(() => {
      if (this.isConnected || !this.engine) return;
      this.loading?.abort();
      this.replying?.abort();
      const engine = this.engine;
      this.engine = undefined;
      this.loaded = undefined;
      void engine.then((e) => e.terminate()).catch(() => undefined);
    });
  }

  attributeChangedCallback(name: string, old: string | null, value: string | null): void {
    if ((name === 'model' || name === 'expert-cache-mb') && old !== value && this.isConnected && this.model) {
      this.loading?.abort();
      void this.load();
    }
  }

  /** Loads `model` (the attribute), replacing any model loaded before. Resolves when it is ready. */
  async load(): Promise<void> {
    const model = this.model;
    const controller = new AbortController();
    this.loading = controller;
    this.ui.send.disabled = true;
    this.ui.progress.value = 0;
    this.ui.status.textContent = `Loading ${model}…`;
    try {
      const engine = await (this.engine ??= createEngine());
      const mb = this.expertCacheMb;
      const result = await engine.load({
        model,
        signal: controller.signal,
        expertCacheBytes: mb === undefined ? undefined : Math.round(mb * 2 ** 20),
        onProgress: (p: LoadProgress) => {
          if (this.loading !== controller) return;
          this.ui.progress.value = p.totalBytes ? p.loadedBytes / p.totalBytes : 0;
          this.ui.status.textContent = `Loading ${model}: ${mib(p.loadedBytes)} of ${mib(p.totalBytes)}`;
          this.emit('qwen-progress', { loadedBytes: p.loadedBytes, totalBytes: p.totalBytes, tensor: p.tensor });
        },
      });
      if (this.loading !== controller) return;
      this.loaded = model;
      this.ui.progress.value = 1;
      this.ui.status.textContent = `${result.name} (${result.dtype}) ready`;
      this.ui.send.disabled = false;
      this.emit('qwen-ready', result);
    } catch (error) {
      if (this.loading !== controller) return;
      this.fail(error);
    } finally {
      if (this.loading === controller) this.loading = undefined;
    }
  }

  /** Sends a user message and streams the reply into the list; resolves with the reply's text. */
  async send(text: string): Promise<string | undefined> {
    const content = text.trim();
    if (!content || this.replying || !this.engine || this.loaded === undefined) return undefined;
    const engine = await this.engine;
    this.ui.input.value = '';
    this.add('user', content);
    this.history.push({ role: 'user', content });
    this.emit('qwen-message', { role: 'user', content });

    const bubble = this.add('assistant', '');
    const thinking = document.createElement('details');
    thinking.innerHTML = '<summary>Thinking</summary>';
    const thought = thinking.appendChild(document.createElement('div'));
    const answer = bubble.appendChild(document.createElement('span'));
    const controller = new AbortController();
    this.replying = controller;
    this.ui.send.disabled = true;
    this.ui.stop.disabled = false;
    let reply = '';
    try {
      const system = this.systemPrompt;
      const stream = await engine.chat.completions.create({
        messages: system ? [{ role: 'system', content: system }, ...this.history] : [...this.history],
        stream: true,
        signal: controller.signal,
        max_tokens: this.maxTokens,
        reasoning: this.reasoning,
      });
      for await (const chunk of stream as AsyncIterable<ChatCompletionChunkWithStats>) {
        const delta = chunk.choices[0]?.delta;
        if (delta?.reasoning_content) {
          if (!thinking.isConnected) bubble.prepend(thinking);
          thought.textContent += delta.reasoning_content;
        }
        if (delta?.content) {
          reply += delta.content;
          answer.textContent = reply;
        }
        if (chunk.stats) this.ui.status.textContent = `${chunk.stats.generatedTokens} tokens, ${chunk.stats.decodeTokensPerSecond.toFixed(1)} tokens/s`;
        this.ui.messages.scrollTop = this.ui.messages.scrollHeight;
      }
    } catch (error) {
      if ((error as Error).name !== 'AbortError') {
        this.fail(error);
        return undefined;
      }
      this.ui.status.textContent = 'Stopped.';
    } finally {
      this.replying = undefined;
      this.ui.send.disabled = this.loaded === undefined;
      this.ui.stop.disabled = true;
    }
    this.history.push({ role: 'assistant', content: reply });
    this.emit('qwen-message', { role: 'assistant', content: reply });
    return reply;
  }

  /** Stops the reply being generated (what came so far stays). */
  stop(): void {
    this.replying?.abort();
  }

  /** Forgets the conversation. */
  clear(): void {
    this.history.length = 0;
    this.ui.messages.replaceChildren();
  }

  private add(role: 'user' | 'assistant' | 'error', text: string): HTMLDivElement {
    const div = document.createElement('div');
    div.className = `msg ${role}`;
    div.setAttribute('part', `message ${role}`);
    div.textContent = text;
    this.ui.messages.append(div);
    this.ui.messages.scrollTop = this.ui.messages.scrollHeight;
    return div;
  }

  private fail(error: unknown): void {
    const e = error instanceof Error ? error : new QwenError(String(error));
    this.ui.status.textContent = `${e.name}: ${e.message}`;
    this.add('error', `${e.name}: ${e.message}`);
    this.emit('qwen-error', { error: e });
  }

  private emit(type: string, detail: unknown): void {
    this.dispatchEvent(new CustomEvent(type, { detail, bubbles: true, composed: true }));
  }

  private number(name: string): number | undefined {
    const v = this.getAttribute(name);
    if (v === null || v.trim() === '') return undefined;
    const n = Number(v);
    return Number.isFinite(n) && n >= 0 ? n : undefined;
  }

  private setOrRemove(name: string, value: unknown): void {
    if (value === undefined || value === null) this.removeAttribute(name);
    else this.setAttribute(name, String(value));
  }
}

function mib(bytes: number): string {
  return `${(bytes / 2 ** 20).toFixed(1)} MB`;
}

if (!customElements.get('qwen-chat')) customElements.define('qwen-chat', QwenChatElement);

declare global {
  interface HTMLElementTagNameMap {
    'qwen-chat': QwenChatElement;
  }
}
