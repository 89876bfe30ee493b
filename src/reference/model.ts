import { ModelFormatError } from '../errors.ts';
import { bf16BitsToF32, f16BitsToF32 } from '../numeric/half.ts';
import { type TensorEntry, readCheckpointTensors } from '../formats/safetensors.ts';
import { type Qwen35Config, parseConfig } from '../model/config.ts';
import { type WeightSource, readJson } from '../formats/source.ts';

/**
 * The Qwen3.5 forward pass in plain TypeScript with f64 arithmetic, one token at a time, written from
 * spec §2 and independent of the GPU engine (its own weight reading, no fused tensors). Tests use it as the
 * oracle for checkpoints other than the fixtures (whose goldens check it in turn).
 */

type Vec = Float64Array;
interface Matrix {
  rows: number;
  cols: number;
  data: Float64Array;
}

export interface ReferenceModel {
  config: Qwen35Config;
  tensor(name: string): Matrix;
}

export async function loadReferenceModel(source: WeightSource): Promise<ReferenceModel> {
  const config = parseConfig(await readJson(source, 'config.json'));
  const entries = await readCheckpointTensors(source);
  const cache = new Map<string, Matrix>();
  const prefix = entries.has('model.language_model.embed_tokens.weight') ? 'model.language_model.' : 'model.';
  const raw = new Map<string, { entry: TensorEntry; bytes: Uint8Array }>();
  for (const entry of entries.values()) {
    if (entry.name.startsWith('model.visual.')) continue;
    raw.set(entry.name, { entry, bytes: await source.read(entry.file, entry.offset, entry.bytes) });
  }
  return {
    config,
    tensor(name: string): Matrix {
      const full = name.startsWith('mtp.') || name === 'lm_head.weight' ? name : prefix + name;
      let m = cache.get(full);
      if (!m) {
        const r = raw.get(full);
        if (!r) throw new ModelFormatError(`reference: no tensor ${full}`);
        m = decode(r.entry, r.bytes);
        cache.set(full, m);
      }
      return m;
    },
  };
}

function decode(entry: TensorEntry, bytes: Uint8Array): Matrix {
  const n = entry.shape.reduce((a, b) => a * b, 1);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const data = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    data[i] =
      entry.fileDtype === 'F32'
        ? view.getFloat32(4 * i, true)
        : entry.fileDtype === 'F16'
          ? f16BitsToF32(view.getUint16(2 * i, true))
          : bf16BitsToF32(view.getUint16(2 * i, true));
  }
  const cols = entry.shape[entry.shape.length - 1] ?? 1;
  return { rows: n / cols, cols, data };
}

/** y = W x for W [rows, cols] starting at row `first` of a (possibly 3-D, flattened) tensor. */
function matvec(w: Matrix, x: Vec, rows = w.rows, first = 0): Vec {
  const y = new Float64Array(rows);
  for (let r = 0; r < rows; r++) {
    let s = 0;
    const base = (first + r) * w.cols;
    for (let c = 0; c < w.cols; c++) s += w.data[base + c] * x[c];
    y[r] = s;
  }
  return y;
}

const sigmoid = (x: number) => 1 / (1 + Math.exp(-x));
const silu = (x: number) => x * sigmoid(x);
const softplus = (x: number) => (x > 20 ? x : Math.log1p(Math.exp(x)));

/** Qwen3_5RMSNorm: x · rsqrt(mean x² + eps) · (1 + w), over consecutive groups of w.length. */
function rmsNorm1p(x: Vec, w: Matrix, eps: number): Vec {
  const n = w.data.length;
  const y = new Float64Array(x.length);
  for (let g = 0; g < x.length; g += n) {
    let ss = 0;
    for (let i = 0; i < n; i++) ss += x[g + i] ** 2;
    const inv = 1 / Math.sqrt(ss / n + eps);
    for (let i = 0; i < n; i++) y[g + i] = x[g + i] * inv * (1 + w.data[i]);
  }
  return y;
}

const add = (a: Vec, b: Vec) => {
  for (let i = 0; i < a.length; i++) a[i] += b[i];
};

interface LayerState {
  conv?: Vec[];
  s?: Float64Array[];
  keys?: Vec[];
  values?: Vec[];
}

/** A sequence being decoded by the reference: call `next(id)` per token, get log-probabilities. */
export class ReferenceSession {
  private readonly states: LayerState[];
  private pos = 0;

  constructor(private readonly m: ReferenceModel) {
    this.states = m.config.layerTypes.map(() => ({}));
  }

