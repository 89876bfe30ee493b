// The demo page over the browser client: pick a model (a URL, or one the engine keeps in this browser),
// load it with progress, chat with streamed replies (thinking folded away), and watch the expert cache.
import { type ChatCompletionChunkWithStats, type GenerateStats, type LoadProgress, createEngine } from '../src/hosts/browser/index.ts';
import type { ChatMessage } from '../src/text/chat_template.ts';

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;
const modelInput = $<HTMLInputElement>('model');
const loadButton = $<HTMLButtonElement>('load');
const status = $<HTMLDivElement>('status');
const progress = $<HTMLProgressElement>('progress');
const messagesEl = $<HTMLDivElement>('messages');
const promptInput = $<HTMLTextAreaElement>('prompt');
const sendButton = $<HTMLButtonElement>('send');
const stopButton = $<HTMLButtonElement>('stop');

/** Set by vite.config.ts: true in the production build, whose service worker keeps the page for offline use. */
declare const __OFFLINE_SHELL__: boolean;

const engine = await createEngine();

/** Models the engine keeps in this browser, where the engine has such a store (feature-detected). */
interface CachedModel {
  id: string;
  name?: string;
  bytes?: number;
  url?: string;
}
const models = (engine as unknown as { models?: { list(): Promise<CachedModel[]>; delete(id: string): Promise<void> } }).models;

async function showCached(): Promise<void> {
  if (!models) return;
  const list = await models.list().catch(() => []);
  $('cached-row').hidden = false;
  const select = $<HTMLSelectElement>('cached');
  select.replaceChildren(new Option(list.length ? 'choose…' : 'none yet', ''));
  for (const m of list) {
    const option = new Option(`${m.name ?? m.id}${m.bytes ? ` (${mb(m.bytes)})` : ''}`, m.id);
    option.dataset.url = m.url ?? m.id;
    select.add(option);
  }
}
$<HTMLSelectElement>('cached').onchange = (e) => {
  const option = (e.target as HTMLSelectElement).selectedOptions[0];
  if (option?.value) modelInput.value = option.dataset.url ?? option.value;
};
$<HTMLButtonElement>('delete-cached').onclick = async () => {
  const select = $<HTMLSelectElement>('cached');
  if (!models || !select.value) return;
  await models.delete(select.value).catch((e: Error) => (status.textContent = `delete failed: ${e.message}`));
  await showCached();
};

let loadController: AbortController | undefined;
async function load(model: string): Promise<void> {
  loadController?.abort();
  const controller = (loadController = new AbortController());
  sendButton.disabled = true;
  status.textContent = `loading ${model}…`;
  progress.value = 0;
  const t0 = performance.now();
  try {
    const dtype = $<HTMLSelectElement>('dtype').value || undefined;
    const expertMb = $<HTMLInputElement>('expert-mb').value;
    const r = await engine.load({
      model,
      signal: controller.signal,
      dtype: dtype as 'f32' | 'f16' | 'int4' | undefined,
      expertCacheBytes: expertMb === '' ? undefined : Math.round(Number(expertMb) * 2 ** 20),
      // Where the engine has a store, the box decides; unticked, the model is read over HTTP each time.
      ...(models ? { store: $<HTMLInputElement>('store').checked } : {}),
      onProgress: (p: LoadProgress) => {
        progress.value = p.totalBytes ? p.loadedBytes / p.totalBytes : 0;
        const seconds = (performance.now() - t0) / 1000;
        const rate = seconds > 0 ? p.loadedBytes / seconds : 0;
        const left = rate > 0 && p.totalBytes ? (p.totalBytes - p.loadedBytes) / rate : undefined;
        status.textContent = `${mb(p.loadedBytes)} of ${mb(p.totalBytes)}${rate ? `, ${mb(rate)}/s` : ''}${left !== undefined ? `, ${left.toFixed(0)} s left` : ''}`;
      },
    });
    progress.value = 1;
    status.textContent = `${r.name} (${r.dtype}, ${r.contextLength} tokens of context) on ${r.adapter.name} [${r.adapter.backend}], loaded in ${(r.loadMs / 1000).toFixed(1)} s`;
    sendButton.disabled = false;
    history.length = 0;
    messagesEl.replaceChildren();
    await showCached();
  } catch (error) {
    if (loadController === controller) status.textContent = `load failed: ${(error as Error).name}: ${(error as Error).message}`;
  }
}
loadButton.onclick = () => void load(modelInput.value.trim());

const history: ChatMessage[] = [];
let chatController: AbortController | undefined;

function bubble(role: 'user' | 'assistant', text = ''): HTMLDivElement {
  const div = document.createElement('div');
  div.className = `msg ${role}`;
  div.textContent = text;
  messagesEl.append(div);
  return div;
}

