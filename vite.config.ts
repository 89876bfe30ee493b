import { existsSync, statSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { type Plugin, defineConfig } from 'vite';

/** The shared tiny test models, which `npm start` serves at /fixtures/ (e.g. /?model=/fixtures/tiny-qwen35/). */
const FIXTURES = fileURLToPath(new URL('../shared/fixtures/', import.meta.url));
const PUBLIC = fileURLToPath(new URL('./public/', import.meta.url));

/**
 * /fixtures/<path> on the dev server: the file under ../shared/fixtures through Vite's /@fs/ file serving
 * (Range requests included), and a plain 404 for a file that is not there (never the page's HTML).
 */
function fixtures(): Plugin {
  return {
    name: 'qwen-fixtures',
    configureServer(server) {
      server.middlewares.use((req, res, next) => {
        const url = new URL(req.url ?? '/', 'http://localhost');
        if (!url.pathname.startsWith('/fixtures/')) return next();
        const file = FIXTURES + decodeURIComponent(url.pathname.slice('/fixtures/'.length));
        if (file.includes('..') || !existsSync(file) || !statSync(file).isFile()) {
          res.statusCode = 404;
          res.end('not found');
          return;
        }
        req.url = `/@fs${file}`;
        next();
      });
    },
  };
}

/**
 * The demo build's list of its own files (shell.json), which public/sw.js caches on install so that the demo opens
 * without a network once it has been visited.
 */
function offlineShell(): Plugin {
  return {
    name: 'qwen-offline-shell',
    apply: 'build',
    enforce: 'post',
    generateBundle(_options, bundle) {
      const files = Object.keys(bundle).filter((file) => !file.endsWith('.map'));
      this.emitFile({ type: 'asset', fileName: 'shell.json', source: JSON.stringify([...new Set(['index.html', ...files])]) });
    },
  };
}

/**
 * `npm run build`: the browser library as ESM in dist/browser: index.js (src/hosts/browser/index.ts), the
 * `<qwen-chat>` element in qwen-chat.js (widget.ts, which imports index.js), and the engine's worker beside
 * them (worker.js), found by a URL relative to the module, so any static server can host the folder.
 * `vite build --mode demo --outDir DIR`: the demo page (demo/) built for production, with its service worker
 *   (public/sw.js) and the list of files it keeps (shell.json), so that it opens offline once visited.
 * `npm start` (vite dev server): the demo in demo/, importing the sources directly, with /fixtures/.
 */
export default defineConfig(({ command, mode }) =>
  command === 'build' && mode !== 'demo'
    ? {
        publicDir: false,
        base: './',
        build: {
          outDir: 'dist/browser',
          emptyOutDir: true,
          target: 'es2022',
          sourcemap: true,
          minify: false,
          assetsDir: '',
          lib: {
            entry: { index: 'src/hosts/browser/index.ts', 'qwen-chat': 'src/hosts/browser/widget.ts' },
            formats: ['es'],
            fileName: (_format, name) => `${name}.js`,
          },
          // The widget imports index.js rather than sharing a third chunk with it: index.js stays the whole client.
          rolldownOptions: { preserveEntrySignatures: 'allow-extension' },
        },
        worker: { format: 'es', rolldownOptions: { output: { entryFileNames: '[name].js', chunkFileNames: '[name]-[hash].js' } } },
      }
    : {
        root: 'demo',
        base: './',
        // public/sw.js: the demo's service worker, beside index.html in the build; the dev server leaves it unregistered.
        publicDir: PUBLIC,
        define: { __OFFLINE_SHELL__: JSON.stringify(command === 'build') },
        plugins: [fixtures(), offlineShell()],
        // The demo imports ../src; models can also be served from ../shared/fixtures through /@fs/.
        server: { fs: { allow: ['..', '../../shared'] } },
        build: { target: 'es2022', emptyOutDir: true, outDir: '../dist/demo' },
        worker: { format: 'es' },
      },
);
