import type { GpuContext } from '../gpu/context.ts';
import type { GpuTensor, WeightDtype } from '../gpu/tensor.ts';
import type { ExpertSource } from '../storage/expert_source.ts';
import type { Qwen35Config } from './config.ts';
import { type ModelWeights, assembleWeights } from './weights.ts';

/**
 * What the engine needs of the tokenizer: how many ids it can produce (rows past that are padding and are
 * never sampled) and the ids that end generation.
 */
export interface VocabInfo {
  tokenizerSize: number;
  eosTokenIds: number[];
}

export interface Model extends VocabInfo {
  config: Qwen35Config;
  weights: ModelWeights;
  dtype: WeightDtype;
  location: string;
  /** Checkpoint tensors the text model does not use (vision tower excluded), for a warning. */
  unusedTensors: string[];
  gpuBytes: number;
  /** Present when MoE experts are streamed: each main layer's expert tensors hold `slots` experts, not all. */
  experts?: ExpertStreaming;
  destroy(): void;
}

/** How a model with streamed experts holds them (the runtime's ExpertCache keeps their residency). */
export interface ExpertStreaming {
  source: ExpertSource;
  /** Expert slots per MoE layer of the main stack (topk ≤ slots < numExperts). */
  slots: number;
  /** Bytes of one expert of one layer: its gate_up and down items. */
  expertBytes: number;
}

/** Marks an expert that no slot holds: outside every part, so the expert kernels skip it. */
export const NOT_RESIDENT = 0xffffffff;

/** The Model around loaded (or synthetic) tensors: one expert slot table per MoE layer, identity while all experts are resident, empty when streamed. */
export function finishModel(
  ctx: GpuContext,
  info: Omit<Model, 'weights' | 'gpuBytes' | 'destroy'>,
  tensors: Map<string, GpuTensor>,
  owned: GPUBuffer[],
): Model {
  const weights = assembleWeights(info.config, tensors, (key) => {
    const n = info.config.moe!.numExperts;
    const buffer = ctx.storage(`${key} expert slots`, n * 4);
    // Streamed layers start with no expert resident; the runtime's ExpertCache fills slots as routing asks.
    const streamed = info.experts !== undefined && key.startsWith('layers.');
    ctx.write(
      buffer,
      0,
      Uint32Array.from({ length: n }, (_, e) => (streamed ? NOT_RESIDENT : e)),
    );
    owned.push(buffer);
    return buffer;
  });
  const gpuBytes = [...tensors.values()].reduce((sum, t) => sum + t.parts.reduce((s, p) => s + p.buffer.size, 0), 0);
  return { ...info, weights, gpuBytes, destroy: () => ctx.free(...owned) };
}
