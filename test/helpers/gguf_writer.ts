import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BLOCK, type GgmlTypeName, GgufType, type KeyValue, type TensorOut, encodeGguf, kv, quantize } from '../../src/formats/gguf_writer.ts';
import { bf16BitsToF32, f16BitsToF32 } from '../../src/numeric/half.ts';
import { IQ4_LEVELS } from '../../src/formats/gguf_quants.ts';
import { openSafetensorsCheckpoint } from '../../src/formats/safetensors.ts';
import { FileSource } from '../../src/storage/file.ts';
import { type FixtureName, fixtureDir } from './fixtures.ts';

/**
 * Test fixtures as GGUF files, written with the project's GGUF writer (src/formats/gguf_writer.ts, re-exported
 * here for the tests). `writeFixtureGguf` converts one of the HF fixtures as convert_hf_to_gguf.py
 * does for qwen35 / qwen35moe (conversion/qwen.py: norms + 1, ssm_a = −exp(A_log), V heads tiled, experts
 * stacked, MTP as blk.L.nextn.*), with the tokenizer arrays built from the fixture's tokenizer.json, and
 * quantises each tensor to a chosen type (valid blocks, not llama.cpp's search).
 */

export {
  BLOCK,
  ByteWriter,
  GgufType,
  type GgmlTypeName,
  type KeyValue,
  type TensorOut,
  encodeGguf,
  kv,
  quantize,
  writeKeyValue,
} from '../../src/formats/gguf_writer.ts';

// ---------------------------------------------------------------- reference dequantisers

/**
 * Element i of one block, computed on its own from ggml-common.h's block structs and the formulas of
 * ggml-quants.c's dequantize_row_* (written per element, unlike src/formats/gguf_quants.ts's loops).
 */
