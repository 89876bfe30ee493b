import { ModelFormatError } from '../errors.ts';
import type { WeightSource } from './source.ts';
import type { Checkpoint, SourceTensor } from './checkpoint.ts';
import { synthesizeConfig } from './gguf_config.ts';
import { SynthesizedFiles } from './gguf_files.ts';
import { readGgufHeader } from './gguf_header.ts';
import { GgufMetadata } from './gguf_metadata.ts';
import { mapGgufTensors } from './gguf_names.ts';
import { ggufSourceTensor } from './gguf_tensor.ts';
import { synthesizeGenerationConfig, synthesizeTokenizerConfig, synthesizeTokenizerJson } from './gguf_tokenizer.ts';

/**
 * A llama.cpp GGUF file of Qwen3.5 (arch qwen35 or qwen35moe) as a Checkpoint: its tensors under their
 * Hugging Face names and shapes with the converter's transforms undone (quantised types dequantised to f32
 * a few rows at a time), and config.json, tokenizer.json, tokenizer_config.json and generation_config.json
 * synthesised from its metadata. The header is read once; tensor data is read only when rows are asked for.
 */
export async function openGgufCheckpoint(source: WeightSource, file: string): Promise<Checkpoint> {
  const header = await readGgufHeader(source, file);
  const meta = new GgufMetadata(file, header.metadata);
  const infos = new Map(header.tensors.map((t) => [t.name, t]));
  const { json: config, layout } = synthesizeConfig(meta, infos);

  const tensors = new Map<string, SourceTensor>();
  for (const view of mapGgufTensors(header.tensors, layout)) {
    if (tensors.has(view.name)) throw new ModelFormatError(`two GGUF tensors map to this name (the second is ${view.info.name})`, file, view.name);
    tensors.set(view.name, ggufSourceTensor(source, file, view));
  }
  const location = `${source.location.replace(/\/$/, '')}/${file}`;
  const contextLength = config.max_position_embeddings as number;
  const files = new SynthesizedFiles(location, {
    'config.json': () => config,
    ...(meta.has('tokenizer.ggml.tokens')
      ? {
          'tokenizer.json': () => synthesizeTokenizerJson(meta),
          'tokenizer_config.json': () => synthesizeTokenizerConfig(meta, contextLength),
          'generation_config.json': () => synthesizeGenerationConfig(meta),
        }
      : {}),
  });
  return { location, files, tensors };
}
