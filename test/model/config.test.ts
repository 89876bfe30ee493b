import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/model/config.ts';
import { ConfigError } from '../../src/errors.ts';
import { fixtureDir } from '../helpers/fixtures.ts';

const nested = JSON.parse(readFileSync(`${fixtureDir('tiny-qwen35-moe')}/config.json`, 'utf8'));

describe('parseConfig', () => {
  it('reads the nested VLM layout of the fixtures', () => {
    const c = parseConfig(nested);
    expect(c.modelType).toBe('qwen3_5_moe');
    expect(c.layerTypes).toEqual(nested.text_config.layer_types);
    expect(c.rotaryDim).toBe(64);
    expect(c.ropeTheta).toBe(1e7);
    expect(c.moe).toEqual({ numExperts: 16, topk: 4, expertIntermediate: 128, sharedIntermediate: 128 });
    expect(c.tieWordEmbeddings).toBe(false);
    expect(c.mtpLayers).toBe(1);
  });

  it('reads a flat config with top-level rope keys and the attention interval the same way', () => {
    const { rope_parameters: rope, layer_types: _, ...text } = nested.text_config;
    const flat = {
      ...text,
      model_type: 'qwen3_5_moe',
      rope_theta: rope.rope_theta,
      partial_rotary_factor: rope.partial_rotary_factor,
      full_attention_interval: 4,
      tie_word_embeddings: false,
    };
    expect(parseConfig(flat)).toEqual(parseConfig(nested));
  });

  it('derives layer types from full_attention_interval: layer i is full iff (i+1) % n == 0', () => {
    const c = parseConfig({ ...nested, text_config: { ...nested.text_config, layer_types: undefined, num_hidden_layers: 6, full_attention_interval: 3 } });
    expect(c.layerTypes).toEqual(['linear_attention', 'linear_attention', 'full_attention', 'linear_attention', 'linear_attention', 'full_attention']);
  });

  it('names the field of a bad config', () => {
    const bad = (patch: Record<string, unknown>, field: RegExp) => {
      const cfg = { ...nested, text_config: { ...nested.text_config, ...patch } };
      expect(() => parseConfig(cfg)).toThrow(ConfigError);
      expect(() => parseConfig(cfg)).toThrow(field);
    };
    bad({ hidden_size: -1 }, /text_config\.hidden_size/);
    bad({ hidden_size: undefined }, /text_config\.hidden_size: missing/);
    bad({ linear_num_value_heads: 3 }, /linear_num_value_heads/);
    bad({ layer_types: ['linear_attention'] }, /text_config\.layer_types/);
    bad({ layer_types: Array(8).fill('sliding') }, /layer_types: entry 0/);
    bad({ num_experts_per_tok: 99 }, /num_experts_per_tok/);
    bad({ hidden_act: 'gelu' }, /hidden_act/);
    expect(() => parseConfig({ ...nested, model_type: 'llama' })).toThrow(/model_type: "llama" is not a Qwen3.5 model/);
    expect(() => parseConfig([])).toThrow(ConfigError);
  });
});
