import type { GgufTensorInfo } from './gguf_header.ts';
import type { TensorView } from './gguf_tensor.ts';

/**
 * llama.cpp's qwen35 / qwen35moe tensor names → Hugging Face names and shapes, undoing the converter's
 * transforms (spec §3.2; llama.cpp conversion/qwen.py `Qwen3NextModel`, `_LinearAttentionVReorderBase`,
 * `_Qwen35MtpMixin`). ggml lists dims innermost first, so HF shapes are the dims reversed.
 */

export interface GgufLayout {
  /** Main-stack layers; blocks from here on are the MTP (nextn) layers. */
  numLayers: number;
  linearKeyHeads: number;
  linearValueHeads: number;
  linearKeyDim: number;
  linearValueDim: number;
}

/**
 * The converter stores value heads tiled (GGUF head p = s·Nk + k holds HF head k·r + s, so llama.cpp can use
 * ggml_repeat: GGUF value head p reads key head p % Nk); HF groups them by key head (head h reads key head
 * h // r). Returns the GGUF head that holds HF head h.
 */
export function ggufValueHead(h: number, keyHeads: number, valueHeads: number): number {
  const r = valueHeads / keyHeads;
  return (h % r) * keyHeads + Math.floor(h / r);
}

/** ggml dims → HF shape (gguf-py writes the numpy shape reversed). */
const hfShape = (dims: number[]): number[] => [...dims].reverse();

const norm = (x: number) => x - 1;
/** ssm_a = −exp(A_log). */
const aLog = (x: number) => Math.log(-x);

type Rule = (m: Mapper, info: GgufTensorInfo, prefix: string) => TensorView[];

/** Per-layer suffixes (after `blk.N.`), shared by main and MTP layers. */
const LAYER_RULES: Record<string, Rule> = {
  'attn_norm.weight': (m, i, p) => [m.plain(i, `${p}.input_layernorm.weight`, norm)],
  'post_attention_norm.weight': (m, i, p) => [m.plain(i, `${p}.post_attention_layernorm.weight`, norm)],
  'attn_q.weight': (m, i, p) => [m.plain(i, `${p}.self_attn.q_proj.weight`)],
  'attn_k.weight': (m, i, p) => [m.plain(i, `${p}.self_attn.k_proj.weight`)],
  'attn_v.weight': (m, i, p) => [m.plain(i, `${p}.self_attn.v_proj.weight`)],
  'attn_output.weight': (m, i, p) => [m.plain(i, `${p}.self_attn.o_proj.weight`)],
  'attn_q_norm.weight': (m, i, p) => [m.plain(i, `${p}.self_attn.q_norm.weight`, norm)],
  'attn_k_norm.weight': (m, i, p) => [m.plain(i, `${p}.self_attn.k_norm.weight`, norm)],
  'attn_qkv.weight': (m, i, p) => [m.valueRows(i, `${p}.linear_attn.in_proj_qkv.weight`, m.keyChannels, m.layout.linearValueDim)],
  'attn_gate.weight': (m, i, p) => [m.valueRows(i, `${p}.linear_attn.in_proj_z.weight`, 0, m.layout.linearValueDim)],
  'ssm_beta.weight': (m, i, p) => [m.valueRows(i, `${p}.linear_attn.in_proj_b.weight`, 0, 1)],
  'ssm_alpha.weight': (m, i, p) => [m.valueRows(i, `${p}.linear_attn.in_proj_a.weight`, 0, 1)],
  'ssm_conv1d.weight': (m, i, p) => [m.conv(i, `${p}.linear_attn.conv1d.weight`)],
  'ssm_dt.bias': (m, i, p) => [m.valueColumns(i, `${p}.linear_attn.dt_bias`, 1)],
  ssm_a: (m, i, p) => [m.valueColumns(i, `${p}.linear_attn.A_log`, 1, aLog)],
  'ssm_norm.weight': (m, i, p) => [m.plain(i, `${p}.linear_attn.norm.weight`)],
  'ssm_out.weight': (m, i, p) => [m.valueColumns(i, `${p}.linear_attn.out_proj.weight`, m.layout.linearValueDim)],
  'ffn_gate.weight': (m, i, p) => [m.plain(i, `${p}.mlp.gate_proj.weight`)],
  'ffn_up.weight': (m, i, p) => [m.plain(i, `${p}.mlp.up_proj.weight`)],
  'ffn_down.weight': (m, i, p) => [m.plain(i, `${p}.mlp.down_proj.weight`)],
  'ffn_gate_inp.weight': (m, i, p) => [m.plain(i, `${p}.mlp.gate.weight`)],
  'ffn_gate_inp_shexp.weight': (m, i, p) => [m.plain(i, `${p}.mlp.shared_expert_gate.weight`, undefined, [1, i.dims[0]])],
  'ffn_gate_shexp.weight': (m, i, p) => [m.plain(i, `${p}.mlp.shared_expert.gate_proj.weight`)],
  'ffn_up_shexp.weight': (m, i, p) => [m.plain(i, `${p}.mlp.shared_expert.up_proj.weight`)],
  'ffn_down_shexp.weight': (m, i, p) => [m.plain(i, `${p}.mlp.shared_expert.down_proj.weight`)],
  'ffn_gate_exps.weight': (m, i, p) => m.experts(i, p, ['gate_proj']),
  'ffn_up_exps.weight': (m, i, p) => m.experts(i, p, ['up_proj']),
  'ffn_down_exps.weight': (m, i, p) => m.experts(i, p, ['down_proj']),
  // Newer converters may store gate and up in one tensor, gate rows first in each expert.
  'ffn_gate_up_exps.weight': (m, i, p) => m.experts(i, p, ['gate_proj', 'up_proj']),
};

