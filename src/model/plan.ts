import type { WeightDtype } from '../gpu/tensor.ts';
import { ModelFormatError } from '../errors.ts';
import type { Checkpoint, SourceTensor } from '../formats/checkpoint.ts';
import { type WeightSource, readJson } from '../formats/source.ts';
import { readTokenizerFiles } from '../formats/tokenizer_files.ts';
import { type Qwen35Config, parseConfig } from './config.ts';
import { checkCounts, checkLayerCount, countTensors } from './counts.ts';
import type { VocabInfo } from './model.ts';
import { type LayerRange, type Naming, type TensorSpec, inLayerRange, mtpTensors, textModelTensors } from './tensors.ts';
import { ConfigError } from '../errors.ts';

/** Everything a load or a conversion decides before touching the GPU; every check is done here. */
export interface CheckpointPlan {
  rawConfig: Record<string, unknown>;
  config: Qwen35Config;
  vocab: VocabInfo;
  specs: TensorSpec[];
  unusedTensors: string[];
  /** Bytes the sources hold (progress). */
  sourceBytes: number;
}

/**
 * `mtp`: plan the multi-token-prediction block too (convert keeps it in the packed model; a load takes it only
 * when asked, for drafting).
 */
export async function planCheckpoint(checkpoint: Checkpoint, options: { mtp?: boolean; vocab?: VocabInfo; layers?: LayerRange } = {}): Promise<CheckpointPlan> {
  const rawConfig = (await readJson(checkpoint.files, 'config.json')) as Record<string, unknown> & {
    text_config?: { eos_token_id?: unknown };
    eos_token_id?: unknown;
  };
  const packed = checkpoint.packed;
  // The config's counts are checked against the tensor index before anything is built from them.
  const counts = countTensors(packed ? packed.tensors : checkpoint.tensors);
  checkLayerCount(rawConfig, counts);
  const config = parseConfig(rawConfig);
  const has = (name: string) => (packed ? packed.tensors.has(name) : checkpoint.tensors.has(name));
  const wantMtp = (options.mtp ?? false) && config.mtpLayers > 0 && has(packed ? 'mtp.fc' : 'mtp.fc.weight');
  checkCounts(rawConfig, config, counts, wantMtp);
  const vocab = await vocabInfo(checkpoint.files, config.vocabSize, options.vocab, rawConfig.text_config?.eos_token_id ?? rawConfig.eos_token_id);
  const naming = packed ? { prefix: '', fusedExperts: true } : detectNaming(checkpoint.tensors, config, checkpoint.location);
  const range = options.layers;
  if (range) checkLayerRange(range, config);
  // A pipeline stage plans (and so reads) only its own tensors; what it leaves is other stages', not unused. The MTP
  // block drafts on the last stage, which then holds the embedding too (the block embeds the tokens it drafts from).
  const drafts = (key: string) => wantMtp && range!.end === config.layerTypes.length && (key === 'embed' || key.startsWith('mtp.'));
  const specs = [...textModelTensors(config, naming), ...(wantMtp ? mtpTensors(config, naming) : [])].filter(
    (spec) => !range || inLayerRange(spec.key, range, config) || drafts(spec.key),
  );
  const partial = range !== undefined && (range.first > 0 || range.end < config.layerTypes.length);
  if (packed) {
    const unusedTensors = partial ? [] : [...packed.tensors.keys()].filter((k) => !specs.some((s) => s.key === k) && !(k.startsWith('mtp.') && !wantMtp));
    const sourceBytes = specs.reduce((sum, s) => sum + packed.tensors.get(s.key)!.itemBytes * s.shape[0], 0);
    return { rawConfig, config, vocab, specs, unusedTensors, sourceBytes };
  }
  checkSources(specs, checkpoint.tensors, checkpoint.location);
  const used = new Set(specs.flatMap((s) => s.sources.map((p) => p.source)));
  const unusedTensors = partial
    ? []
    : [...checkpoint.tensors.keys()].filter((n) => !used.has(n) && !n.startsWith('model.visual.') && !(n.startsWith('mtp.') && !wantMtp));
  const sourceBytes = specs.reduce((sum, spec) => sum + spec.sources.reduce((s, p) => s + checkpoint.tensors.get(p.source)!.bytes, 0), 0);
  return { rawConfig, config, vocab, specs, unusedTensors, sourceBytes };
}

