import { ConfigError } from '../errors.ts';
import type { Qwen35Config } from './config.ts';

/**
 * How many layers, MTP layers and experts a checkpoint's own tensors hold, from its tensor index (names and
 * shapes: Hugging Face names, or a packed model's GPU keys). config.json's counts are checked against these
 * before anything is built from them: a count no tensor backs (`num_hidden_layers: 5e7`,
 * `mtp_num_hidden_layers: 1000000`, `num_experts: 2e8`) would otherwise drive allocation before any tensor is
 * looked at.
 */
export interface TensorCounts {
  /** Distinct main-stack layer indices (`[model.[language_model.]]layers.N.`). */
  layers: number;
  /** Distinct MTP layer indices (`mtp.layers.N.`). */
  mtpLayers: number;
  /** Experts per layer: distinct per-expert indices, or the item count of a fused expert tensor (the largest). */
  experts: number;
}

const LAYER = /^(?:model\.language_model\.|model\.)?layers\.(\d+)\./;
const MTP_LAYER = /^mtp\.layers\.(\d+)\./;
const EXPERT = /\.mlp\.experts\.(\d+)\./;
const FUSED_EXPERTS = /\.mlp\.experts(?:\.gate_up_proj|\.down_proj|_gate_up|_down)$/;

export function countTensors(tensors: Iterable<[string, { shape: number[] }]>): TensorCounts {
  const layers = new Set<string>();
  const mtp = new Set<string>();
  const experts = new Set<string>();
  let fused = 0;
  for (const [name, t] of tensors) {
    const layer = LAYER.exec(name)?.[1];
    if (layer !== undefined) layers.add(layer);
    const mtpLayer = MTP_LAYER.exec(name)?.[1];
    if (mtpLayer !== undefined) mtp.add(mtpLayer);
    const expert = EXPERT.exec(name)?.[1];
    if (expert !== undefined) experts.add(expert);
    if (FUSED_EXPERTS.test(name) && t.shape.length === 3) fused = Math.max(fused, t.shape[0]);
  }
  return { layers: layers.size, mtpLayers: mtp.size, experts: Math.max(experts.size, fused) };
}

type Json = Record<string, unknown>;
const isObject = (v: unknown): v is Json => typeof v === 'object' && v !== null && !Array.isArray(v);

/**
 * num_hidden_layers against the layers the tensors hold, on the raw config (before parseConfig, which builds
 * one entry per layer when there is no layer_types list).
 */
export function checkLayerCount(raw: unknown, counts: TensorCounts, file = 'config.json'): void {
  if (!isObject(raw)) return; // parseConfig names what is wrong
  const nested = isObject(raw.text_config);
  const text = nested ? (raw.text_config as Json) : raw;
  const n = text.num_hidden_layers;
  if (typeof n === 'number' && n > counts.layers) {
    throw new ConfigError(
      `${n} layers, but the checkpoint's tensors hold ${counts.layers}`,
      nested ? 'text_config.num_hidden_layers' : 'num_hidden_layers',
      file,
    );
  }
}

/** Experts and (when the MTP block is loaded) MTP layers against the tensors, once the config is parsed. */
export function checkCounts(raw: unknown, config: Qwen35Config, counts: TensorCounts, withMtp: boolean, file = 'config.json'): void {
  const at = (field: string) => (isObject(raw) && isObject(raw.text_config) ? `text_config.${field}` : field);
  if (config.moe && config.moe.numExperts > counts.experts) {
    throw new ConfigError(`${config.moe.numExperts} experts, but the checkpoint's tensors hold ${counts.experts} per layer`, at('num_experts'), file);
  }
  if (withMtp && config.mtpLayers > counts.mtpLayers) {
    throw new ConfigError(`${config.mtpLayers} MTP layers, but the checkpoint's tensors hold ${counts.mtpLayers}`, at('mtp_num_hidden_layers'), file);
  }
}
