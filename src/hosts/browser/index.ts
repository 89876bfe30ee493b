/**
 * qwen-webgpu in the browser: `createEngine()` starts the engine in a module Web Worker and returns an
 * object with the engine's API (load, generate, chat.completions, completions). Built by `npm run build`
 * into dist/browser/index.js, with worker.js beside it.
 */
export { createEngine, type BrowserEngine, type BrowserGenerateRequest, type BrowserLoadRequest, type CreateEngineOptions } from './client.ts';
export type {
  ChatCompletionChunkWithStats,
  ChatCompletionWithStats,
  GenerateRequest,
  GenerateResult,
  GenerateStats,
  LoadProgress,
  LoadRequest,
  LoadResult,
  StoredModel,
} from './protocol.ts';
export type * from '../../api/types.ts';
export type { AdapterSummary } from '../../gpu/context.ts';
export * from '../../api/errors.ts';
