// Hits as the dashboard sees them (DESIGN section 16). The daemon reports an allocation's hits at
// most once per interval (perf backend) or once per injected access (sim): the exact count, the
// samples lost, and the call sites sampled in that interval. The page sums what it has seen since
// it loaded: counts in a sliding window for the live rate, and call sites for the details drawer.
// No DOM here.

export const RATE_WINDOW_S = 2;
const SITES_KEPT = 200; // per allocation; samples at sites beyond are counted as "other"
const BOOKS_KEPT = 1000; // allocations remembered, the least recently hit forgotten first
const IDS_KEPT = 64; // thread ids, process ids and CPUs remembered per call site

function remember(set, value) {
  if (set.size < IDS_KEPT) set.add(value);
}

// Call sites are summed by instruction address, as `debugreg hits` sums them: the daemon's report
// tells one process's site from another's within an interval, the page says which processes.
const siteKey = (s) => s.ip ?? "?";

/** Reports summed: counts, and call sites ranked by samples. */
export class HitSum {
  constructor(limit = SITES_KEPT) {
    this.limit = limit;
    this.reports = 0;
    this.count = 0; // hits (exact, from the counters)
    this.sampled = 0;
    this.lost = 0; // samples not attributed to a call site
    this.first = null; // `at` of the first and last report
    this.last = null;
    this.sites = new Map();
    this.otherCount = 0; // samples at sites the reports (or this sum) did not list
  }

  add(ev) {
    this.reports += 1;
    this.count += ev.count ?? 0;
    this.sampled += ev.sampled ?? 0;
    this.lost += ev.lost ?? 0;
    this.otherCount += ev.other_count ?? 0;
    if (this.first === null || ev.at < this.first) this.first = ev.at;
    if (this.last === null || ev.at > this.last) this.last = ev.at;
    for (const s of ev.sites ?? []) {
      const key = siteKey(s);
      let site = this.sites.get(key);
      if (!site) {
        if (this.sites.size >= this.limit) {
          this.otherCount += s.count ?? 0;
          continue;
        }
        site = {
          key,
          ip: s.ip ?? null,
          pids: new Set(),
          symbol: null,
          mapping: null,
          count: 0,
          tids: new Set(),
          threads: 0,
          cpus: new Set(),
          first: s.first ?? ev.at,
          last: s.last ?? ev.at,
        };
        this.sites.set(key, site);
      }
      site.count += s.count ?? 0;
      if (s.pid != null) remember(site.pids, s.pid);
      for (const tid of s.tids ?? []) remember(site.tids, tid);
      for (const cpu of s.cpus ?? []) remember(site.cpus, cpu);
      // A report lists a few thread ids and counts them all; across reports neither is exact,
      // so the larger is the best lower bound.
      site.threads = Math.max(site.threads, s.threads ?? 0, site.tids.size);
      site.symbol = s.symbol ?? site.symbol;
      site.mapping = s.mapping ?? site.mapping;
      site.first = Math.min(site.first, s.first ?? ev.at);
      site.last = Math.max(site.last, s.last ?? ev.at);
    }
  }

  /** Call sites, most samples first (then the earliest seen, as the daemon ranks them). */
  ranked() {
    return [...this.sites.values()].sort(
      (a, b) => b.count - a.count || a.first - b.first || (a.key < b.key ? -1 : 1),
    );
  }
}

/** A call site's name: its function and offset where the daemon found a symbol, else its ip. */
export function siteName(site) {
  return site.symbol ?? site.ip ?? "unknown site";
}

/** Every allocation's hits seen since the page loaded, and its rate now. */
export class HitBook {
  constructor(windowS = RATE_WINDOW_S) {
    this.windowS = windowS;
    this.books = new Map(); // allocation id -> {sum, recent: [[at, count]], unknown}
  }

  clear() {
    this.books.clear();
  }

  /** Take in one `hit` event: a report, or a restart's statement that hits are unknown. */
  add(ev) {
    const id = ev.allocation?.id;
    if (!id) return;
    let book = this.books.get(id);
    if (book) this.books.delete(id); // re-inserted last: Map order is least recently hit first
    else book = { sum: new HitSum(), recent: [], unknown: null };
    this.books.set(id, book);
    while (this.books.size > BOOKS_KEPT) this.books.delete(this.books.keys().next().value);
    if (ev.unknown) {
      book.unknown = { at: ev.at, reason: ev.reason ?? "the daemon restarted" };
      return;
    }
    book.sum.add(ev);
    if (ev.count > 0) book.recent.push([ev.at, ev.count]);
  }

  get(id) {
    return this.books.get(id) ?? null;
  }

  /** Hits per second over the window ending `now` (the daemon's clock): 0 once reports stop. */
  rate(id, now) {
    const book = this.books.get(id);
    if (!book) return 0;
    const since = now - this.windowS;
    const recent = book.recent;
    while (recent.length && recent[0][0] <= since) recent.shift();
    let n = 0;
    for (const [, count] of recent) n += count;
    return n / this.windowS;
  }

  /** The allocations hit within the window, with their rates. */
  rates(now) {
    const out = new Map();
    for (const [id, book] of this.books) {
      if (!book.recent.length) continue;
      const r = this.rate(id, now);
      if (r > 0) out.set(id, r);
    }
    return out;
  }
}

/** "0.50", "12", "4.5k", "1.2M": short enough for a register cell. */
export function fmtHitRate(v) {
  if (!(v > 0)) return "0";
  if (v >= 1e6) return `${(v / 1e6).toFixed(v >= 1e7 ? 0 : 1)}M`;
  if (v >= 1e3) return `${(v / 1e3).toFixed(v >= 1e4 ? 0 : 1)}k`;
  return v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2);
}
