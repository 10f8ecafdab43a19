// The dashboard's picture of the daemon: a /v1/state snapshot, kept current by applying events.
// No DOM here. Everything the page draws is derived from the live allocation records and the
// outside holders' counts, so a snapshot and the events after it are all that is needed
// (DESIGN sections 3, 10, 12, 14).

export const EVENT_TYPES = [
  "installed",
  "waiting",
  "evicted",
  "moved",
  "reinstalled",
  "released",
  "expired",
  "hit",
  "session_opened",
  "session_closed",
  "reset",
  "outside",
];

const CLASSES = [
  [900, "critical"],
  [700, "ptrace"],
  [300, "normal"],
  [100, "background"],
];

/** The name of the highest priority class at or below `p` (as the daemon's priority_class). */
export function priorityClass(p) {
  for (const [floor, name] of CLASSES) if (p >= floor) return name;
  return "below-background";
}

const LIVE = new Set(["installed", "waiting"]);

/** One outside holder per pool and target: "dr|cpu|1", "dr|task|7", "dr|others|0". */
export function outsideKey(pool, target) {
  const n = target.kind === "task" ? target.tid : target.cpu;
  return `${pool}|${target.kind}|${n}`;
}

/** Where an outside holder is: "CPU 1", "task 7", "another task on CPU 1". */
export function outsidePlace(target) {
  if (target.kind === "cpu") return `CPU ${target.cpu}`;
  return target.kind === "task" ? `task ${target.tid}` : `another task on CPU ${target.cpu}`;
}

/** What an outside holder holds where: "2 registers on CPU 1". */
export function outsideAmount(rec) {
  return `${rec.registers} register${rec.registers === 1 ? "" : "s"} on ${outsidePlace(rec.target)}`;
}

/** The daemon's own phrase for an outside holder: "outside debugregd: 2 registers on CPU 1". */
export function outsidePhrase(rec) {
  return `outside debugregd: ${outsideAmount(rec)}`;
}

/** Arrival order among equal priorities: the daemon numbers allocations in creation order. */
function arrival(a) {
  const n = /(\d+)$/.exec(a.id);
  return [a.created_at ?? 0, n ? Number(n[1]) : 0];
}

function compareWaiting(a, b) {
  if (a.priority !== b.priority) return b.priority - a.priority;
  const [ta, na] = arrival(a);
  const [tb, nb] = arrival(b);
  return ta - tb || na - nb || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);
}

export class Model {
  constructor() {
    this.clear();
  }

  clear() {
    this.host = null;
    this.eventId = 0;
    this.sessions = new Map();
    this.allocations = new Map();
    this.outside = new Map(); // outsideKey -> {pool, target, registers, measured, since}
    this.waitRank = new Map();
    this.loaded = false;
    this.version = (this.version ?? 0) + 1;
    this._derived = null;
  }

  /** Replace everything with a /v1/state snapshot. */
  loadSnapshot(snap) {
    this.host = snap.host;
    this.eventId = snap.event_id;
    this.sessions = new Map(snap.sessions.map((s) => [s.id, { ...s }]));
    this.allocations = new Map(
      snap.allocations.filter((a) => LIVE.has(a.state)).map((a) => [a.id, a]),
    );
    this.outside = new Map(
      (snap.outside ?? []).map((r) => [outsideKey(r.pool, r.target), { ...r }]),
    );
    // The snapshot's own waiting order is authoritative for the ones it lists.
    this.waitRank = new Map((snap.waiting ?? []).map((id, i) => [id, i]));
    this.loaded = true;
    this.touch();
  }

  touch() {
    this.version += 1;
    this._derived = null;
  }

