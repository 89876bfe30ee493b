/** qwen-webgpu: the host-agnostic engine. Hosts (src/hosts/*) add a GPU and file access. */
export { Engine, type EngineOptions, type RenderedPrompt } from './api/engine.ts';
export type * from './api/types.ts';
export { GpuContext, type AdapterSummary, type ContextOptions } from './gpu/context.ts';
export { AbortError, AdapterError, CapabilityError, ConfigError, ModelFormatError, QwenError, RequestError, SessionError } from './gpu/errors.ts';
export { loadModel, type LoadOptions, type LoadProgress, type Model } from './model/load.ts';
export { Session, type SessionOptions } from './runtime/session.ts';
export type { ExpertStats } from './runtime/expert_cache.ts';
export { GpuSampler, type SamplingOptions, type SampledToken } from './runtime/sampler.ts';
export { generateIds } from './runtime/generation.ts';
export { scoreIds } from './runtime/score.ts';
export { HttpSource, isUrl } from './storage/http.ts';
export type { WeightSource } from './storage/source.ts';
export { Tokenizer } from './text/tokenizer.ts';
export type { ChatMessage, ToolDefinition } from './text/chat_template.ts';
