import type { GpuContext } from '../gpu/context.ts';
import type { GpuTensor, WeightDtype } from '../gpu/tensor.ts';
import type { ExpertSource } from '../storage/expert_source.ts';
import type { Qwen35Config } from './config.ts';
import { type ModelWeights, assembleWeights, vectorBuffer } from './weights.ts';
import { type LayerRange, wholeModel } from './tensors.ts';

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
  /** The decoder layers loaded: all of them, or a pipeline stage's range (weights.layers[i] is layer first + i). */
  layers: LayerRange;
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

/** The types of the layers a model (or a pipeline stage) holds, in order: what its states are made for. */
export const heldLayerTypes = (model: Pick<Model, 'config' | 'layers'>) => model.config.layerTypes.slice(model.layers.first, model.layers.end);

/** Whether the model holds the embedding's lookup (the first stage) and the final norm and LM head (the last). */
export const takesIds = (model: Pick<Model, 'layers'>): boolean => model.layers.first === 0;
export const hasHead = (model: Pick<Model, 'config' | 'layers'>): boolean => model.layers.end === model.config.layerTypes.length;

/** Marks an expert that no slot holds: outside every part, so the expert kernels skip it. */
export const NOT_RESIDENT = 0xffffffff;

/** The Model around loaded (or synthetic) tensors: one expert slot table per MoE layer, identity while all experts are resident, empty when streamed. */
export function finishModel(
  ctx: GpuContext,
  info: Omit<Model, 'weights' | 'gpuBytes' | 'destroy' | 'layers'> & { layers?: LayerRange },
  tensors: Map<string, GpuTensor>,
  owned: GPUBuffer[],
): Model {
  const layers = info.layers ?? wholeModel(info.config);
  const weights = assembleWeights(
    info.config,
    tensors,
    (key) => {
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
    },
    (key, vectors) => {
      // Element after element: each vector's length, not its buffer's (rounded up) size.
      const bytes = vectors.map((v) => v.shape[v.shape.length - 1] * 4);
      const buffer = ctx.storage(
        key,
        bytes.reduce((a, b) => a + b, 0),
      );
      const offsets = bytes.map((_, i) => bytes.slice(0, i).reduce((a, b) => a + b, 0));
      ctx.copy(
        vectors.map((v, i) => ({ from: vectorBuffer(v), to: buffer, toOffset: offsets[i], size: bytes[i] })),
        key,
      );
      owned.push(buffer);
      return buffer;
    },
    layers,
  );
  const gpuBytes = [...tensors.values()].reduce((sum, t) => sum + t.parts.reduce((s, p) => s + p.buffer.size, 0), 0);
  return { ...info, layers, weights, gpuBytes, destroy: () => ctx.free(...owned) };
}