export function referenceElement(type: GgmlTypeName, block: Uint8Array, i: number): number {
  const u16 = (at: number) => block[at] | (block[at + 1] << 8);
  const half = (at: number) => f16BitsToF32(u16(at));
  const int8 = (v: number) => (v > 127 ? v - 256 : v);
  switch (type) {
    case 'F32':
      return new DataView(block.buffer, block.byteOffset).getFloat32(0, true);
    case 'F16':
      return half(0);
    case 'BF16':
      return bf16BitsToF32(u16(0));
    case 'Q8_0':
      return half(0) * int8(block[2 + i]);
    case 'Q4_0':
      return half(0) * ((i < 16 ? block[2 + i] & 15 : block[2 + i - 16] >> 4) - 8);
    case 'Q4_K':
    case 'Q5_K': {
      const sub = i >> 5; // sub-block of 32: scales index
      const chunk = i >> 6; // 64 values share 32 bytes of qs: low nibbles then high nibbles
      const l = i & 31;
      const qs = type === 'Q4_K' ? 16 : 48;
      const byte = block[qs + 32 * chunk + l];
      let q = sub & 1 ? byte >> 4 : byte & 15;
      if (type === 'Q5_K' && (block[16 + l] >> sub) & 1) q += 16;
      const s = (k: number) => block[4 + k];
      const scale = sub < 4 ? s(sub) & 63 : (s(sub + 4) & 15) | ((s(sub - 4) >> 6) << 4);
      const min = sub < 4 ? s(sub + 4) & 63 : (s(sub + 4) >> 4) | ((s(sub) >> 6) << 4);
      return half(0) * scale * q - half(2) * min;
    }
    case 'Q4_1':
      return half(0) * (i < 16 ? block[4 + i] & 15 : block[4 + i - 16] >> 4) + half(2);
    case 'Q5_0':
    case 'Q5_1': {
      const qh = type === 'Q5_0' ? 2 : 4;
      const nibble = i < 16 ? block[qh + 4 + i] & 15 : block[qh + 4 + i - 16] >> 4;
      const q = nibble | (((block[qh + (i >> 3)] >> (i & 7)) & 1) << 4);
      return type === 'Q5_0' ? half(0) * (q - 16) : half(0) * q + half(2);
    }
    case 'Q2_K':
    case 'Q3_K': {
      // Sub-block of 16 (scale index) = 8n + 2k + h for element 128n + 32k + 16h + l: 2 bits at bit 2k of qs[32n + 16h + l].
      const [n, k, h, l] = [i >> 7, (i >> 5) & 3, (i >> 4) & 1, i & 15];
      const qs = type === 'Q2_K' ? 16 : 32;
      const low = (block[qs + 32 * n + 16 * h + l] >> (2 * k)) & 3;
      const sub = 8 * n + 2 * k + h;
      if (type === 'Q2_K') return half(80) * (block[sub] & 15) * low - half(82) * (block[sub] >> 4);
      // Q3_K: scale = 4 low bits (bytes 96..103, then their high nibbles) + 2 high bits (bytes 104..107, 2 bits per quarter).
      const scaleLow = sub < 8 ? block[96 + sub] & 15 : block[96 + sub - 8] >> 4;
      const scaleHigh = (block[104 + (sub % 4)] >> (2 * Math.floor(sub / 4))) & 3;
      const highBit = (block[16 * h + l] >> (4 * n + k)) & 1;
      return half(108) * (scaleLow + 16 * scaleHigh - 32) * (low + 4 * highBit - 4);
    }
    case 'IQ4_NL':
      return half(0) * IQ4_LEVELS[i < 16 ? block[2 + i] & 15 : block[2 + i - 16] >> 4];
    case 'IQ4_XS': {
      const sub = i >> 5;
      const j = i & 31;
      const scale = ((block[4 + (sub >> 1)] >> (4 * (sub & 1))) & 15) + 16 * ((u16(2) >> (2 * sub)) & 3);
      const q = j < 16 ? block[8 + 16 * sub + j] & 15 : block[8 + 16 * sub + j - 16] >> 4;
      return half(0) * (scale - 32) * IQ4_LEVELS[q];
    }
    case 'MXFP4': {
      const q = i < 16 ? block[1 + i] & 15 : block[1 + i - 16] >> 4;
      // E2M1: sign, 2 exponent bits, 1 mantissa bit; the E8M0 scale 2^(e − 127).
      const magnitude = (q & 7) < 2 ? (q & 1) / 2 : 2 ** (((q & 7) >> 1) - 1) * (1 + (q & 1) / 2);
      // The level −0 is a plain 0, as ggml's table has it.
      return (q & 8 && magnitude ? -1 : 1) * magnitude * 2 ** (block[0] - 127);
    }
    case 'Q6_K': {
      const n = i >> 7; // two halves of 128
      const quarter = (i >> 5) & 3;
      const l = i & 31;
      const ql = block[64 * n + l + (quarter & 1 ? 32 : 0)];
      const low = quarter < 2 ? ql & 15 : ql >> 4;
      const high = (block[128 + 32 * n + l] >> (2 * quarter)) & 3;
      const scale = int8(block[192 + 8 * n + (l >> 4) + 2 * quarter]);
      return half(208) * scale * ((low | (high << 4)) - 32);
    }
  }
}

/**
 * Bits of resolution each quantised type gives a block, for round-trip bounds: MXFP4's levels (0, ±0.5 … ±6 times a
 * power of two) leave up to a third of the largest magnitude between neighbours, as 2 bits would.
 */
export const QUANT_BITS: Partial<Record<GgmlTypeName, number>> = {
  Q8_0: 8,
  Q4_0: 4,
  Q4_1: 4,
  Q5_0: 5,
  Q5_1: 5,
  Q2_K: 2,
  Q3_K: 3,
  Q4_K: 4,
  Q5_K: 5,
  Q6_K: 6,
  IQ4_NL: 4,
  IQ4_XS: 4,
  MXFP4: 2,
};

/** Dequantises `count` values of `type` element by element with referenceElement. */
export function dequantizeReference(type: GgmlTypeName, bytes: Uint8Array, count: number): Float32Array {
  const { size, bytes: blockBytes } = BLOCK[type];
  const out = new Float32Array(count);
  for (let b = 0; b < count / size; b++) {
    const block = bytes.subarray(b * blockBytes, (b + 1) * blockBytes);
    for (let i = 0; i < size; i++) out[b * size + i] = referenceElement(type, block, i);
  }
  return out;
}

// ---------------------------------------------------------------- fixture → GGUF

