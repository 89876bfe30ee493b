import { ModelFormatError } from '../errors.ts';
import type { WeightSource } from './source.ts';
import { type GgmlType, ggmlRowBytes, ggmlTypeById } from './gguf_types.ts';

/**
 * The GGUF header (v2/v3, little-endian): magic, version, counts, metadata key/values, tensor infos, then the
 * aligned data section. Read forward through WeightSource.read in chunks; every count, length, dimension and
 * offset is checked against the bytes the file can still hold before anything is allocated from it.
 */

export type GgufScalar = number | bigint | boolean | string;
export type GgufValue = GgufScalar | GgufScalar[];

export interface GgufTensorInfo {
  name: string;
  /** ggml order: dims[0] = ne0, the innermost (contiguous) dimension. */
  dims: number[];
  type: GgmlType;
  /** Absolute byte offset of the data in the file. */
  offset: number;
  bytes: number;
}

export interface GgufHeader {
  file: string;
  fileSize: number;
  version: number;
  metadata: Map<string, GgufValue>;
  tensors: GgufTensorInfo[];
  alignment: number;
  dataOffset: number;
}

const MAGIC = 0x46554747; // "GGUF" read as a little-endian u32
const CHUNK = 4 * 1024 * 1024;
const MAX_STRING = 64 * 1024 * 1024;
/** ggml's GGML_MAX_DIMS and GGML_MAX_NAME (names hold at most 63 bytes). */
const MAX_DIMS = 4;
const MAX_NAME_BYTES = 63;
const MAX_ALIGNMENT = 1 << 20;

/** GGUF metadata value types (gguf_type). */
const ValueType = { U8: 0, I8: 1, U16: 2, I16: 3, U32: 4, I32: 5, F32: 6, BOOL: 7, STRING: 8, ARRAY: 9, U64: 10, I64: 11, F64: 12 } as const;
type ValueType = (typeof ValueType)[keyof typeof ValueType];
const SCALAR_BYTES = [1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8];
const TYPE_NAMES = ['u8', 'i8', 'u16', 'i16', 'u32', 'i32', 'f32', 'bool', 'string', 'array', 'u64', 'i64', 'f64'];

/** A forward-only reader over one file with a refillable window. */
class HeaderReader {
  pos = 0;
  private buf: Uint8Array = new Uint8Array(0);
  private view = new DataView(this.buf.buffer);
  private bufStart = 0;
  private readonly decoder = new TextDecoder('utf-8', { fatal: true });

  constructor(
    private readonly source: WeightSource,
    readonly file: string,
    readonly fileSize: number,
  ) {}

  fail(message: string, tensor?: string): never {
    throw new ModelFormatError(message, this.file, tensor);
  }

  get remaining(): number {
    return this.fileSize - this.pos;
  }

  /** Makes bytes [pos, pos + n) readable; `field` names what is being read when the file is too short. */
  async need(n: number, field: string): Promise<void> {
    if (this.pos + n <= this.bufStart + this.buf.length) return;
    if (n > this.remaining) this.fail(`${field}: needs ${n} bytes at offset ${this.pos}, but the file ends at ${this.fileSize} (truncated?)`);
    const length = Math.min(Math.max(n, CHUNK), this.remaining);
    this.buf = await this.source.read(this.file, this.pos, length);
    this.view = new DataView(this.buf.buffer, this.buf.byteOffset, this.buf.byteLength);
    this.bufStart = this.pos;
  }

  private at(n: number): number {
    const at = this.pos - this.bufStart;
    this.pos += n;
    return at;
  }

  async u32(field: string): Promise<number> {
    await this.need(4, field);
    return this.view.getUint32(this.at(4), true);
  }

  /** A u64 as a JS number; values past 2^53 are refused (nothing in a real file comes close). */
  async u64(field: string): Promise<number> {
    await this.need(8, field);
    const at = this.at(8);
    const lo = this.view.getUint32(at, true);
    const hi = this.view.getUint32(at + 4, true);
    if (hi >= 0x200000) this.fail(`${field}: ${this.view.getBigUint64(at, true)} is beyond any plausible size`);
    return hi * 2 ** 32 + lo;
  }

  async string(field: string, maxBytes = MAX_STRING): Promise<string> {
    const length = await this.u64(`${field} (string length)`);
    if (length > maxBytes) this.fail(`${field}: string of ${length} bytes is longer than the limit of ${maxBytes}`);
    if (length > this.remaining) this.fail(`${field}: string of ${length} bytes runs past the end of the file (${this.remaining} bytes left)`);
    await this.need(length, field);
    const at = this.at(length);
    try {
      return this.decoder.decode(this.buf.subarray(at, at + length));
    } catch {
      return this.fail(`${field}: string is not valid UTF-8`);
    }
  }

