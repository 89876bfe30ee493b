import { type Qwen35Config, dims } from './config.ts';

/**
 * Which checkpoint tensors fill which GPU tensor. Projections that read the same input are fused into one
 * GPU tensor (one matvec per input at decode), so a GPU tensor can have several sources:
 *   source tensor viewed as [items, rows, cols] → destination item `item + i`, row `row + r`.
 * A destination is [rows, cols] (rows are its items) or [items, rows, cols] (experts; SwiGLU pairs).
 */
export interface Placement {
  /** Checkpoint tensor name. */
  source: string;
  /** The shape the config implies for the source (checked against the file). */
  shape: number[];
  /** The source seen as [items, rows] of `cols`-long rows. */
  view: [number, number];
  item: number;
  row: number;
}

export interface TensorSpec {
  key: string;
  shape: number[];
  /** Matrices are stored in the chosen weight dtype; vectors (norms, conv taps, gates' params) always in f32. */
  kind: 'matrix' | 'vector';
  sources: Placement[];
}

/** How the checkpoint names things: `model.language_model.` (VLM wrapper) or `model.` (text-only). */
export interface Naming {
  prefix: string;
  /** MoE experts stored fused (`experts.gate_up_proj`) or one tensor per expert. */
  fusedExperts: boolean;
}

const whole = (source: string, shape: number[], item = 0, row = 0): Placement => {
  const rows = shape.slice(0, -1).reduce((a, b) => a * b, 1);
  // 2-D sources fill consecutive destination items (rows of a 2-D destination); 3-D sources map item to item.
  const view: [number, number] = shape.length === 3 ? [shape[0], shape[1]] : [rows, 1];
  return { source, shape, view, item, row };
};

const vector = (key: string, source: string, n: number): TensorSpec => ({
  key,
  shape: [1, n],
  kind: 'vector',
  sources: [{ source, shape: [n], view: [1, 1], item: 0, row: 0 }],
});

function attentionLayer(c: Qwen35Config, key: string, p: string): TensorSpec[] {
  const H = c.hiddenSize;
  const d = dims(c);
  const qRows = c.numHeads * 2 * c.headDim;
  const kvRows = c.numKvHeads * c.headDim;
  return [
    {
      key: `${key}.qkv_proj`,
      shape: [d.attentionProj, H],
      kind: 'matrix',
      sources: [
        whole(`${p}.self_attn.q_proj.weight`, [qRows, H]),
        whole(`${p}.self_attn.k_proj.weight`, [kvRows, H], qRows),
        whole(`${p}.self_attn.v_proj.weight`, [kvRows, H], qRows + kvRows),
      ],
    },
    vector(`${key}.q_norm`, `${p}.self_attn.q_norm.weight`, c.headDim),
    vector(`${key}.k_norm`, `${p}.self_attn.k_norm.weight`, c.headDim),
    { key: `${key}.o_proj`, shape: [H, d.attentionOut], kind: 'matrix', sources: [whole(`${p}.self_attn.o_proj.weight`, [H, d.attentionOut])] },
  ];
}

function deltaNetLayer(c: Qwen35Config, key: string, p: string): TensorSpec[] {
  const H = c.hiddenSize;
  const d = dims(c);
  const nv = c.linearValueHeads;
  return [
    {
      key: `${key}.in_proj`,
      shape: [d.deltaNetProj, H],
      kind: 'matrix',
      sources: [
        whole(`${p}.linear_attn.in_proj_qkv.weight`, [d.convDim, H]),
        whole(`${p}.linear_attn.in_proj_z.weight`, [d.valueDim, H], d.convDim),
        whole(`${p}.linear_attn.in_proj_b.weight`, [nv, H], d.convDim + d.valueDim),
        whole(`${p}.linear_attn.in_proj_a.weight`, [nv, H], d.convDim + d.valueDim + nv),
      ],
    },
    {
      key: `${key}.conv`,
      shape: [d.convDim, c.convKernel],
      kind: 'vector',
      sources: [{ source: `${p}.linear_attn.conv1d.weight`, shape: [d.convDim, 1, c.convKernel], view: [d.convDim, 1], item: 0, row: 0 }],
    },
    vector(`${key}.a_log`, `${p}.linear_attn.A_log`, nv),
    vector(`${key}.dt_bias`, `${p}.linear_attn.dt_bias`, nv),
    vector(`${key}.norm`, `${p}.linear_attn.norm.weight`, c.linearValueDim),
    { key: `${key}.out_proj`, shape: [H, d.valueDim], kind: 'matrix', sources: [whole(`${p}.linear_attn.out_proj.weight`, [H, d.valueDim])] },
  ];
}

