import { ContractError } from '../../errors.ts';
import { type WeightDtype, bytesPerElement } from '../../gpu/tensor.ts';
import { sha256Hex } from '../../formats/sha256.ts';
import type { Checkpoint } from '../../formats/checkpoint.ts';
import { stateBytes } from '../../model/activations.ts';
import type { CheckpointPlan } from '../../model/plan.ts';
import { tensorDtype } from '../../model/plan.ts';
import type { LayerRange } from '../../model/tensors.ts';

/**
 * The handshake of pipeline stages. A stage connects to stage 0 and says who it is (hello); stage 0 checks that it
 * runs the same model, revision and dtype and speaks the same protocol, and once every stage has said hello,
 * gives each its layer range (assign); the stage loads those layers and says so (ready). Anything else is refused
 * with the reason, and the stage exits.
 */
export const PROTOCOL_VERSION = 2;

/** What identifies a model across hosts (paths differ): config.json and the tensor index, hashed; and the dtype on the GPU. */
export interface ModelIdentity {
  /** For messages only: the folder or file name. */
  name: string;
  revision: string;
  dtype: WeightDtype;
}

export interface Hello {
  type: 'hello';
  protocol: number;
  stage: number;
  stages: number;
  model: ModelIdentity;
  /** Bytes of GPU memory this stage may fill (weights and states). */
  memoryBytes: number;
  /** The layer range the stage was told to take on its command line, if any: it must be the one it is assigned. */
  layers?: LayerRange;
  /** The longest prefill chunk its adapter binds (every stage runs the shortest of all). */
  prefillChunk: number;
  /** Its adapter's name, for the split stage 0 prints. */
  adapter: string;
}

export interface Assign {
  type: 'assign';
  layers: LayerRange;
  /** Tokens per sequence, sequences (slots) and prefill chunk: the same on every stage. */
  contextLength: number;
  slots: number;
  prefillChunk: number;
  /** Speculative decoding: drafts per pass (every stage verifies; the last drafts with the MTP block), or 0. */
  draftTokens?: number;
  /** The ids the last stage drafts from (EngineOptions.draftVocab; default DEFAULT_DRAFT_VOCAB). */
  draftVocab?: number;
}

/** The identity of a checkpoint as planned for the whole model (`plan` of planCheckpoint without a range). */
export function modelIdentity(checkpoint: Checkpoint, rawConfig: Record<string, unknown>, dtype: WeightDtype): ModelIdentity {
  const tensors = checkpoint.packed
    ? [...checkpoint.packed.tensors].map(([name, t]) => [name, t.dtype, t.itemBytes])
    : [...checkpoint.tensors.values()].map((t) => [t.name, t.fileDtype, t.shape.join('x')]);
  tensors.sort((a, b) => String(a[0]).localeCompare(String(b[0])));
  const bytes = new TextEncoder().encode(JSON.stringify({ config: rawConfig, tensors }));
  return { name: checkpoint.location.split('/').filter(Boolean).pop() ?? checkpoint.location, revision: sha256Hex(bytes).slice(0, 16), dtype };
}

/** Why stage 0 refuses `hello`, or undefined when it may join. */
export function refusal(hello: Hello, leader: ModelIdentity, stages: number, taken: ReadonlySet<number>): string | undefined {
  if (hello.protocol !== PROTOCOL_VERSION) return `speaks protocol ${hello.protocol}, stage 0 speaks ${PROTOCOL_VERSION} (run the same qwen-webgpu version)`;
  const m = hello.model;
  if (m.revision !== leader.revision) return `runs model ${m.name} (revision ${m.revision}), stage 0 runs ${leader.name} (revision ${leader.revision})`;
  if (m.dtype !== leader.dtype) return `holds ${m.dtype} weights, stage 0 ${leader.dtype} (give every stage the same --dtype)`;
  if (hello.stages !== stages) return `was started for ${hello.stages} stages, stage 0 runs ${stages}`;
  if (!Number.isInteger(hello.stage) || hello.stage < 1 || hello.stage >= stages)
    return `calls itself stage ${hello.stage}; stages 1..${stages - 1} connect to stage 0`;
  if (taken.has(hello.stage)) return `stage ${hello.stage} is already connected`;
  return undefined;
}

/**
 * GPU bytes each decoder layer takes (its weights as `dtype` stores them, and the KV cache or DeltaNet states of
 * `slots` sequences of `contextLength` tokens), and what the first and last stages hold besides (embedding; final
 * norm and LM head).
 */
export function layerCosts(plan: CheckpointPlan, dtype: WeightDtype, contextLength: number, slots: number, activationBytes: number, drafting = false) {
  const bytesOf = (key: string) =>
    plan.specs
      .filter((s) => s.key === key || s.key.startsWith(`${key}.`))
      .reduce((sum, s) => sum + s.shape.reduce((a, b) => a * b, 1) * bytesPerElement(tensorDtype(s, dtype, plan.config)), 0);
  const c = plan.config;
  const layers = c.layerTypes.map((_, i) => {
    const one = { config: c, layers: { first: i, end: i + 1 } };
    return bytesOf(`layers.${i}`) + slots * stateBytes(one, contextLength, activationBytes);
  });
  const embed = bytesOf('embed');
  // Drafting, the last stage also holds the MTP block with its KV cache per slot, and the embedding it drafts with.
  const mtpCache = slots * 2 * c.numKvHeads * contextLength * c.headDim * activationBytes;
  const drafter = drafting ? bytesOf('mtp') + mtpCache + (c.tieWordEmbeddings ? 0 : embed) : 0;
  return { layers, first: embed, last: bytesOf('norm') + (c.tieWordEmbeddings ? embed : bytesOf('lm_head')) + drafter };
}

/**
 * Contiguous layer ranges for stages with `budgets` bytes each, every stage at least one layer: the split whose
 * fullest stage (bytes held / budget) is least full, found by bisecting that fill and filling stages greedily.
 */
export function splitLayers(costs: { layers: number[]; first: number; last: number }, budgets: number[]): LayerRange[] {
  const L = costs.layers.length;
  const S = budgets.length;
  if (S > L) throw new ContractError(`${S} stages need at least ${S} layers; the model has ${L}`, 'splitLayers');
  const fixed = (s: number) => (s === 0 ? costs.first : 0) + (s === S - 1 ? costs.last : 0);
  const greedy = (fill: number): LayerRange[] | undefined => {
    const ranges: LayerRange[] = [];
    let layer = 0;
    for (let s = 0; s < S; s++) {
      const first = layer;
      const room = fill * budgets[s];
      // The last stage takes what is left; the others at least one layer, and leave one for each stage after them.
      const end = s === S - 1 ? L : L - (S - s - 1);
      let held = fixed(s) + costs.layers[layer++];
      while (layer < end && (s === S - 1 || held + costs.layers[layer] <= room)) held += costs.layers[layer++];
      if (held > room) return undefined;
      ranges.push({ first, end: layer });
    }
    return ranges;
  };
  let lo = 0;
  let hi = 1;
  while (!greedy(hi)) hi *= 2;
  for (let i = 0; i < 60; i++) {
    const mid = (lo + hi) / 2;
    if (greedy(mid)) hi = mid;
    else lo = mid;
  }
  return greedy(hi)!;
}
