import { UsageError } from '../errors.ts';

/** `command --flag value --switch` parsing, with the errors a user needs to fix a command line (UsageError). */
export { UsageError };

export interface Args {
  command: string;
  flags: Map<string, string | true>;
}

/** What a user types out of habit for the usage or the version, where a command or a flag goes. */
const COMMAND_ALIASES: Readonly<Record<string, string>> = { '--help': 'help', '-h': 'help', '--version': 'version', '-V': 'version' };

export function parseArgs(argv: string[], switches: ReadonlySet<string>): Args {
  const [first = 'help', ...rest] = argv;
  const command = COMMAND_ALIASES[first] ?? first;
  const flags = new Map<string, string | true>();
  for (let i = 0; i < rest.length; i++) {
    const arg = rest[i];
    if (arg === '-h') {
      flags.set('help', true);
      continue;
    }
    if (!arg.startsWith('--')) throw new UsageError(`unexpected argument "${arg}"`);
    const eq = arg.indexOf('=');
    const name = eq > 0 ? arg.slice(2, eq) : arg.slice(2);
    if (eq > 0) flags.set(name, arg.slice(eq + 1));
    else if (switches.has(name)) flags.set(name, true);
    else {
      const value = rest[++i];
      if (value === undefined) throw new UsageError(`--${name} needs a value`);
      if (/^--[a-z]/.test(value)) throw new UsageError(`--${name} needs a value, not the flag ${value} (write --${name}=${value} for that value)`);
      flags.set(name, value);
    }
  }
  return { command, flags };
}

export function stringFlag(args: Args, name: string, required: true): string;
export function stringFlag(args: Args, name: string, required?: false): string | undefined;
export function stringFlag(args: Args, name: string, required = false): string | undefined {
  const v = args.flags.get(name);
  if (v === true) throw new UsageError(`--${name} needs a value`);
  if (v === undefined && required) throw new UsageError(`--${name} is required`);
  return v;
}

export function intFlag(args: Args, name: string, fallback?: number, min = 1): number {
  const v = stringFlag(args, name);
  if (v === undefined) {
    if (fallback === undefined) throw new UsageError(`--${name} is required`);
    return fallback;
  }
  const n = Number(v);
  if (!Number.isInteger(n) || n < min) throw new UsageError(`--${name} must be an integer ≥ ${min}, got "${v}"`);
  return n;
}

export function numberFlag(args: Args, name: string, min = -Infinity): number | undefined {
  const v = stringFlag(args, name);
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isFinite(n) || n < min) throw new UsageError(`--${name} must be a number${min > -Infinity ? ` ≥ ${min}` : ''}, got "${v}"`);
  return n;
}

/** A number > 0 (a duration, where 0 would fail everything at once). */
export function positiveFlag(args: Args, name: string): number | undefined {
  const n = numberFlag(args, name, 0);
  if (n === 0) throw new UsageError(`--${name} must be a number > 0, got "${stringFlag(args, name)}"`);
  return n;
}

export function idsFlag(args: Args, name: string): number[] {
  const text = stringFlag(args, name, true);
  const ids = text
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s.length > 0)
    .map(Number);
  if (ids.length === 0 || ids.some((n) => !Number.isInteger(n) || n < 0)) throw new UsageError(`--${name} must be comma-separated token ids, got "${text}"`);
  return ids;
}

export function choiceFlag<T extends string>(args: Args, name: string, choices: readonly T[]): T | undefined {
  const v = stringFlag(args, name);
  if (v !== undefined && !choices.includes(v as T)) throw new UsageError(`--${name} must be one of ${choices.join(', ')}, got "${v}"`);
  return v as T | undefined;
}

/** --dtype as the engine names it (int4 is the q4 layout); the default follows the adapter's shader-f16. */
export function dtypeFlag(args: Args, f16: boolean): 'f32' | 'f16' | 'q4' {
  const flag = choiceFlag(args, 'dtype', ['f32', 'f16', 'int4'] as const);
  return flag === 'int4' ? 'q4' : (flag ?? (f16 ? 'f16' : 'f32'));
}