/** SwiGLU pair as [I, 2, H]: item i holds gate row i then up row i, so a split never separates a pair. */
function swigluPair(key: string, gate: string, up: string, I: number, H: number): TensorSpec {
  return {
    key,
    shape: [I, 2, H],
    kind: 'matrix',
    sources: [
      { source: gate, shape: [I, H], view: [I, 1], item: 0, row: 0 },
      { source: up, shape: [I, H], view: [I, 1], item: 0, row: 1 },
    ],
  };
}

function mlp(c: Qwen35Config, key: string, p: string, naming: Naming): TensorSpec[] {
  const H = c.hiddenSize;
  if (!c.moe) {
    const I = c.intermediateSize!;
    return [
      swigluPair(`${key}.gate_up`, `${p}.mlp.gate_proj.weight`, `${p}.mlp.up_proj.weight`, I, H),
      { key: `${key}.down`, shape: [H, I], kind: 'matrix', sources: [whole(`${p}.mlp.down_proj.weight`, [H, I])] },
    ];
  }
  const { numExperts: E, expertIntermediate: Im, sharedIntermediate: Is } = c.moe;
  const experts = naming.fusedExperts
    ? [
        { key: `${key}.experts_gate_up`, shape: [E, 2 * Im, H], kind: 'matrix' as const, sources: [whole(`${p}.mlp.experts.gate_up_proj`, [E, 2 * Im, H])] },
        { key: `${key}.experts_down`, shape: [E, H, Im], kind: 'matrix' as const, sources: [whole(`${p}.mlp.experts.down_proj`, [E, H, Im])] },
      ]
    : [
        {
          key: `${key}.experts_gate_up`,
          shape: [E, 2 * Im, H],
          kind: 'matrix' as const,
          sources: Array.from({ length: E }, (_, e) => [
            { source: `${p}.mlp.experts.${e}.gate_proj.weight`, shape: [Im, H], view: [1, Im] as [number, number], item: e, row: 0 },
            { source: `${p}.mlp.experts.${e}.up_proj.weight`, shape: [Im, H], view: [1, Im] as [number, number], item: e, row: Im },
          ]).flat(),
        },
        {
          key: `${key}.experts_down`,
          shape: [E, H, Im],
          kind: 'matrix' as const,
          sources: Array.from({ length: E }, (_, e) => ({
            source: `${p}.mlp.experts.${e}.down_proj.weight`,
            shape: [H, Im],
            view: [1, H] as [number, number],
            item: e,
            row: 0,
          })),
        },
      ];
  return [
    {
      key: `${key}.router`,
      shape: [E + 1, H],
      kind: 'matrix',
      sources: [whole(`${p}.mlp.gate.weight`, [E, H]), whole(`${p}.mlp.shared_expert_gate.weight`, [1, H], E)],
    },
    ...experts,
    swigluPair(`${key}.shared_gate_up`, `${p}.mlp.shared_expert.gate_proj.weight`, `${p}.mlp.shared_expert.up_proj.weight`, Is, H),
    { key: `${key}.shared_down`, shape: [H, Is], kind: 'matrix', sources: [whole(`${p}.mlp.shared_expert.down_proj.weight`, [H, Is])] },
  ];
}