/** The MTP block's own tensors (first nextn block only; later ones repeat them). */
const NEXTN_RULES: Record<string, Rule> = {
  'nextn.eh_proj.weight': (m, i) => [m.plain(i, 'mtp.fc.weight')],
  'nextn.enorm.weight': (m, i) => [m.plain(i, 'mtp.pre_fc_norm_embedding.weight', norm)],
  'nextn.hnorm.weight': (m, i) => [m.plain(i, 'mtp.pre_fc_norm_hidden.weight', norm)],
  'nextn.shared_head_norm.weight': (m, i) => [m.plain(i, 'mtp.norm.weight', norm)],
};

const GLOBAL_RULES: Record<string, Rule> = {
  'token_embd.weight': (m, i) => [m.plain(i, 'model.embed_tokens.weight')],
  'output_norm.weight': (m, i) => [m.plain(i, 'model.norm.weight', norm)],
  'output.weight': (m, i) => [m.plain(i, 'lm_head.weight')],
};

class Mapper {
  readonly keyChannels: number;
  private readonly reorder: boolean;

  constructor(readonly layout: GgufLayout) {
    this.keyChannels = 2 * layout.linearKeyHeads * layout.linearKeyDim;
    this.reorder = layout.linearValueHeads !== layout.linearKeyHeads;
  }

  private ggufHead(h: number): number {
    return ggufValueHead(h, this.layout.linearKeyHeads, this.layout.linearValueHeads);
  }

  /** Value-head channel c (of Nv·width) → the GGUF channel holding it. */
  private channel(c: number, width: number): number {
    return this.ggufHead(Math.floor(c / width)) * width + (c % width);
  }

  plain(info: GgufTensorInfo, name: string, value?: (x: number) => number, shape = hfShape(info.dims)): TensorView {
    return { name, shape, info, rowBase: 0, value };
  }

  /** Rows [base, base + Nv·width) are value heads of `width` rows each; rows before them (q, k) stay. */
  valueRows(info: GgufTensorInfo, name: string, base: number, width: number, shape = hfShape(info.dims)): TensorView {
    const view = this.plain(info, name, undefined, shape);
    const rows = shape.slice(0, -1).reduce((a, b) => a * b, 1);
    // A tensor of another size is left as it is: the loader's shape check then names it.
    if (!this.reorder || rows !== base + this.layout.linearValueHeads * width) return view;
    return { ...view, rowOf: (r) => (r < base ? r : base + this.channel(r - base, width)) };
  }

  /** Columns are value heads of `width` columns each (out_proj's input; A_log and dt_bias as one row). */
  valueColumns(info: GgufTensorInfo, name: string, width: number, value?: (x: number) => number): TensorView {
    const view = this.plain(info, name, value);
    const cols = info.dims[0];
    if (!this.reorder || cols !== this.layout.linearValueHeads * width) return view;
    return { ...view, colOf: Int32Array.from({ length: cols }, (_, c) => this.channel(c, width)) };
  }

  /** conv1d is stored squeezed ({K, conv_dim}); HF keeps [conv_dim, 1, K]. Its V channels are reordered. */
  conv(info: GgufTensorInfo, name: string): TensorView {
    const shape = hfShape(info.dims);
    const hf = shape.length === 2 ? [shape[0], 1, shape[1]] : shape;
    return this.valueRows(info, name, this.keyChannels, this.layout.linearValueDim, hf);
  }

  /** A stacked {cols, rows·parts, E} expert tensor as one [rows, cols] tensor per expert and part. */
  experts(info: GgufTensorInfo, prefix: string, parts: string[]): TensorView[] {
    if (info.dims.length !== 3 || info.dims[1] % parts.length !== 0) return [this.plain(info, info.name)];
    const [cols, stacked, experts] = info.dims;
    const rows = stacked / parts.length;
    return Array.from({ length: experts }, (_, e) =>
      parts.map((part, k) => ({ name: `${prefix}.mlp.experts.${e}.${part}.weight`, shape: [rows, cols], info, rowBase: e * stacked + k * rows })),
    ).flat();
  }
}

/**
 * Every GGUF tensor as the HF tensor(s) it holds. Names this table does not know are kept under their GGUF
 * name (the loader lists them as unused).
 */
export function mapGgufTensors(infos: GgufTensorInfo[], layout: GgufLayout): TensorView[] {
  const m = new Mapper(layout);
  const views: TensorView[] = [];
  for (const info of infos) {
    const global = GLOBAL_RULES[info.name];
    const block = /^blk\.(\d+)\.(.+)$/.exec(info.name);
    let mapped: TensorView[] | undefined;
    if (global) mapped = global(m, info, '');
    else if (block) {
      const index = Number(block[1]);
      const suffix = block[2];
      const mtp = index - layout.numLayers;
      const prefix = mtp < 0 ? `model.layers.${index}` : `mtp.layers.${mtp}`;
      const rule = LAYER_RULES[suffix] ?? (mtp === 0 ? NEXTN_RULES[suffix] : undefined);
      mapped = rule?.(m, info, prefix);
    }
    views.push(...(mapped ?? [m.plain(info, info.name)]));
  }
  return views;
}
