// The dashboard's picture of the daemon: a /v1/state snapshot, kept current by applying events.
// No DOM here. Everything the page draws is derived from the live allocation records, so a
// snapshot and the events after it are all that is needed (DESIGN sections 3, 10, 14).

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
    if (ev.type === "session_opened" && ev.session) {
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
        for (let i = 0; i < pk.slots; i++) cells.push({ cpu: [], tasks: new Map() });
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
    // Usage per CPU row: CPU-held indices, and the fullest task (Linux's admission counts).
    for (const p of pools.values()) {
      p.usage = p.rows.map((cells) => {
        let cpuHeld = 0;
        const perTask = new Map();
        for (const cell of cells) {
          if (cell.cpu.length) cpuHeld += 1;
          for (const tid of cell.tasks.keys()) perTask.set(tid, (perTask.get(tid) ?? 0) + 1);
        }
        const maxTask = Math.max(0, ...perTask.values());
        return { cpuHeld, maxTask, tasks: perTask.size };
      });
    }
    const rank = this.waitRank;
    waiting.sort((a, b) => {
      if (rank.has(a.id) && rank.has(b.id)) return rank.get(a.id) - rank.get(b.id);
      return compareWaiting(a, b);
    });
    const taskList = [...tasks.entries()]
      .map(([tid, allocs]) => ({
        tid,
        allocs: allocs.sort((x, y) => arrival(x)[1] - arrival(y)[1]),
      }))
      .sort((x, y) => Number(x.tid) - Number(y.tid));
    const perSession = new Map();
    for (const a of this.allocations.values()) {
      const s = a.session ?? "";
      perSession.set(s, (perSession.get(s) ?? 0) + 1);
    }
    this._derived = { pools, tasks: taskList, waiting, perSession };
    return this._derived;
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
