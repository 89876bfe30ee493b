/** A one-line progress bar on a terminal; silent elsewhere (CI logs, pipes). */
export function progressBar(write: (text: string) => void, isTTY: boolean, label: string) {
  let last = 0;
  return {
    update(done: number, total: number, detail = ''): void {
      const now = Date.now();
      if (!isTTY || (now - last < 100 && done < total)) return;
      last = now;
      const width = 30;
      const filled = total > 0 ? Math.round((done / total) * width) : 0;
      const mb = (n: number) => (n / 1e6).toFixed(1);
      write(`\r${label} [${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${mb(done)}/${mb(total)} MB ${detail.slice(-48).padEnd(48)}`);
    },
    done(): void {
      if (isTTY) write('\n');
    },
  };
}