  /**
   * Apply one event. Returns "old" (already reflected in the state), "applied", or "reset"
   * (the caller must re-read /v1/state).
   */
  apply(ev) {
    if (ev.type === "reset") return "reset";
    if (typeof ev.id === "number" && ev.id <= this.eventId) return "old";
    if (typeof ev.id === "number") this.eventId = ev.id;
    const a = ev.allocation;
    if (a) {
      if (LIVE.has(a.state)) {
        if (a.state !== "waiting") this.waitRank.delete(a.id);
        else if (this.allocations.get(a.id)?.state !== "waiting") this.waitRank.delete(a.id);
        this.allocations.set(a.id, a);
      } else {
        this.allocations.delete(a.id);
        this.waitRank.delete(a.id);
      }
    }
    if (ev.type === "outside" && ev.target) {
      // The daemon keeps a record while the kernel shows anything held there (`measured`), even
      // when the register files could count none of it (`registers`).
      const key = outsideKey(ev.pool, ev.target);
      if (ev.measured > 0 || ev.registers > 0) {
        const known = this.outside.get(key);
        this.outside.set(key, {
          pool: ev.pool,
          target: ev.target,
          registers: ev.registers,
          measured: ev.measured ?? ev.registers,
          since: known?.since ?? ev.at,
        });
      } else {
        this.outside.delete(key);
      }
    } else if (ev.type === "session_opened" && ev.session) {
      const known = this.sessions.get(ev.session);
      const ttl = ev.ttl_s ?? known?.ttl_s ?? null;
      this.sessions.set(ev.session, {
        id: ev.session,
        name: ev.name ?? known?.name ?? ev.session,
        ttl_s: ttl,
        created_at: ev.created_at ?? ev.at,
        expires_at: ev.expires_at ?? (ttl != null ? ev.at + ttl : null),
        max_priority: ev.max_priority ?? known?.max_priority ?? null,
        allow_non_evictable: ev.allow_non_evictable ?? known?.allow_non_evictable ?? null,
        allow_kernel: ev.allow_kernel ?? known?.allow_kernel ?? null,
      });
    } else if (ev.type === "session_closed" && ev.session) {
      this.sessions.delete(ev.session);
    }
    this.touch();
    return "applied";
  }

  /** Pool keys as the daemon budgets them: "dr", or "dr/user" and "dr/kernel" with mode switching. */
  poolKeys() {
    if (!this.host) return [];
    const keys = [];
    for (const [name, slots] of Object.entries(this.host.pools)) {
      if (this.host.mode_switching) {
        keys.push({ key: `${name}/user`, pool: name, space: "user", slots });
        keys.push({ key: `${name}/kernel`, pool: name, space: "kernel", slots });
      } else {
        keys.push({ key: name, pool: name, space: null, slots });
      }
    }
    return keys;
  }

  sessionName(id) {
    if (id == null) return "admin";
    return this.sessions.get(id)?.name ?? id;
  }

  /** Grid, tasks and waiting queue, derived once per model version. */
  derived() {
    if (this._derived) return this._derived;
    const ncpus = this.host?.cpus ?? 0;
    const pools = new Map();
    for (const pk of this.poolKeys()) {
      const rows = [];
      for (let c = 0; c < ncpus; c++) {
        const cells = [];
        for (let i = 0; i < pk.slots; i++) cells.push({ cpu: [], tasks: new Map(), outside: [] });
        rows.push(cells);
      }
      pools.set(pk.key, { ...pk, rows });
    }
    const tasks = new Map();
    const waiting = [];
    for (const a of this.allocations.values()) {
      if (a.scope?.kind === "task") {
        const tid = String(a.scope.tid);
        if (!tasks.has(tid)) tasks.set(tid, []);
        tasks.get(tid).push(a);
      }
      if (a.state === "waiting") {
        waiting.push(a);
        continue;
      }
      for (const r of a.registers ?? []) {
        const key = this.host?.mode_switching ? `${r.pool}/${a.space}` : r.pool;
        const cell = pools.get(key)?.rows[r.cpu]?.[r.index];
        if (!cell) continue;
        if (a.scope?.kind === "task") {
          const tid = String(a.scope.tid);
          if (!cell.tasks.has(tid)) cell.tasks.set(tid, []);
          const list = cell.tasks.get(tid);
          if (!list.includes(a)) list.push(a);
        } else if (!cell.cpu.includes(a)) {
          cell.cpu.push(a);
        }
      }
    }
    const outside = [...this.outside.entries()]
      .map(([key, rec]) => ({ key, ...rec }))
      .sort((x, y) => x.since - y.since || (x.key < y.key ? -1 : 1));
    for (const rec of outside) placeOutside(pools.get(rec.pool), rec);
    // Usage per CPU row: CPU-held indices, and the fullest task (Linux's admission counts), the
    // users outside debugregd included, whose share is also counted apart.
    for (const p of pools.values()) {
      p.usage = p.rows.map((cells) => {
        let cpuHeld = 0;
        const perTask = new Map();
        const out = { cpu: 0, others: 0, tasks: new Map() };
        for (const cell of cells) {
          if (cell.cpu.length || cell.outside.some((o) => o.target.kind === "cpu")) cpuHeld += 1;
          const here = new Set(cell.tasks.keys());
          for (const o of cell.outside) {
            if (o.target.kind === "cpu") out.cpu += 1;
            else if (o.target.kind === "others") {
              out.others += 1;
              here.add("others");
            } else {
              const tid = String(o.target.tid);
              out.tasks.set(tid, (out.tasks.get(tid) ?? 0) + 1);
              here.add(tid);
            }
          }
          for (const tid of here) perTask.set(tid, (perTask.get(tid) ?? 0) + 1);
        }
        const maxTask = Math.max(0, ...perTask.values());
        let taskOut = 0;
        for (const n of out.tasks.values()) taskOut += n;
        out.total = out.cpu + out.others + taskOut;
        return { cpuHeld, maxTask, tasks: perTask.size, outside: out };
      });
    }
    const rank = this.waitRank;
    waiting.sort((a, b) => {
      if (rank.has(a.id) && rank.has(b.id)) return rank.get(a.id) - rank.get(b.id);
      return compareWaiting(a, b);
    });
    const taskOutside = new Map();
    for (const rec of outside) {
      if (rec.target.kind !== "task") continue;
      const tid = String(rec.target.tid);
      if (!tasks.has(tid)) tasks.set(tid, []);
      if (!taskOutside.has(tid)) taskOutside.set(tid, []);
      taskOutside.get(tid).push(rec);
    }
    const taskList = [...tasks.entries()]
      .map(([tid, allocs]) => ({
        tid,
        allocs: allocs.sort((x, y) => arrival(x)[1] - arrival(y)[1]),
        outside: taskOutside.get(tid) ?? [],
      }))
      .sort((x, y) => Number(x.tid) - Number(y.tid));
    const perSession = new Map();
    for (const a of this.allocations.values()) {
      const s = a.session ?? "";
      perSession.set(s, (perSession.get(s) ?? 0) + 1);
    }
    this._derived = { pools, tasks: taskList, waiting, perSession, outside };
    return this._derived;
  }
}

