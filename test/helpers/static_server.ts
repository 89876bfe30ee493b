import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { type IncomingMessage, type Server, type ServerResponse, createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { extname, resolve, sep } from 'node:path';

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.map': 'application/json; charset=utf-8',
  '.json': 'application/json; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
};

export interface StaticServer {
  url: string;
  /** Every request line seen, e.g. "GET /fixtures/x/model.safetensors bytes=0-0". */
  log: string[];
  /** Body bytes of every response sent, by path: what a client fetched. */
  sent: { path: string; bytes: number }[];
  close(): Promise<void>;
}

/** A folder or file path, or one served as by a server without Range support. */
export type Mount = string | { path: string; ranges: false };

/**
 * Takes a request over before it is served (returns true when it did): tests make a server that drops a
 * connection mid-body, stalls, never answers or sends an endless body. `file` is the mounted file the path
 * names (undefined when none).
 */
export type Intercept = (req: IncomingMessage, res: ServerResponse, file: string | undefined) => boolean | Promise<boolean>;

/**
 * A static HTTP server on 127.0.0.1 for the tests: `mounts` maps URL prefixes ('/dist/') to
 * folders, or exact paths ('/') to files. GET and HEAD, with single-range `Range` requests (206 with
 * Content-Range, 416 when unsatisfiable), as model files are read. A mount given as
 * `{ path, ranges: false }` ignores Range and always answers 200 with the whole file, to test
 * clients against servers that cannot serve byte ranges.
 */
export async function serveStatic(mounts: Record<string, Mount>, options: { intercept?: Intercept } = {}): Promise<StaticServer> {
  const log: string[] = [];
  const sent: { path: string; bytes: number }[] = [];
  const server: Server = createServer((req, res) => {
    handle(req, res, mounts, log, sent, options.intercept).catch((error: unknown) => {
      if (!res.headersSent) res.writeHead(500, { 'content-type': 'text/plain' });
      res.end(String(error));
    });
  });
  await new Promise<void>((done) => server.listen(0, '127.0.0.1', done));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    log,
    sent,
    close: () =>
      new Promise<void>((done) => {
        server.closeAllConnections();
        server.close(() => done());
      }),
  };
}

interface Target {
  file: string;
  ranges: boolean;
}

const targetOf = (mount: Mount): Target => (typeof mount === 'string' ? { file: mount, ranges: true } : { file: mount.path, ranges: false });

function resolvePath(pathname: string, mounts: Record<string, Mount>): Target | undefined {
  if (pathname in mounts && !pathname.endsWith('/')) return targetOf(mounts[pathname]);
  if (pathname === '/' && mounts['/']) return targetOf(mounts['/']);
  for (const [prefix, mount] of Object.entries(mounts)) {
    if (!prefix.endsWith('/') || prefix === '/' || !pathname.startsWith(prefix)) continue;
    const { file: dir, ranges } = targetOf(mount);
    const root = resolve(dir);
    const file = resolve(root, `.${sep}${pathname.slice(prefix.length)}`);
    if (file !== root && !file.startsWith(root + sep)) return undefined; // no way out of the folder
    return { file, ranges };
  }
  return undefined;
}

async function handle(
  req: IncomingMessage,
  res: ServerResponse,
  mounts: Record<string, Mount>,
  log: string[],
  sent: { path: string; bytes: number }[],
  intercept?: Intercept,
): Promise<void> {
  const url = new URL(req.url ?? '/', 'http://localhost');
  const range = req.headers.range;
  log.push(`${req.method} ${url.pathname}${range ? ` ${range}` : ''}`);
  if (intercept && (await intercept(req, res, resolvePath(decodeURIComponent(url.pathname), mounts)?.file))) return;
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    res.writeHead(405, { allow: 'GET, HEAD' }).end();
    return;
  }
  const target = resolvePath(decodeURIComponent(url.pathname), mounts);
  const info = target ? await stat(target.file).catch(() => undefined) : undefined;
  if (!target || !info?.isFile()) {
    res.writeHead(404, { 'content-type': 'text/plain' }).end('not found');
    return;
  }
  const { file, ranges } = target;
  const headers: Record<string, string | number> = {
    'content-type': TYPES[extname(file)] ?? 'application/octet-stream',
    'cache-control': 'no-store',
  };
  if (ranges) headers['accept-ranges'] = 'bytes';
  const size = info.size;
  let start = 0;
  let end = size - 1;
  let status = 200;
  if (range && ranges) {
    const m = /^bytes=(\d*)-(\d*)$/.exec(range.trim());
    if (!m || (m[1] === '' && m[2] === '')) {
      res.writeHead(416, { 'content-range': `bytes */${size}` }).end();
      return;
    }
    if (m[1] === '') {
      start = Math.max(0, size - Number(m[2]));
    } else {
      start = Number(m[1]);
      end = m[2] === '' ? size - 1 : Math.min(Number(m[2]), size - 1);
    }
    if (start >= size || start > end) {
      res.writeHead(416, { 'content-range': `bytes */${size}` }).end();
      return;
    }
    status = 206;
    headers['content-range'] = `bytes ${start}-${end}/${size}`;
  }
  headers['content-length'] = end - start + 1;
  res.writeHead(status, headers);
  if (req.method === 'HEAD') {
    res.end();
    return;
  }
  sent.push({ path: url.pathname, bytes: end - start + 1 });
  createReadStream(file, { start, end }).pipe(res);
}