export interface FixtureGgufOptions {
  /** Type of each GGUF tensor; default F32 for vectors, F16 otherwise. Types whose block does not divide ne0 fall back. */
  types?: (name: string, dims: number[]) => GgmlTypeName;
  alignment?: number;
  /** Write the MTP block as blk.L.nextn.* (default true). */
  mtp?: boolean;
  /** Stack gate and up experts in one ffn_gate_up_exps tensor. */
  fusedExperts?: boolean;
  /** ffn_gate_inp_shexp as {H} instead of gguf-py's {H, 1}. */
  sharedGate1d?: boolean;
  /** Edits the metadata before it is written (tests drop or change keys). */
  metadata?: (entries: KeyValue[]) => KeyValue[];
}

/** What reading a GGUF tensor back should give, under the name and shape the reader presents. */
export interface ExpectedTensor {
  shape: number[];
  /** The fixture's values (bf16 → f32). */
  hf: Float32Array;
  /** What the file holds after the writer's quantiser, with the converter's transforms undone. */
  held: Float32Array;
  ggufName: string;
  type: GgmlTypeName;
  /** Values were mapped (norm + 1, −exp), not only moved. */
  transformed: boolean;
  /** The fixture's values as the file stores them before quantisation (1 + w for norms), in reader layout. */
  stored: Float32Array;
}

export interface FixtureGguf {
  dir: string;
  file: string;
  expected: Map<string, ExpectedTensor>;
}

/** ggml's fallback for K-quants on rows that are not whole super-blocks (llama-quant.cpp), else F16. */
function fitType(type: GgmlTypeName, ne0: number): GgmlTypeName {
  if (ne0 % BLOCK[type].size === 0) return type;
  const fallback: Partial<Record<GgmlTypeName, GgmlTypeName>> = { Q2_K: 'Q4_0', Q3_K: 'Q4_0', Q4_K: 'Q5_0', Q5_K: 'Q5_1', Q6_K: 'Q8_0', IQ4_XS: 'IQ4_NL' };
  const next = fallback[type];
  return next && ne0 % BLOCK[next].size === 0 ? next : 'F16';
}

const defaultType = (_name: string, dims: number[]): GgmlTypeName => (dims.length === 1 || dims[1] === 1 ? 'F32' : 'F16');

interface Part {
  /** Reader-space name (text-only prefix, per-expert names). */
  name: string;
  shape: number[];
  values: Float32Array;
}

/** One GGUF tensor being built: element j holds fwd(parts[part[j]].values[index[j]]). */
interface Plan {
  name: string;
  dims: number[];
  parts: Part[];
  part: Int32Array;
  index: Int32Array;
  fwd?: (x: number) => number;
  inv?: (x: number) => number;
}

/**
 * convert_hf_to_gguf.py's `_reorder_v_heads` on `n` rows of `width`: view [Nk, r, width] → swap the first two
 * axes → [r, Nk, width]. Returns, for each GGUF position, the HF position it holds.
 */
export function tiledValueOrder(keyHeads: number, valueHeads: number, width: number): Int32Array {
  const r = valueHeads / keyHeads;
  const out = new Int32Array(valueHeads * width);
  let at = 0;
  for (let s = 0; s < r; s++) for (let k = 0; k < keyHeads; k++) for (let w = 0; w < width; w++) out[at++] = (k * r + s) * width + w;
  return out;
}

const identity = (n: number) => Int32Array.from({ length: n }, (_, i) => i);

const writtenDirs: string[] = [];

/** Removes every folder writeFixtureGguf made (call from afterAll). */
export function removeWrittenGgufs(): void {
  for (const dir of writtenDirs.splice(0)) rmSync(dir, { recursive: true, force: true });
}

