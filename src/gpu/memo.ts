/** The part of a Map that `memoise` uses, so a bounded cache can stand in for a Map. */
export interface PromiseCache<K, T> {
  get(key: K): Promise<T> | undefined;
  set(key: K, value: Promise<T>): unknown;
  delete(key: K): unknown;
}

/**
 * The promise `cache` holds under `key`, or else `build()`'s, held until it rejects: a failure (a pipeline that
 * did not compile, a plan whose build failed) is not remembered, so the next call builds again. Every caller
 * of a pending build shares it. Pipelines and dispatch plans are built this way.
 */
export function memoise<K, T>(cache: PromiseCache<K, T>, key: K, build: () => Promise<T>): Promise<T> {
  const held = cache.get(key);
  if (held) return held;
  const pending = build();
  cache.set(key, pending);
  pending.catch(() => {
    if (cache.get(key) === pending) cache.delete(key);
  });
  return pending;
}
