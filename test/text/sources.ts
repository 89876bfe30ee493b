import { readFileSync } from 'node:fs';
import { ModelFormatError } from '../../src/errors.ts';
import type { WeightSource } from '../../src/formats/source.ts';
import { type FixtureName, fixtureDir } from '../helpers/fixtures.ts';

export interface TextGolden {
  tokenizer_size: number;
  tokenizer_cases: { text: string; ids: number[]; decoded: string }[];
  chat_cases: {
    messages: { role: 'system' | 'user' | 'assistant'; content: string }[];
    add_generation_prompt: boolean;
    enable_thinking?: boolean;
    rendered: string;
  }[];
  special_ids: Record<string, number>;
  prompt_messages: { role: 'system' | 'user'; content: string }[];
  rendered_prompt: string;
  prompt_ids: number[];
}

export function textGolden(fixture: FixtureName): TextGolden {
  return JSON.parse(readFileSync(`${fixtureDir(fixture)}/golden.json`, 'utf8'));
}

export const TOKENIZER_FILES = ['tokenizer.json', 'tokenizer_config.json', 'generation_config.json'];

export function fixtureFile(fixture: FixtureName, file: string): string {
  return readFileSync(`${fixtureDir(fixture)}/${file}`, 'utf8');
}

/** A WeightSource over in-memory files, to make broken or unusual tokenizer folders without touching disk. */
export class MemorySource implements WeightSource {
  readonly location = 'memory';
  constructor(private readonly files: Record<string, string>) {}

  async has(file: string): Promise<boolean> {
    return file in this.files;
  }

  async size(file: string): Promise<number> {
    return new TextEncoder().encode(await this.text(file)).length;
  }

  async read(file: string, offset: number, length: number): Promise<Uint8Array> {
    return new TextEncoder().encode(await this.text(file)).subarray(offset, offset + length);
  }

  async text(file: string): Promise<string> {
    if (!(file in this.files)) throw new ModelFormatError(`missing from ${this.location}`, file);
    return this.files[file];
  }
}

/** The fixture's tokenizer files, with some replaced (a string), edited (a function of the parsed JSON) or removed (null). */
export function fixtureSource(fixture: FixtureName, changes: Record<string, string | null | ((json: Record<string, unknown>) => void)> = {}): MemorySource {
  const files: Record<string, string> = {};
  for (const file of TOKENIZER_FILES) files[file] = fixtureFile(fixture, file);
  for (const [file, change] of Object.entries(changes)) {
    if (change === null) delete files[file];
    else if (typeof change === 'string') files[file] = change;
    else {
      const json = JSON.parse(files[file]);
      change(json);
      files[file] = JSON.stringify(json);
    }
  }
  return new MemorySource(files);
}