  async scalar(type: ValueType, field: string): Promise<GgufScalar> {
    if (type === ValueType.STRING) return this.string(field);
    await this.need(SCALAR_BYTES[type], field);
    return this.number(type, this.at(SCALAR_BYTES[type]));
  }

  /**
   * The next scalar if its bytes are already buffered (almost every element of a big array), else undefined:
   * then the caller takes the async path, which also reports what is wrong.
   */
  scalarNow(type: ValueType): GgufScalar | undefined {
    const end = this.bufStart + this.buf.length;
    if (type !== ValueType.STRING) return this.pos + SCALAR_BYTES[type] <= end ? this.number(type, this.at(SCALAR_BYTES[type])) : undefined;
    if (this.pos + 8 > end) return undefined;
    const at = this.pos - this.bufStart;
    const length = this.view.getUint32(at, true);
    if (this.view.getUint32(at + 4, true) !== 0 || this.pos + 8 + length > end) return undefined;
    let text: string;
    try {
      text = this.decoder.decode(this.buf.subarray(at + 8, at + 8 + length));
    } catch {
      return undefined;
    }
    this.pos += 8 + length;
    return text;
  }

  private number(type: ValueType, at: number): GgufScalar {
    const v = this.view;
    switch (type) {
      case ValueType.U8:
        return v.getUint8(at);
      case ValueType.I8:
        return v.getInt8(at);
      case ValueType.U16:
        return v.getUint16(at, true);
      case ValueType.I16:
        return v.getInt16(at, true);
      case ValueType.U32:
        return v.getUint32(at, true);
      case ValueType.I32:
        return v.getInt32(at, true);
      case ValueType.F32:
        return shortestF32(v.getFloat32(at, true));
      case ValueType.BOOL:
        return v.getUint8(at) !== 0;
      case ValueType.U64:
        return safeNumber(v.getBigUint64(at, true));
      case ValueType.I64:
        return safeNumber(v.getBigInt64(at, true));
      case ValueType.F64:
        return v.getFloat64(at, true);
      default:
        return this.fail(`value type ${type} is not a number`);
    }
  }
}

const safeNumber = (v: bigint): number | bigint => (v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v);

/** The shortest decimal that is the same f32 (1e-6 rather than 9.999999974752427e-7) for synthesised JSON. */
function shortestF32(x: number): number {
  if (!Number.isFinite(x)) return x;
  for (let digits = 1; digits < 9; digits++) {
    const candidate = Number(x.toPrecision(digits));
    if (Math.fround(candidate) === x) return candidate;
  }
  return x;
}

function valueType(reader: HeaderReader, raw: number, field: string): ValueType {
  if (!Number.isInteger(raw) || raw < 0 || raw > ValueType.F64) reader.fail(`${field}: unknown value type ${raw}`);
  return raw as ValueType;
}

async function readValue(reader: HeaderReader, key: string): Promise<GgufValue> {
  const type = valueType(reader, await reader.u32(`${key} (value type)`), key);
  if (type !== ValueType.ARRAY) return reader.scalar(type, key);
  const elementType = valueType(reader, await reader.u32(`${key} (array element type)`), key);
  if (elementType === ValueType.ARRAY) reader.fail(`${key}: nested arrays are not supported`);
  const count = await reader.u64(`${key} (array length)`);
  const minBytes = elementType === ValueType.STRING ? 8 : SCALAR_BYTES[elementType];
  if (count * minBytes > reader.remaining) {
    reader.fail(`${key}: array of ${count} ${TYPE_NAMES[elementType]} needs at least ${count * minBytes} bytes, but only ${reader.remaining} remain`);
  }
  const values: GgufScalar[] = new Array(count);
  for (let i = 0; i < count; i++) values[i] = reader.scalarNow(elementType) ?? (await reader.scalar(elementType, key));
  return values;
}

