// The in-page side of test/browser/engine.test.ts: drives dist/browser/index.js as a user's page would and
// exposes steps on window.harness for the Node side (page.evaluate). Plain JS: served as it is.
import { AbortError, createEngine } from '/dist/index.js';

const logEl = document.getElementById('log');
const ticksEl = document.getElementById('ticks');
const log = (line) => {
  logEl.textContent += `${line}\n`;
};

// Main-thread liveness: a 10 ms interval and requestAnimationFrame keep counting while the worker computes.
const clock = { ticks: 0, frames: 0, last: performance.now(), maxGap: 0 };
setInterval(() => {
  const now = performance.now();
  clock.maxGap = Math.max(clock.maxGap, now - clock.last);
  clock.last = now;
  clock.ticks++;
  ticksEl.textContent = `main-thread ticks: ${clock.ticks}, frames: ${clock.frames}`;
}, 10);
const frame = () => {
  clock.frames++;
  requestAnimationFrame(frame);
};
requestAnimationFrame(frame);

/** Runs `body` and reports how the main thread fared meanwhile. */
async function timed(body) {
  const t0 = performance.now();
  const before = { ticks: clock.ticks, frames: clock.frames };
  clock.maxGap = 0;
  clock.last = t0;
  const value = await body();
  const ms = performance.now() - t0;
  return { value, ms, ticks: clock.ticks - before.ticks, frames: clock.frames - before.frames, maxGapMs: clock.maxGap };
}

let engine;

window.harness = {
  async start() {
    engine = await createEngine();
    log('worker started');
    return true;
  },
  async load(model, options = {}) {
    let calls = 0;
    let last;
    const r = await engine.load({
      model,
      dtype: 'f32',
      contextLength: 512,
      ...options,
      onProgress: (p) => {
        calls++;
        last = p;
      },
    });
    log(`loaded ${r.name} (${r.dtype}) on ${r.adapter.name} [${r.adapter.backend}] in ${r.loadMs.toFixed(0)} ms`);
    return { ...r, progressCalls: calls, lastProgress: last };
  },
  async generate(request) {
    const r = await timed(() => engine.generate(request));
    const { stats } = r.value;
    log(`generate: ${r.value.ids.join(',')}`);
    log(
      `  prefill ${stats.prefillTokensPerSecond.toFixed(1)} tok/s, decode ${stats.decodeTokensPerSecond.toFixed(1)} tok/s; ` +
        `main thread: ${r.ticks} ticks, ${r.frames} frames, longest gap ${r.maxGapMs.toFixed(0)} ms in ${r.ms.toFixed(0)} ms`,
    );
    return r;
  },
  /** A streamed chat that the page aborts after `abortAfter` chunks. */
  async chatAborted(request, abortAfter) {
    const controller = new AbortController();
    const chunks = [];
    let error;
    const t0 = performance.now();
    try {
      const stream = await engine.chat.completions.create({ ...request, stream: true, signal: controller.signal });
      for await (const chunk of stream) {
        chunks.push(chunk);
        if (chunks.length === abortAfter) controller.abort();
      }
    } catch (e) {
      error = { name: e.name, message: e.message, isAbortError: e instanceof AbortError };
    }
    log(`chat: ${chunks.length} chunks, then ${error ? `${error.name}: ${error.message}` : 'the end'}`);
    return {
      chunks: chunks.length,
      error,
      ms: performance.now() - t0,
      finishReasons: chunks.map((c) => c.choices[0]?.finish_reason).filter((r) => r !== null && r !== undefined),
      text: chunks.map((c) => (c.choices[0]?.delta.content ?? '') + (c.choices[0]?.delta.reasoning_content ?? '')).join(''),
    };
  },
  /** A streamed chat to its end. */
  async chatStreamed(request) {
    const chunks = [];
    for await (const chunk of await engine.chat.completions.create({ ...request, stream: true })) chunks.push(chunk);
    return chunks;
  },
  /** The error a generate request fails with (undefined if it does not). */
  async generateError(request) {
    try {
      await engine.generate(request);
      return undefined;
    } catch (e) {
      log(`generate error: ${e.name}: ${e.message}`);
      return { name: e.name, message: e.message, field: e.field };
    }
  },
  async loadError(model) {
    try {
      await engine.load({ model, dtype: 'f32' });
      return undefined;
    } catch (e) {
      log(`load error: ${e.name}: ${e.message}`);
      return { name: e.name, message: e.message, file: e.file };
    }
  },
  async unload() {
    await engine.unload();
  },
  async terminate() {
    await engine.terminate();
    log('terminated');
  },
};
window.harnessReady = true;