export async function writeFixtureGguf(fixture: FixtureName, options: FixtureGgufOptions = {}): Promise<FixtureGguf> {
  const dir = fixtureDir(fixture);
  const config = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'));
  const text = config.text_config;
  const moe = config.model_type === 'qwen3_5_moe';
  const arch = moe ? 'qwen35moe' : 'qwen35';
  const H: number = text.hidden_size;
  const L: number = text.num_hidden_layers;
  const [Nk, Nv, Dk, Dv] = [text.linear_num_key_heads, text.linear_num_value_heads, text.linear_key_head_dim, text.linear_value_head_dim];
  const withMtp = options.mtp ?? true;

  // Reader-space HF tensors: `model.` prefix, experts split per expert (as the reader presents them).
  const checkpoint = await openSafetensorsCheckpoint(new FileSource(dir));
  const hf = new Map<string, Part>();
  for (const [name, t] of checkpoint.tensors) {
    if (name.startsWith('model.visual.') || (!withMtp && name.startsWith('mtp.'))) continue;
    const rows = t.shape.slice(0, -1).reduce((a, b) => a * b, 1);
    const bytes = await t.readRows(0, rows);
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const n = t.shape.reduce((a, b) => a * b, 1);
    const values = new Float32Array(n);
    for (let i = 0; i < n; i++) values[i] = t.dtype === 'f32' ? view.getFloat32(4 * i, true) : bf16BitsToF32(view.getUint16(2 * i, true));
    const readerName = name.replace(/^model\.language_model\./, 'model.');
    const fused = /^(.*\.mlp\.experts)\.(gate_up_proj|down_proj)$/.exec(readerName);
    if (!fused) {
      hf.set(readerName, { name: readerName, shape: t.shape, values });
      continue;
    }
    const [E, R, C] = t.shape;
    const per = R * C;
    for (let e = 0; e < E; e++) {
      const slice = values.subarray(e * per, (e + 1) * per);
      if (fused[2] === 'down_proj') hf.set(`${fused[1]}.${e}.down_proj.weight`, { name: `${fused[1]}.${e}.down_proj.weight`, shape: [R, C], values: slice });
      else {
        const half = per / 2;
        hf.set(`${fused[1]}.${e}.gate_proj.weight`, { name: `${fused[1]}.${e}.gate_proj.weight`, shape: [R / 2, C], values: slice.subarray(0, half) });
        hf.set(`${fused[1]}.${e}.up_proj.weight`, { name: `${fused[1]}.${e}.up_proj.weight`, shape: [R / 2, C], values: slice.subarray(half) });
      }
    }
  }

  const plans: Plan[] = [];
  const take = (name: string) => {
    const part = hf.get(name);
    if (!part) throw new Error(`writer: fixture has no ${name}`);
    hf.delete(name);
    return part;
  };
  const reversed = (shape: number[]) => [...shape].reverse();
  const plain = (gguf: string, name: string, transform?: Pick<Plan, 'fwd' | 'inv'>, dims?: number[]) => {
    const part = take(name);
    const n = part.values.length;
    plans.push({ name: gguf, dims: dims ?? reversed(part.shape), parts: [part], part: new Int32Array(n), index: identity(n), ...transform });
  };
  const norm = { fwd: (x: number) => x + 1, inv: (x: number) => x - 1 };
  /** Rows [base, base + Nv·width) are value heads: tiled as the converter does. */
  const valueRows = (gguf: string, name: string, base: number, width: number, dims?: number[]) => {
    const part = take(name);
    const cols = part.shape[part.shape.length - 1];
    const rowOrder = tiledValueOrder(Nk, Nv, width);
    const rows = part.values.length / cols;
    const index = new Int32Array(part.values.length);
    for (let g = 0; g < rows; g++) {
      const h = g < base ? g : base + rowOrder[g - base];
      for (let c = 0; c < cols; c++) index[g * cols + c] = h * cols + c;
    }
    plans.push({ name: gguf, dims: dims ?? reversed(part.shape), parts: [part], part: new Int32Array(part.values.length), index });
  };
  const valueColumns = (gguf: string, name: string, width: number, transform?: Pick<Plan, 'fwd' | 'inv'>) => {
    const part = take(name);
    const cols = part.shape[part.shape.length - 1];
    const colOrder = tiledValueOrder(Nk, Nv, width);
    const index = new Int32Array(part.values.length);
    for (let i = 0; i < index.length; i++) index[i] = Math.floor(i / cols) * cols + colOrder[i % cols];
    plans.push({ name: gguf, dims: reversed(part.shape), parts: [part], part: new Int32Array(part.values.length), index, ...transform });
  };
  const stacked = (gguf: string, names: string[][], dims: number[]) => {
    // names[e] = the parts of expert e, stacked in order.
    const parts = names.flat().map(take);
    const n = parts.reduce((s, p) => s + p.values.length, 0);
    const part = new Int32Array(n);
    const index = new Int32Array(n);
    let at = 0;
    parts.forEach((p, k) => {
      for (let i = 0; i < p.values.length; i++, at++) {
        part[at] = k;
        index[at] = i;
      }
    });
    plans.push({ name: gguf, dims, parts, part, index });
  };

  const layer = (blk: string, p: string, full: boolean) => {
    plain(`${blk}.attn_norm.weight`, `${p}.input_layernorm.weight`, norm);
    plain(`${blk}.post_attention_norm.weight`, `${p}.post_attention_layernorm.weight`, norm);
    if (full) {
      plain(`${blk}.attn_q.weight`, `${p}.self_attn.q_proj.weight`);
      plain(`${blk}.attn_k.weight`, `${p}.self_attn.k_proj.weight`);
      plain(`${blk}.attn_v.weight`, `${p}.self_attn.v_proj.weight`);
      plain(`${blk}.attn_output.weight`, `${p}.self_attn.o_proj.weight`);
      plain(`${blk}.attn_q_norm.weight`, `${p}.self_attn.q_norm.weight`, norm);
      plain(`${blk}.attn_k_norm.weight`, `${p}.self_attn.k_norm.weight`, norm);
    } else {
      const a = `${p}.linear_attn`;
      const convDim = 2 * Nk * Dk + Nv * Dv;
      valueRows(`${blk}.attn_qkv.weight`, `${a}.in_proj_qkv.weight`, 2 * Nk * Dk, Dv);
      valueRows(`${blk}.attn_gate.weight`, `${a}.in_proj_z.weight`, 0, Dv);
      valueRows(`${blk}.ssm_beta.weight`, `${a}.in_proj_b.weight`, 0, 1);
      valueRows(`${blk}.ssm_alpha.weight`, `${a}.in_proj_a.weight`, 0, 1);
      valueRows(`${blk}.ssm_conv1d.weight`, `${a}.conv1d.weight`, 2 * Nk * Dk, Dv, [text.linear_conv_kernel_dim, convDim]);
      valueColumns(`${blk}.ssm_dt.bias`, `${a}.dt_bias`, 1);
      valueColumns(`${blk}.ssm_a`, `${a}.A_log`, 1, { fwd: (x) => -Math.exp(x), inv: (x) => Math.log(-x) });
      plain(`${blk}.ssm_norm.weight`, `${a}.norm.weight`);
      valueColumns(`${blk}.ssm_out.weight`, `${a}.out_proj.weight`, Dv);
    }
    if (!moe) {
      plain(`${blk}.ffn_gate.weight`, `${p}.mlp.gate_proj.weight`);
      plain(`${blk}.ffn_up.weight`, `${p}.mlp.up_proj.weight`);
      plain(`${blk}.ffn_down.weight`, `${p}.mlp.down_proj.weight`);
      return;
    }
    const E: number = text.num_experts;
    const Im: number = text.moe_intermediate_size;
    const experts = (part: string) => Array.from({ length: E }, (_, e) => [`${p}.mlp.experts.${e}.${part}.weight`]);
    plain(`${blk}.ffn_gate_inp.weight`, `${p}.mlp.gate.weight`);
    if (options.fusedExperts) {
      stacked(
        `${blk}.ffn_gate_up_exps.weight`,
        Array.from({ length: E }, (_, e) => [`${p}.mlp.experts.${e}.gate_proj.weight`, `${p}.mlp.experts.${e}.up_proj.weight`]),
        [H, 2 * Im, E],
      );
    } else {
      stacked(`${blk}.ffn_gate_exps.weight`, experts('gate_proj'), [H, Im, E]);
      stacked(`${blk}.ffn_up_exps.weight`, experts('up_proj'), [H, Im, E]);
    }
    stacked(`${blk}.ffn_down_exps.weight`, experts('down_proj'), [Im, H, E]);
    plain(`${blk}.ffn_gate_inp_shexp.weight`, `${p}.mlp.shared_expert_gate.weight`, undefined, options.sharedGate1d ? [H] : [H, 1]);
    plain(`${blk}.ffn_gate_shexp.weight`, `${p}.mlp.shared_expert.gate_proj.weight`);
    plain(`${blk}.ffn_up_shexp.weight`, `${p}.mlp.shared_expert.up_proj.weight`);
    plain(`${blk}.ffn_down_shexp.weight`, `${p}.mlp.shared_expert.down_proj.weight`);
  };

  plain('token_embd.weight', 'model.embed_tokens.weight');
  for (let i = 0; i < L; i++) layer(`blk.${i}`, `model.layers.${i}`, text.layer_types[i] === 'full_attention');
  plain('output_norm.weight', 'model.norm.weight', norm);
  if (!config.tie_word_embeddings) plain('output.weight', 'lm_head.weight');
  const mtpLayers: number = withMtp ? text.mtp_num_hidden_layers : 0;
  for (let j = 0; j < mtpLayers; j++) {
    const blk = `blk.${L + j}`;
    layer(blk, `mtp.layers.${j}`, true);
    plain(`${blk}.nextn.eh_proj.weight`, 'mtp.fc.weight');
    plain(`${blk}.nextn.enorm.weight`, 'mtp.pre_fc_norm_embedding.weight', norm);
    plain(`${blk}.nextn.hnorm.weight`, 'mtp.pre_fc_norm_hidden.weight', norm);
    plain(`${blk}.nextn.shared_head_norm.weight`, 'mtp.norm.weight', norm);
  }
  if (hf.size > 0) throw new Error(`writer: fixture tensors left unconverted: ${[...hf.keys()].join(', ')}`);

  // Quantise each GGUF tensor; record what reading it back must give, in reader space.
  const chooseType = options.types ?? defaultType;
  const tensors: TensorOut[] = [];
  const expected = new Map<string, ExpectedTensor>();
  for (const plan of plans) {
    const type = fitType(chooseType(plan.name, plan.dims), plan.dims[0]);
    const n = plan.index.length;
    const values = new Float32Array(n);
    for (let j = 0; j < n; j++) {
      const x = plan.parts[plan.part[j]].values[plan.index[j]];
      values[j] = plan.fwd ? plan.fwd(x) : x;
    }
    const data = quantize(type, values);
    tensors.push({ name: plan.name, dims: plan.dims, type, data });
    const held = dequantizeReference(type, data, n);
    const back = plan.parts.map((p) => new Float32Array(p.values.length));
    for (let j = 0; j < n; j++) back[plan.part[j]][plan.index[j]] = plan.inv ? plan.inv(held[j]) : held[j];
    plan.parts.forEach((p, k) => {
      const stored = plan.fwd ? p.values.map(plan.fwd) : p.values;
      expected.set(p.name, { shape: p.shape, hf: p.values, held: back[k], ggufName: plan.name, type, transformed: plan.fwd !== undefined, stored });
    });
  }

  let metadata = fixtureMetadata(dir, config, arch, withMtp ? text.mtp_num_hidden_layers : 0);
  if (options.alignment !== undefined) metadata.push(kv.u32('general.alignment', options.alignment));
  if (options.metadata) metadata = options.metadata(metadata);
  const out = mkdtempSync(join(tmpdir(), 'qwen-gguf-'));
  writtenDirs.push(out);
  const file = `${fixture}.gguf`;
  writeFileSync(join(out, file), encodeGguf(metadata, tensors, options.alignment ?? 32));
  return { dir: out, file, expected };
}