/**
 * The contiguous decoder layers [first, end) that a pipeline stage holds (runtime/pipeline); the whole model is
 * { first: 0, end: num_hidden_layers }.
 */
export interface LayerRange {
  first: number;
  end: number;
}

export const wholeModel = (c: Qwen35Config): LayerRange => ({ first: 0, end: c.layerTypes.length });

/**
 * Whether the stage holding `range` needs tensor `key`: its layers; the embedding on the first stage (and on the
 * last when tied: it is the LM head); the final norm and LM head on the last. The MTP block only with the whole model.
 */
export function inLayerRange(key: string, range: LayerRange, c: Qwen35Config): boolean {
  const last = range.end === c.layerTypes.length;
  if (key === 'embed') return range.first === 0 || (last && c.tieWordEmbeddings);
  if (key === 'norm' || key === 'lm_head') return last;
  const layer = /^layers\.(\d+)\./.exec(key);
  if (layer) return Number(layer[1]) >= range.first && Number(layer[1]) < range.end;
  return range.first === 0 && last;
}

/** Every GPU tensor of the text model, in the order the forward pass uses them. */
export function textModelTensors(c: Qwen35Config, naming: Naming): TensorSpec[] {
  const H = c.hiddenSize;
  const p = naming.prefix;
  const specs: TensorSpec[] = [{ key: 'embed', shape: [c.vocabSize, H], kind: 'matrix', sources: [whole(`${p}embed_tokens.weight`, [c.vocabSize, H])] }];
  c.layerTypes.forEach((type, i) => {
    const key = `layers.${i}`;
    const lp = `${p}layers.${i}`;
    specs.push(vector(`${key}.input_norm`, `${lp}.input_layernorm.weight`, H));
    specs.push(...(type === 'full_attention' ? attentionLayer(c, `${key}.attn`, lp) : deltaNetLayer(c, `${key}.linear`, lp)));
    specs.push(vector(`${key}.post_norm`, `${lp}.post_attention_layernorm.weight`, H));
    specs.push(...mlp(c, `${key}.mlp`, lp, naming));
  });
  specs.push(vector('norm', `${p}norm.weight`, H));
  if (!c.tieWordEmbeddings) {
    specs.push({ key: 'lm_head', shape: [c.vocabSize, H], kind: 'matrix', sources: [whole('lm_head.weight', [c.vocabSize, H])] });
  }
  return specs;
}

/**
 * The multi-token-prediction block (spec §2.7): kept on the GPU for speculative decoding. One full-attention
 * decoder layer (dense MLP or MoE as the main stack) plus the fc that merges embedding and hidden state.
 */
export function mtpTensors(c: Qwen35Config, naming: Naming): TensorSpec[] {
  const H = c.hiddenSize;
  const specs: TensorSpec[] = [
    { key: 'mtp.fc', shape: [H, 2 * H], kind: 'matrix', sources: [whole('mtp.fc.weight', [H, 2 * H])] },
    vector('mtp.pre_fc_norm_embedding', 'mtp.pre_fc_norm_embedding.weight', H),
    vector('mtp.pre_fc_norm_hidden', 'mtp.pre_fc_norm_hidden.weight', H),
    vector('mtp.norm', 'mtp.norm.weight', H),
  ];
  for (let i = 0; i < c.mtpLayers; i++) {
    const key = `mtp.layers.${i}`;
    const lp = `mtp.layers.${i}`;
    specs.push(vector(`${key}.input_norm`, `${lp}.input_layernorm.weight`, H));
    specs.push(...attentionLayer(c, `${key}.attn`, lp));
    specs.push(vector(`${key}.post_norm`, `${lp}.post_attention_layernorm.weight`, H));
    specs.push(...mlp(c, `${key}.mlp`, lp, naming));
  }
  return specs;
}
