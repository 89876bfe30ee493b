import { runCli } from '../../cli/main.ts';
import { createNodeContext } from './gpu.ts';

const code = await runCli(process.argv.slice(2), {
  createContext: (o) => createNodeContext(o),
  stdout: (t) => process.stdout.write(t),
  stderr: (t) => process.stderr.write(t),
  isTTY: Boolean(process.stderr.isTTY),
});
// Dawn keeps the process alive while its instance exists: exit explicitly.
process.exitCode = code;
process.stdout.write('', () => process.exit(code));
