/**
 * Download progress of an apt packages step, read from apt-get's own output (it prints one line per
 * archive, with its size, and no progress meter without a terminal): "Need to get X of archives."
 * gives the total, each "Get:N ... [size]" after it adds to what is done, "Fetched" ends it.
 * apt counts in SI units (kB = 1000 B).
 */
export interface AptDownload {
  done: number;
  total: number;
}

const UNITS: Record<string, number> = { B: 1, kB: 1e3, MB: 1e6, GB: 1e9 };

function bytes(value: string, unit: string): number {
  return Math.round(Number(value.replace(/,/g, '')) * (UNITS[unit] ?? 1));
}

export class AptDownloadProgress {
  private state: AptDownload | undefined;

  /** Feed one output line; returns the progress when the line changed it. */
  line(text: string): AptDownload | undefined {
    // "Need to get 704 kB/16.5 MB of archives." names what is missing from the cache first.
    const need = /^Need to get ([\d.,]+) ([kMG]?B)(?:\/[\d.,]+ [kMG]?B)? of archives\./.exec(text);
    if (need) {
      const total = bytes(need[1]!, need[2]!);
      // Everything already in the .deb cache: nothing to show.
      this.state = total > 0 ? { done: 0, total } : undefined;
      return this.state;
    }
    if (!this.state) return undefined;
    const get = /^Get:\d+ \S+ .*\[([\d.,]+) ([kMG]?B)\]$/.exec(text);
    if (get) {
      this.state = { ...this.state, done: Math.min(this.state.total, this.state.done + bytes(get[1]!, get[2]!)) };
      return this.state;
    }
    if (/^Fetched [\d.,]+ [kMG]?B in /.test(text)) {
      const finished = { ...this.state, done: this.state.total };
      this.state = undefined;
      return finished;
    }
    return undefined;
  }
}