  /** Feeds one token; returns log_softmax of the logits over all vocab_size rows. */
  next(id: number): Vec {
    const c = this.m.config;
    const t = (name: string) => this.m.tensor(name);
    const emb = t('embed_tokens.weight');
    let h: Vec = emb.data.slice(id * c.hiddenSize, (id + 1) * c.hiddenSize);
    c.layerTypes.forEach((type, i) => {
      const p = `layers.${i}.`;
      const x = rmsNorm1p(h, t(`${p}input_layernorm.weight`), c.rmsNormEps);
      add(h, type === 'full_attention' ? this.attention(p, x, this.states[i]) : this.deltaNet(p, x, this.states[i]));
      const y = rmsNorm1p(h, t(`${p}post_attention_layernorm.weight`), c.rmsNormEps);
      add(h, c.moe ? this.moe(p, y) : this.mlp(p, y));
    });
    h = rmsNorm1p(h, t('norm.weight'), c.rmsNormEps);
    const logits = matvec(c.tieWordEmbeddings ? emb : t('lm_head.weight'), h);
    this.pos++;
    let max = -Infinity;
    for (const v of logits) max = Math.max(max, v);
    let sum = 0;
    for (const v of logits) sum += Math.exp(v - max);
    const lse = max + Math.log(sum);
    return logits.map((v) => v - lse);
  }

  private deltaNet(p: string, x: Vec, s: LayerState): Vec {
    const c = this.m.config;
    const t = (name: string) => this.m.tensor(`${p}linear_attn.${name}`);
    const { linearKeyHeads: nk, linearValueHeads: nv, linearKeyDim: dk, linearValueDim: dv, convKernel: K } = c;
    const convDim = 2 * nk * dk + nv * dv;
    const mixed = matvec(t('in_proj_qkv.weight'), x);
    const z = matvec(t('in_proj_z.weight'), x);
    const b = matvec(t('in_proj_b.weight'), x);
    const a = matvec(t('in_proj_a.weight'), x);
    s.conv ??= Array.from({ length: K - 1 }, () => new Float64Array(convDim));
    const window = [...s.conv, mixed];
    const w = t('conv1d.weight');
    const y = new Float64Array(convDim);
    for (let ch = 0; ch < convDim; ch++) {
      let acc = 0;
      for (let j = 0; j < K; j++) acc += w.data[ch * K + j] * window[j][ch];
      y[ch] = silu(acc);
    }
    s.conv = window.slice(1);
    const l2 = (off: number, scale: number) => {
      let ss = 0;
      for (let i = 0; i < dk; i++) ss += y[off + i] ** 2;
      const inv = scale / Math.sqrt(ss + 1e-6);
      return Float64Array.from({ length: dk }, (_, i) => y[off + i] * inv);
    };
    const q = Array.from({ length: nk }, (_, j) => l2(j * dk, 1 / Math.sqrt(dk)));
    const k = Array.from({ length: nk }, (_, j) => l2((nk + j) * dk, 1));
    const aLog = t('A_log').data;
    const dtBias = t('dt_bias').data;
    const norm = t('norm.weight').data;
    s.s ??= Array.from({ length: nv }, () => new Float64Array(dk * dv));
    const out = new Float64Array(nv * dv);
    for (let h = 0; h < nv; h++) {
      const j = Math.floor(h / (nv / nk));
      const beta = sigmoid(b[h]);
      const decay = Math.exp(-Math.exp(aLog[h]) * softplus(a[h] + dtBias[h]));
      const S = s.s[h];
      const v = y.subarray(2 * nk * dk + h * dv, 2 * nk * dk + (h + 1) * dv);
      for (let i = 0; i < S.length; i++) S[i] *= decay;
      const u = new Float64Array(dv);
      for (let e = 0; e < dv; e++) {
        let kv = 0;
        for (let d = 0; d < dk; d++) kv += S[d * dv + e] * k[j][d];
        u[e] = beta * (v[e] - kv);
      }
      for (let d = 0; d < dk; d++) for (let e = 0; e < dv; e++) S[d * dv + e] += k[j][d] * u[e];
      const o = new Float64Array(dv);
      for (let e = 0; e < dv; e++) {
        let acc = 0;
        for (let d = 0; d < dk; d++) acc += S[d * dv + e] * q[j][d];
        o[e] = acc;
      }
      let ss = 0;
      for (const v2 of o) ss += v2 * v2;
      const inv = 1 / Math.sqrt(ss / dv + c.rmsNormEps);
      for (let e = 0; e < dv; e++) out[h * dv + e] = o[e] * inv * norm[e] * silu(z[h * dv + e]);
    }
    return matvec(t('out_proj.weight'), out);
  }