function checkLayerRange(range: LayerRange, config: Qwen35Config): void {
  const L = config.layerTypes.length;
  if (!Number.isInteger(range.first) || !Number.isInteger(range.end) || range.first < 0 || range.end > L || range.first >= range.end) {
    throw new ConfigError(`layer range ${range.first}:${range.end} is not within the model's ${L} layers (0:${L})`, 'num_hidden_layers');
  }
}

function detectNaming(tensors: Map<string, SourceTensor>, config: Qwen35Config, location: string): Naming {
  const prefix = ['model.language_model.', 'model.'].find((p) => tensors.has(`${p}embed_tokens.weight`));
  if (!prefix) throw new ModelFormatError(`no model.language_model.embed_tokens.weight (or model.embed_tokens.weight) in ${location}`);
  let fusedExperts = true;
  if (config.moe) {
    const first = config.layerTypes.length > 0 ? `${prefix}layers.0.mlp.experts` : '';
    fusedExperts = tensors.has(`${first}.gate_up_proj`);
    if (!fusedExperts && !tensors.has(`${first}.0.gate_proj.weight`)) {
      throw new ModelFormatError(`neither ${first}.gate_up_proj nor ${first}.0.gate_proj.weight found: no MoE experts in ${location}`);
    }
  }
  return { prefix, fusedExperts };
}

/** Every source tensor must exist with the shape the config implies and a dtype we convert from. */
function checkSources(specs: TensorSpec[], tensors: Map<string, SourceTensor>, location: string): void {
  for (const spec of specs) {
    for (const p of spec.sources) {
      const entry = tensors.get(p.source);
      if (!entry) throw new ModelFormatError(`missing from the checkpoint in ${location} (the config implies shape [${p.shape}])`, undefined, p.source);
      if (entry.shape.length !== p.shape.length || entry.shape.some((d, i) => d !== p.shape[i])) {
        throw new ModelFormatError(`shape [${entry.shape}] does not match [${p.shape}] implied by config.json`, entry.file, p.source);
      }
      if (!entry.dtype) throw new ModelFormatError(`dtype ${entry.fileDtype} is not supported (${entry.readableTypes.join(', ')})`, entry.file, p.source);
    }
  }
}

/**
 * How one GPU tensor is stored when the model's matrices are `dtype`: vectors (norms, conv taps, gate
 * parameters) in f32; under INT4 an untied embedding and the MoE routers stay f16 (a quantised router logit
 * moves an expert choice; both are small next to the layers). A tied embedding is the LM head, the largest
 * matrix of a small model, and is quantised with it.
 */
export function tensorDtype(spec: TensorSpec, dtype: WeightDtype, config: Qwen35Config): WeightDtype {
  if (spec.kind === 'vector') return 'f32';
  if (dtype === 'q4' && ((spec.key === 'embed' && !config.tieWordEmbeddings) || spec.key.endsWith('.router'))) return 'f16';
  return dtype;
}

/** From the tokenizer when the checkpoint has one; else every row is a token and config.json names the eos. */
async function vocabInfo(source: WeightSource, vocabSize: number, given: VocabInfo | undefined, configEos: unknown): Promise<VocabInfo> {
  const files = given === undefined && (await source.has('tokenizer.json')) ? await readTokenizerFiles(source) : undefined;
  const vocab = given ?? (files && { tokenizerSize: files.size, eosTokenIds: files.eosTokenIds });
  if (!vocab) {
    const eos = (Array.isArray(configEos) ? configEos : [configEos]).filter((id): id is number => Number.isInteger(id) && id >= 0 && id < vocabSize);
    return { tokenizerSize: vocabSize, eosTokenIds: eos };
  }
  if (vocab.tokenizerSize > vocabSize)
    throw new ModelFormatError(`has token id ${vocab.tokenizerSize - 1}, beyond the model's vocab_size ${vocabSize}`, 'tokenizer.json');
  return vocab;
}