async function readTensorInfo(reader: HeaderReader, index: number): Promise<{ name: string; dims: number[]; type: GgmlType; offset: number }> {
  const field = `tensor info ${index}`;
  const name = await reader.string(`${field} name`, 1 << 16);
  if (name === '') reader.fail(`${field}: empty tensor name`);
  if (new TextEncoder().encode(name).length > MAX_NAME_BYTES) reader.fail(`tensor name longer than ${MAX_NAME_BYTES} bytes`, name);
  const nDims = await reader.u32(`${field} n_dims`);
  if (nDims < 1 || nDims > MAX_DIMS) reader.fail(`n_dims ${nDims} is not between 1 and ${MAX_DIMS}`, name);
  const dims: number[] = [];
  let elements = 1;
  for (let d = 0; d < nDims; d++) {
    const n = await reader.u64(`${name} dims[${d}]`);
    if (n < 1) reader.fail(`dimension ${d} is ${n}`, name);
    elements *= n;
    // Even at one bit per element a real tensor fits in the file: anything larger is a lie.
    if (elements > reader.fileSize * 8) reader.fail(`dims [${[...dims, n]}] hold more elements than a ${reader.fileSize}-byte file can`, name);
    dims.push(n);
  }
  const typeId = await reader.u32(`${name} type`);
  const type = ggmlTypeById(typeId);
  if (!type) reader.fail(`unknown ggml type ${typeId}`, name);
  if (dims[0] % type.blockSize !== 0) reader.fail(`row length ${dims[0]} is not a multiple of the ${type.name} block size ${type.blockSize}`, name);
  const offset = await reader.u64(`${name} offset`);
  return { name, dims, type, offset };
}

/** Reads and checks a GGUF file's header. */
export async function readGgufHeader(source: WeightSource, file: string): Promise<GgufHeader> {
  const fileSize = await source.size(file);
  const reader: HeaderReader = new HeaderReader(source, file, fileSize);
  if (fileSize < 24) reader.fail(`${fileSize} bytes is too short for a GGUF file`);
  const magic = await reader.u32('magic');
  if (magic !== MAGIC) reader.fail('not a GGUF file (the magic bytes are not "GGUF")');
  const version = await reader.u32('version');
  if ((version & 0xffff) === 0 && version !== 0) reader.fail('big-endian GGUF files are not supported');
  if (version !== 2 && version !== 3) reader.fail(`version ${version} is not supported (2 or 3)`);
  const tensorCount = await reader.u64('tensor_count');
  const kvCount = await reader.u64('metadata_kv_count');
  // The smallest key/value is 8 + 1 + 4 + 1 bytes; the smallest tensor info 8 + 1 + 4 + 8 + 4 + 8.
  if (kvCount * 14 > reader.remaining) reader.fail(`metadata_kv_count ${kvCount} cannot fit in the ${reader.remaining} bytes left`);
  if (tensorCount * 33 > reader.remaining) reader.fail(`tensor_count ${tensorCount} cannot fit in the ${reader.remaining} bytes left`);

  const metadata = new Map<string, GgufValue>();
  for (let i = 0; i < kvCount; i++) {
    const key = await reader.string(`metadata key ${i}`, 1 << 16);
    if (metadata.has(key)) reader.fail(`metadata key ${key} appears twice`);
    metadata.set(key, await readValue(reader, key));
  }

  const alignment = metadata.get('general.alignment') ?? 32;
  if (typeof alignment !== 'number' || !Number.isInteger(alignment) || alignment < 1 || alignment > MAX_ALIGNMENT || (alignment & (alignment - 1)) !== 0) {
    reader.fail(`general.alignment ${String(alignment)} is not a power of two between 1 and ${MAX_ALIGNMENT}`);
  }

  const infos = [];
  const names = new Set<string>();
  for (let i = 0; i < tensorCount; i++) {
    const info = await readTensorInfo(reader, i);
    if (names.has(info.name)) reader.fail('tensor name appears twice', info.name);
    names.add(info.name);
    infos.push(info);
  }
  const dataOffset = Math.ceil(reader.pos / alignment) * alignment;
  const dataBytes = fileSize - dataOffset;
  const tensors: GgufTensorInfo[] = infos.map(({ name, dims, type, offset }) => {
    if (offset % alignment !== 0) reader.fail(`offset ${offset} is not a multiple of the alignment ${alignment}`, name);
    const bytes = ggmlRowBytes(type, dims[0]) * dims.slice(1).reduce((a, b) => a * b, 1);
    if (offset + bytes > dataBytes) {
      reader.fail(`data [${offset}, ${offset + bytes}) of the data section runs past its end at ${Math.max(0, dataBytes)} (truncated?)`, name);
    }
    return { name, dims, type, offset: dataOffset + offset, bytes };
  });
  const byOffset = [...tensors].sort((a, b) => a.offset - b.offset);
  for (let i = 1; i < byOffset.length; i++) {
    const [prev, next] = [byOffset[i - 1], byOffset[i]];
    if (prev.offset + prev.bytes > next.offset) reader.fail(`data overlaps ${prev.name}'s`, next.name);
  }
  return { file, fileSize, version, metadata, tensors, alignment, dataOffset };
}