/**
 * Put an outside holder's registers in the cells where the daemon counts them. Its records carry
 * counts, not indices, but the daemon packs every register file (core/registers.py): CPU holders
 * from the top index down, each task's holders from DR0 up. So the outside ones are the indices
 * of that packing that the daemon's own allocations leave: the highest free ones of the CPU, the
 * lowest the task does not hold, and for "another task" (one debugregd does not manage) DR0 up.
 */
function placeOutside(p, rec) {
  if (!p || !(rec.registers > 0)) return;
  const t = rec.target;
  const fill = (cells, order, usable) => {
    let left = rec.registers;
    for (const i of order) {
      if (left === 0) break;
      if (!usable(cells[i])) continue;
      cells[i].outside.push(rec);
      left -= 1;
    }
  };
  const up = [...Array(p.slots).keys()];
  const down = [...up].reverse();
  const cpuFree = (cell) => !cell.cpu.length && !cell.outside.some((o) => o.target.kind === "cpu");
  if (t.kind === "cpu") {
    const cells = p.rows[t.cpu];
    if (cells) fill(cells, down, (cell) => cpuFree(cell) && !cell.tasks.size && !cell.outside.length);
  } else if (t.kind === "others") {
    const cells = p.rows[t.cpu];
    if (cells) fill(cells, up, (cell) => cpuFree(cell) && !cell.outside.some((o) => o.target.kind === "others"));
  } else {
    const tid = String(t.tid);
    const mine = (o) => o.target.kind === "task" && String(o.target.tid) === tid;
    for (const cells of p.rows) fill(cells, up, (cell) => cpuFree(cell) && !cell.tasks.has(tid) && !cell.outside.some(mine));
  }
}

// ---------------------------------------------------------------- formatting shared by views

export function fmtScope(scope) {
  if (!scope) return "?";
  if (scope.kind === "task") {
    return scope.cpus ? `task ${scope.tid} on cpu ${scope.cpus.join(",")}` : `task ${scope.tid}`;
  }
  if (scope.kind === "cpu") return `cpu ${scope.cpu}`;
  if (scope.kind === "cpus") {
    return scope.cpus === "all" ? "all cpus" : `cpus ${scope.cpus.join(",")}`;
  }
  return scope.kind;
}

const ACCESS_SHORT = { exec: "x", write: "w", rw: "rw" };

export function fmtAccess(access) {
  return ACCESS_SHORT[access] ?? access;
}

export function fmtAddress(a) {
  if (a.address == null) return a.space === "kernel" ? "kernel (hidden)" : "(hidden)";
  return a.address;
}

export function fmtRange(a) {
  return `${fmtAccess(a.access)} ${a.length}B @ ${fmtAddress(a)}`;
}

export function indexName(pool, i) {
  return pool === "dr" ? `DR${i}` : `${pool}${i}`;
}
