/** qwen-webgpu: the host-agnostic engine. Hosts (src/hosts/*) add a GPU and file access. */
export { Engine, type EngineGauges, type EngineOptions, type RenderedPrompt } from './api/engine.ts';
export type * from './api/types.ts';
export { GpuContext, type AdapterSummary, type ContextOptions } from './gpu/context.ts';
export * from './api/errors.ts';
export { loadModel, type LoadOptions, type LoadProgress } from './model/load.ts';
export type { Model } from './model/model.ts';
export { Session, type SessionOptions } from './runtime/session.ts';
export type { ExpertStats } from './runtime/expert_cache.ts';
export { GpuSampler, type SamplingOptions, type SampledToken } from './runtime/sampler.ts';
export { generateIds } from './runtime/generation.ts';
export { scoreIds } from './runtime/score.ts';
export { DEFAULT_HTTP_RETRIES, DEFAULT_HTTP_TIMEOUT_MS, HttpSource, type HttpOptions, isUrl } from './storage/http.ts';
export { SMALL_FILE_LIMITS, smallFileLimit } from './formats/limits.ts';
export type { WeightSource } from './formats/source.ts';
export { Tokenizer } from './text/tokenizer.ts';
export type { ChatMessage, ToolDefinition } from './text/chat_template.ts';