async function send(): Promise<void> {
  const content = promptInput.value.trim();
  if (!content || chatController) return;
  promptInput.value = '';
  bubble('user', content);
  history.push({ role: 'user', content });
  const reply = bubble('assistant');
  const thinking = document.createElement('details');
  thinking.innerHTML = '<summary>Thinking</summary>';
  const thought = thinking.appendChild(document.createElement('div'));
  const answer = reply.appendChild(document.createElement('span'));
  const figures = document.createElement('span');
  figures.className = 'stats muted';
  chatController = new AbortController();
  sendButton.disabled = true;
  stopButton.disabled = false;
  let text = '';
  let stats: GenerateStats | undefined;
  const t0 = performance.now();
  let tokens = 0;
  try {
    const stream = await engine.chat.completions.create({
      messages: history,
      stream: true,
      signal: chatController.signal,
      reasoning: $<HTMLInputElement>('thinking').checked ? 'on' : 'off',
      max_tokens: Number($<HTMLInputElement>('max-tokens').value) || 256,
    });
    for await (const chunk of stream as AsyncIterable<ChatCompletionChunkWithStats>) {
      const delta = chunk.choices[0]?.delta;
      if (delta?.reasoning_content) {
        if (!thinking.isConnected) reply.prepend(thinking);
        thought.textContent += delta.reasoning_content;
        tokens++;
      }
      if (delta?.content) {
        text += delta.content;
        answer.textContent = text;
        tokens++;
      }
      if (chunk.stats) stats = chunk.stats;
      messagesEl.scrollTop = messagesEl.scrollHeight;
    }
    figures.textContent = stats
      ? `${stats.generatedTokens} tokens · ${stats.decodeTokensPerSecond.toFixed(1)} tokens/s · prompt ${stats.prefillTokensPerSecond.toFixed(1)} tokens/s`
      : '';
  } catch (error) {
    const e = error as Error;
    // Stopped: the speed of what came so far, measured here (pieces of text, roughly tokens).
    figures.textContent =
      e.name === 'AbortError' ? `stopped · about ${(tokens / ((performance.now() - t0) / 1000)).toFixed(1)} tokens/s` : `${e.name}: ${e.message}`;
  } finally {
    reply.append(figures);
    history.push({ role: 'assistant', content: text });
    chatController = undefined;
    sendButton.disabled = false;
    stopButton.disabled = true;
  }
  if (stats) showExperts(stats);
}
sendButton.onclick = () => void send();
promptInput.onkeydown = (e) => {
  if (e.key === 'Enter' && !e.shiftKey && !sendButton.disabled) {
    e.preventDefault();
    void send();
  }
};
stopButton.onclick = () => chatController?.abort();

/** The expert-cache panel: figures, and a heatmap of expert use ([layer][expert] counts) when experts stream. */
function showExperts(stats: GenerateStats): void {
  if (stats.expertCacheHitRate === undefined) return;
  $('experts-section').hidden = false;
  $('expert-figures').textContent =
    `hit rate ${(stats.expertCacheHitRate * 100).toFixed(1)}% · ${mb(stats.expertBytesStreamed ?? 0)} streamed · ` +
    `${(stats.expertStallMsPerToken ?? 0).toFixed(2)} ms stall per token` +
    (stats.expertUsage ? '' : ' (every expert is on the GPU)');
  const canvas = $<HTMLCanvasElement>('heatmap');
  const usage = stats.expertUsage;
  canvas.hidden = !usage;
  if (!usage?.length) return;
  const experts = usage[0].length;
  canvas.width = experts;
  canvas.height = usage.length;
  canvas.style.height = `${Math.max(usage.length * 10, 40)}px`;
  const g = canvas.getContext('2d')!;
  const image = g.createImageData(experts, usage.length);
  usage.forEach((row, layer) => {
    const max = Math.max(1, ...row);
    row.forEach((count, expert) => {
      const shade = 255 - Math.round((count / max) * 200);
      const i = (layer * experts + expert) * 4;
      image.data.set([shade, shade, 255, 255], i);
    });
  });
  g.putImageData(image, 0, 0);
}

function mb(bytes: number): string {
  return `${(bytes / 2 ** 20).toFixed(1)} MB`;
}

/** The production build keeps its own files for offline use (public/sw.js); without it the page still works online. */
async function keepForOffline(): Promise<void> {
  if (!__OFFLINE_SHELL__ || !('serviceWorker' in navigator)) return;
  try {
    await navigator.serviceWorker.register('./sw.js');
    await navigator.serviceWorker.ready;
    $('offline').hidden = false;
  } catch (error) {
    // Served over plain HTTP from another host, or with service workers off: online only.
    console.warn(`the page will not open offline: ${(error as Error).message}`);
  }
}

void keepForOffline();
await showCached();
const preset = new URLSearchParams(location.search).get('model');
if (preset) {
  modelInput.value = preset;
  void load(preset);
}