/** The metadata convert_hf_to_gguf.py writes for qwen35 / qwen35moe, with the fixture's tokenizer as arrays. */
function fixtureMetadata(dir: string, config: Record<string, any>, arch: string, mtpLayers: number): KeyValue[] {
  const text = config.text_config;
  const tokenizer = JSON.parse(readFileSync(join(dir, 'tokenizer.json'), 'utf8'));
  const tokConfig = JSON.parse(readFileSync(join(dir, 'tokenizer_config.json'), 'utf8'));
  const generation = JSON.parse(readFileSync(join(dir, 'generation_config.json'), 'utf8'));
  const a = (k: string) => `${arch}.${k}`;

  // get_vocab_base: every id up to vocab_size; added tokens CONTROL when special or when they look special.
  const byId = new Map<number, { token: string; type: number }>();
  for (const [token, id] of Object.entries(tokenizer.model.vocab as Record<string, number>)) byId.set(id, { token, type: 1 });
  for (const t of tokenizer.added_tokens as { id: number; content: string; special: boolean }[]) {
    const looksSpecial = t.content.startsWith('<|') && t.content.endsWith('|>');
    byId.set(t.id, { token: t.content, type: t.special || looksSpecial ? 3 : 4 });
  }
  const tokens: string[] = [];
  const types: number[] = [];
  for (let i = 0; i < text.vocab_size; i++) {
    const t = byId.get(i) ?? { token: `[PAD${i}]`, type: 5 };
    tokens.push(t.token);
    types.push(t.type);
  }
  const merges = (tokenizer.model.merges as (string | string[])[]).map((m) => (Array.isArray(m) ? m.join(' ') : m));
  const id = (token: string) => tokens.indexOf(token);

  const entries: KeyValue[] = [
    kv.str('general.architecture', arch),
    kv.str('general.type', 'model'),
    kv.str('general.name', 'Tiny Qwen3.5 fixture'),
    kv.u32('general.file_type', 1),
    kv.u32(a('block_count'), text.num_hidden_layers + mtpLayers),
    kv.u32(a('context_length'), text.max_position_embeddings),
    kv.u32(a('embedding_length'), text.hidden_size),
    kv.u32(a('attention.head_count'), text.num_attention_heads),
    kv.u32(a('attention.head_count_kv'), text.num_key_value_heads),
    kv.f32(a('rope.freq_base'), text.rope_parameters.rope_theta),
    kv.f32(a('attention.layer_norm_rms_epsilon'), text.rms_norm_eps),
    kv.u32(a('attention.key_length'), text.head_dim),
    kv.u32(a('attention.value_length'), text.head_dim),
    kv.u32(a('ssm.conv_kernel'), text.linear_conv_kernel_dim),
    kv.u32(a('ssm.state_size'), text.linear_key_head_dim),
    kv.u32(a('ssm.group_count'), text.linear_num_key_heads),
    kv.u32(a('ssm.time_step_rank'), text.linear_num_value_heads),
    kv.u32(a('ssm.inner_size'), text.linear_value_head_dim * text.linear_num_value_heads),
    kv.u32(a('full_attention_interval'), text.full_attention_interval),
    kv.u32(a('rope.dimension_count'), Math.round(text.head_dim * text.rope_parameters.partial_rotary_factor)),
    kv.array(a('rope.dimension_sections'), GgufType.I32, [...text.rope_parameters.mrope_section, 0]),
  ];
  if (arch === 'qwen35moe') {
    entries.push(
      kv.u32(a('expert_count'), text.num_experts),
      kv.u32(a('expert_used_count'), text.num_experts_per_tok),
      kv.u32(a('expert_feed_forward_length'), text.moe_intermediate_size),
      kv.u32(a('expert_shared_feed_forward_length'), text.shared_expert_intermediate_size),
    );
  } else {
    entries.push(kv.u32(a('feed_forward_length'), text.intermediate_size));
  }
  if (mtpLayers > 0) entries.push(kv.u32(a('nextn_predict_layers'), mtpLayers));
  entries.push(
    kv.u32('general.quantization_version', 2),
    kv.str('tokenizer.ggml.model', 'gpt2'),
    kv.str('tokenizer.ggml.pre', 'qwen35'),
    kv.array('tokenizer.ggml.tokens', GgufType.STRING, tokens),
    kv.array('tokenizer.ggml.token_type', GgufType.I32, types),
    kv.array('tokenizer.ggml.merges', GgufType.STRING, merges),
    kv.u32('tokenizer.ggml.eos_token_id', id(tokConfig.eos_token)),
    kv.u32('tokenizer.ggml.padding_token_id', id(tokConfig.pad_token)),
    kv.u32('tokenizer.ggml.bos_token_id', text.bos_token_id),
    kv.bool('tokenizer.ggml.add_bos_token', false),
    kv.str('tokenizer.chat_template', tokConfig.chat_template),
    kv.f32('general.sampling.temp', generation.temperature),
    kv.f32('general.sampling.top_p', generation.top_p),
    kv.i32('general.sampling.top_k', generation.top_k),
  );
  return entries;
}
