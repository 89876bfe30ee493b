// The demo's service worker: it keeps the page's own files (its HTML, its scripts, the engine's worker) so that the
// demo opens without a network once it has been visited. Models are not kept here: the engine keeps them in
// IndexedDB. On install it caches what shell.json lists (written by the demo build, `vite build --mode demo`);
// afterwards a request for one of the page's files goes to the network first, keeping what arrives, so a new
// build is picked up whenever the server can be reached, and to the cache only when the network fails.
const CACHE = 'qwen-webgpu-demo-shell';
const SHELL_DESTINATIONS = ['script', 'style', 'worker', 'manifest', 'image', 'font'];

self.addEventListener('install', (event) => {
  event.waitUntil(
    (async () => {
      const response = await fetch('shell.json', { cache: 'no-store' });
      if (!response.ok) throw new Error(`shell.json: HTTP ${response.status}`);
      const files = await response.json();
      const cache = await caches.open(CACHE);
      await cache.addAll(files.map((file) => new URL(file, self.registration.scope).href));
      await self.skipWaiting();
    })(),
  );
});

// The page that registered this worker is served by it from now on, not only after its next load.
self.addEventListener('activate', (event) => event.waitUntil(self.clients.claim()));

self.addEventListener('fetch', (event) => {
  const request = event.request;
  if (!isShell(request)) return;
  event.respondWith(networkElseCache(event, request));
});

/** A file of the page under this worker's scope; never a model's bytes (fetched with no destination, or ranged). */
function isShell(request) {
  if (request.method !== 'GET' || request.headers.has('range') || !request.url.startsWith(self.registration.scope)) return false;
  return request.mode === 'navigate' || SHELL_DESTINATIONS.includes(request.destination);
}

async function networkElseCache(event, request) {
  // A page is kept under its address without the query (`?model=` varies), as install cached it.
  const key = request.mode === 'navigate' ? withoutQuery(request.url) : request;
  const cache = await caches.open(CACHE);
  try {
    const response = await fetch(request);
    if (response.ok) event.waitUntil(cache.put(key, response.clone()));
    return response;
  } catch (error) {
    // A folder's address is its index.html, which install kept (not every server answers for the folder itself).
    const kept = (await cache.match(key)) ?? (typeof key === 'string' && key.endsWith('/') ? await cache.match(`${key}index.html`) : undefined);
    if (kept) return kept;
    throw error;
  }
}

function withoutQuery(url) {
  const u = new URL(url);
  u.search = '';
  u.hash = '';
  return u.href;
}