  private attention(p: string, x: Vec, s: LayerState): Vec {
    const c = this.m.config;
    const t = (name: string) => this.m.tensor(`${p}self_attn.${name}`);
    const { numHeads: nq, numKvHeads: nkv, headDim: D, rotaryDim: R } = c;
    const qg = matvec(t('q_proj.weight'), x);
    const kAll = rmsNorm1p(matvec(t('k_proj.weight'), x), t('k_norm.weight'), c.rmsNormEps);
    const vAll = matvec(t('v_proj.weight'), x);
    const rope = (v: Vec) => {
      const half = R / 2;
      const out = v.slice();
      for (let i = 0; i < half; i++) {
        const angle = this.pos * c.ropeTheta ** ((-2 * i) / R);
        const cos = Math.cos(angle);
        const sin = Math.sin(angle);
        out[i] = v[i] * cos - v[i + half] * sin;
        out[i + half] = v[i + half] * cos + v[i] * sin;
      }
      return out;
    };
    s.keys ??= [];
    s.values ??= [];
    for (let g = 0; g < nkv; g++) {
      s.keys.push(rope(kAll.subarray(g * D, (g + 1) * D)));
      s.values.push(vAll.slice(g * D, (g + 1) * D));
    }
    const out = new Float64Array(nq * D);
    const qNorm = t('q_norm.weight');
    for (let h = 0; h < nq; h++) {
      const g = Math.floor(h / (nq / nkv));
      const q = rope(rmsNorm1p(qg.subarray(h * 2 * D, h * 2 * D + D), qNorm, c.rmsNormEps));
      const n = this.pos + 1;
      const scores = new Float64Array(n);
      let max = -Infinity;
      for (let j = 0; j < n; j++) {
        const key = s.keys[j * nkv + g];
        let d = 0;
        for (let i = 0; i < D; i++) d += q[i] * key[i];
        scores[j] = d / Math.sqrt(D);
        max = Math.max(max, scores[j]);
      }
      let sum = 0;
      for (let j = 0; j < n; j++) sum += scores[j] = Math.exp(scores[j] - max);
      for (let i = 0; i < D; i++) {
        let acc = 0;
        for (let j = 0; j < n; j++) acc += scores[j] * s.values[j * nkv + g][i];
        out[h * D + i] = (acc / sum) * sigmoid(qg[h * 2 * D + D + i]);
      }
    }
    return matvec(t('o_proj.weight'), out);
  }

  private mlp(p: string, x: Vec): Vec {
    const t = (name: string) => this.m.tensor(`${p}mlp.${name}`);
    const g = matvec(t('gate_proj.weight'), x);
    const u = matvec(t('up_proj.weight'), x);
    return matvec(
      t('down_proj.weight'),
      g.map((v, i) => silu(v) * u[i]),
    );
  }

  private moe(p: string, x: Vec): Vec {
    const c = this.m.config;
    const { numExperts: E, topk, expertIntermediate: Im } = c.moe!;
    const has = (name: string) => {
      try {
        this.m.tensor(`${p}mlp.${name}`);
        return true;
      } catch {
        return false;
      }
    };
    const t = (name: string) => this.m.tensor(`${p}mlp.${name}`);
    const logits = matvec(t('gate.weight'), x);
    let max = -Infinity;
    for (const v of logits) max = Math.max(max, v);
    const probs = logits.map((v) => Math.exp(v - max));
    const total = probs.reduce((a, b) => a + b, 0);
    const order = Array.from({ length: E }, (_, e) => e)
      .sort((a, b) => probs[b] - probs[a] || a - b)
      .slice(0, topk);
    const chosen = order.reduce((s, e) => s + probs[e] / total, 0);
    const y = new Float64Array(c.hiddenSize);
    const fused = has('experts.gate_up_proj');
    for (const e of order) {
      const weight = probs[e] / total / chosen;
      let g: Vec, u: Vec, down: Vec;
      if (fused) {
        const gu = t('experts.gate_up_proj');
        const guExpert = { rows: 2 * Im, cols: gu.cols, data: gu.data };
        g = matvec(guExpert, x, Im, e * 2 * Im);
        u = matvec(guExpert, x, Im, e * 2 * Im + Im);
        const d = t('experts.down_proj');
        const act = g.map((v, i) => silu(v) * u[i]);
        down = matvec(d, act, c.hiddenSize, e * c.hiddenSize);
      } else {
        g = matvec(t(`experts.${e}.gate_proj.weight`), x);
        u = matvec(t(`experts.${e}.up_proj.weight`), x);
        down = matvec(
          t(`experts.${e}.down_proj.weight`),
          g.map((v, i) => silu(v) * u[i]),
        );
      }
      for (let i = 0; i < y.length; i++) y[i] += weight * down[i];
    }
    const sg = t('shared_expert.gate_proj.weight');
    const gs = matvec(sg, x);
    const us = matvec(t('shared_expert.up_proj.weight'), x);
    const shared = matvec(
      t('shared_expert.down_proj.weight'),
      gs.map((v, i) => silu(v) * us[i]),
    );
    const gate = sigmoid(matvec(t('shared_expert_gate.weight'), x)[0]);
    for (let i = 0; i < y.length; i++) y[i] += gate * shared[i];
    return y;
  }
}

/** Greedy ids over ids < tokenizerSize, with each step's margin between the two best logprobs. */
export function referenceGreedy(session: ReferenceSession, prompt: number[], steps: number, tokenizerSize: number) {
  let lp: Vec = new Float64Array(0);
  for (const id of prompt) lp = session.next(id);
  const ids: number[] = [];
  const margins: number[] = [];
  for (let s = 0; s < steps; s++) {
    let best = 0;
    let second = -Infinity;
    for (let i = 1; i < tokenizerSize; i++) {
      if (lp[i] > lp[best]) {
        second = lp[best];
        best = i;
      } else if (lp[i] > second) second = lp[i];
    }
    ids.push(best);
    margins.push(lp[best] - second);
    if (s + 1 < steps) lp = session.next(best);
  }
  return { ids, margins };
}
