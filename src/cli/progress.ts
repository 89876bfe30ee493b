/** A one-line progress bar on a terminal; silent elsewhere (CI logs, pipes). */
export function progressBar(write: (text: string) => void, isTTY: boolean, label: string) {
  let last = 0;
  let drawn = false;
  return {
    update(done: number, total: number, detail = ''): void {
      const now = Date.now();
      if (!isTTY || (now - last < 100 && done < total)) return;
      last = now;
      drawn = true;
      const width = 30;
      const filled = total > 0 ? Math.round((done / total) * width) : 0;
      const mb = (n: number) => (n / 1e6).toFixed(1);
      write(`\r${label} [${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${mb(done)}/${mb(total)} MB ${detail.slice(-48).padEnd(48)}`);
    },
    done(): void {
      if (drawn) write('\n');
    },
  };
}

/**
 * Download progress over several files: on a terminal one line with bytes, rate and time left; elsewhere a
 * line per file as it starts. `update` with done = total ends the line.
 */
export function downloadProgress(write: (text: string) => void, isTTY: boolean) {
  const start = Date.now();
  let last = 0;
  let file = '';
  const mb = (n: number) => `${(n / 1e6).toFixed(1)} MB`;
  return (p: { file: string; doneBytes: number; totalBytes: number }): void => {
    if (!isTTY) {
      if (p.file !== file) write(`downloading ${p.file}\n`);
      file = p.file;
      return;
    }
    const now = Date.now();
    const finished = p.doneBytes >= p.totalBytes;
    if (now - last < 100 && !finished) return;
    last = now;
    const rate = p.doneBytes / Math.max((now - start) / 1000, 1e-3);
    const left = rate > 0 ? Math.ceil((p.totalBytes - p.doneBytes) / rate) : 0;
    const width = 30;
    const filled = p.totalBytes > 0 ? Math.round((p.doneBytes / p.totalBytes) * width) : 0;
    const eta = finished ? '' : ` ${Math.floor(left / 60)}:${String(left % 60).padStart(2, '0')} left`;
    write(
      `\rdownloading [${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${mb(p.doneBytes)}/${mb(p.totalBytes)} ${mb(rate)}/s${eta} ${p.file.slice(-40).padEnd(40)}`,
    );
    if (finished) write('\n');
  };
}