// The model store (test/browser/store.test.ts): loads through IndexedDB with their progress, errors, list and delete.
Object.assign(window.harness, {
  /** load with store (the default); returns the result, the phases seen in order and the last progress of each. */
  async storeLoad(model, options = {}) {
    const phases = [];
    const last = {};
    let calls = 0;
    const r = await engine.load({
      model,
      contextLength: 512,
      ...options,
      onProgress: (p) => {
        calls++;
        if (phases.at(-1) !== p.phase) phases.push(p.phase);
        last[p.phase] = p;
        if (p.phase !== 'load') log(`${p.phase} ${p.file}: ${p.loadedBytes}/${p.totalBytes} bytes, ${Math.round(p.bytesPerSecond ?? 0)} B/s`);
      },
    });
    log(`stored-load ${r.name} (${r.dtype}) in ${r.loadMs.toFixed(0)} ms; phases ${phases.join(' → ')}`);
    return { ...r, phases, last, progressCalls: calls };
  },
  /** The error a stored load fails with (undefined if it does not). */
  async storeLoadError(model, options = {}) {
    try {
      await engine.load({ model, contextLength: 512, ...options });
      return undefined;
    } catch (e) {
      log(`stored-load error: ${e.name}: ${e.message}`);
      return { name: e.name, message: e.message, file: e.file, bytesNeeded: e.bytesNeeded, bytesAvailable: e.bytesAvailable };
    }
  },
  /** A stored load that the page aborts once `afterBytes` bytes are downloaded (or converted): the error it ends with. */
  async storeLoadAborted(model, afterBytes, options = {}) {
    const controller = new AbortController();
    try {
      await engine.load({
        model,
        contextLength: 512,
        ...options,
        signal: controller.signal,
        onProgress: (p) => {
          if ((p.phase === 'download' || p.phase === 'convert') && p.loadedBytes >= afterBytes) controller.abort();
        },
      });
      return undefined;
    } catch (e) {
      log(`stored-load aborted: ${e.name}: ${e.message}`);
      return { name: e.name, message: e.message, isAbortError: e instanceof AbortError };
    }
  },
  async listModels() {
    const models = await engine.models.list();
    for (const m of models) log(`stored: ${m.id} ${m.bytes} bytes ${m.complete ? 'complete' : 'incomplete'} ${m.date}`);
    return models;
  },
  async deleteModel(id) {
    const deleted = await engine.models.delete(id);
    log(`deleted ${id}: ${deleted}`);
    return deleted;
  },
  /** Records of model `id` in IndexedDB, read directly (the worker created the database and its store). */
  async storeRecordCount(id) {
    const db = await new Promise((resolve, reject) => {
      const open = indexedDB.open('qwen-webgpu');
      open.onsuccess = () => resolve(open.result);
      open.onerror = () => reject(open.error);
    });
    try {
      const keys = await new Promise((resolve, reject) => {
        const request = db.transaction('models', 'readonly').objectStore('models').getAllKeys();
        request.onsuccess = () => resolve(request.result);
        request.onerror = () => reject(request.error);
      });
      return keys.filter((k) => k[1] === id).length;
    } finally {
      db.close();
    }
  },
});
