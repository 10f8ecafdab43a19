// debugregd dashboard: who holds which debug register on which CPU, live.
//
// Data flow (DESIGN section 10): on every (re)connect, read /v1/state, then open the admin event
// stream with ?since=<its event_id>; apply events whose id is newer than what the state already
// reflects. A `reset` event, or a lease that should have expired but did not (keepalives send no
// event), makes the page re-read /v1/state while it buffers the stream. Losing the stream shows
// "disconnected" and reconnects with backoff. Sign-in exchanges the admin key for an HttpOnly
// cookie; a `#key=` sign-in link is read once and erased from the address bar and history.
// Hits (DESIGN section 16) are summed as they arrive: a rate per register cell, the call sites
// of an allocation in its details, and one feed row per run of reports.

import { drawRate, RateSeries } from "./charts.js";
import { fmtHitRate, HitBook, HitSum, RATE_WINDOW_S, siteName } from "./hits.js";
import {
  EVENT_TYPES,
  fmtAddress,
  fmtRange,
  fmtScope,
  indexName,
  Model,
  outsideAmount,
  outsideKey,
  outsidePhrase,
  outsidePlace,
  priorityClass,
} from "./model.js";

const RECONNECT_DELAYS_MS = [250, 500, 1000, 2000]; // then every 2 s, with jitter
const STATS_EVERY_MS = 2000;
const FEED_KEEP = 2000; // events kept in memory
const FEED_SHOW = 300; // rows drawn
const FEED_BACKFILL = 100; // events of history shown on first load
const CELL_TASKS_SHOWN = 3;
const LIST_LIMIT = 200;
// A hot allocation reports up to ten times a second: its reports share one feed row while they
// keep coming (less than FEED_HIT_GAP_S apart), for at most FEED_HIT_SPAN_S.
const FEED_HIT_GAP_S = 5;
const FEED_HIT_SPAN_S = 60;
const SITES_SHOWN = 50; // call sites listed in the details drawer

// ---------------------------------------------------------------- tiny DOM helpers

const $ = (id) => document.getElementById(id);

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs ?? {})) {
    if (v == null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k === "style") el.style.cssText = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c == null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function fmtClock(unix) {
  const d = new Date(unix * 1000);
  const pad = (n, w = 2) => String(n).padStart(w, "0");
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

function fmtDuration(s) {
  if (s == null || !Number.isFinite(s)) return "–";
  const neg = s < 0;
  s = Math.abs(s);
  let out;
  if (s < 60) out = `${s.toFixed(1)} s`;
  else if (s < 3600) out = `${Math.floor(s / 60)} m ${String(Math.floor(s % 60)).padStart(2, "0")} s`;
  else out = `${Math.floor(s / 3600)} h ${String(Math.floor((s % 3600) / 60)).padStart(2, "0")} m`;
  return neg ? `-${out}` : out;
}

function fmtRate(v) {
  if (v == null) return "–";
  return v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2);
}

// ---------------------------------------------------------------- HTTP

class HttpError extends Error {
  constructor(status, problem) {
    super(problem?.detail || problem?.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

let serverOffset = 0; // server clock minus local clock, seconds (only when clearly skewed)

function noteServerDate(res) {
  const date = res.headers.get("Date");
  if (!date) return;
  const skew = Date.parse(date) / 1000 - Date.now() / 1000;
  serverOffset = Math.abs(skew) > 2 ? skew : 0;
}

const serverNow = () => Date.now() / 1000 + serverOffset;

async function api(method, path, body) {
  const init = { method, credentials: "same-origin", cache: "no-store", headers: {} };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const res = await fetch(path, init);
  if (!res.ok) {
    let problem = null;
    try {
      problem = await res.json();
    } catch {
      problem = null;
    }
    throw new HttpError(res.status, problem);
  }
  if (path === "/v1/state") noteServerDate(res);
  if (res.status === 204) return null;
  const text = await res.text();
  return text ? JSON.parse(text) : null;
}

const isAuthError = (e) => e instanceof HttpError && (e.status === 401 || e.status === 403);

// The daemon's clock for hit rates. Events carry its time (`at`); a live event's `at` minus our
// clock at its arrival is the daemon's lead less the delivery delay, so the largest seen is the
// best estimate (the Date header has one-second resolution). Re-learnt on every connection.
const daemonClock = { lead: null };

function noteLiveEvent(ev) {
  if (typeof ev.at !== "number") return;
  const lead = ev.at - Date.now() / 1000;
  if (daemonClock.lead === null || lead > daemonClock.lead) daemonClock.lead = lead;
}

const daemonNow = () => Date.now() / 1000 + (daemonClock.lead ?? serverOffset);

const numberFormat = new Intl.NumberFormat("en");
const num = (n) => numberFormat.format(n ?? 0);

// ---------------------------------------------------------------- app state

const model = new Model();
const hits = new HitBook(); // every allocation's hit reports seen since the page loaded
const rates = new RateSeries(["allocations_total", "evictions_total", "refusals_total"]);

const ui = {
  signedIn: false,
  selected: null, // allocation id, or "outside:" and an outside holder's key, shown in the drawer
  feed: [], // {key, ev, text, search, local; a hit run: sum (its reports summed), rev}
  feedChanged: new Set(), // feed items updated in place since the feed was drawn (hit runs)
  hitRuns: new Map(), // allocation id -> its feed item still taking reports
  cells: new Map(), // "pool-cpu-index" -> the grid's td
  feedSeq: 0,
  lastFeedId: 0, // highest server event id put in the feed
  feedFilter: { text: "", hidden: new Set() },
  feedDrawn: { key: null, upTo: -1 },
  gridShape: null,
  renderQueued: false,
  renderedAt: -Infinity,
  evictArmed: null,
  blockers: new Map(), // allocation id -> who blocks it (ids, outside holders' labels), when queued
  drawnVersion: -1, // model version the lists show
  listsDirty: false, // a list's look changed without the model changing (selection, filter)
  listsAt: -Infinity,
  listsTimer: null,
};

const conn = {
  gen: 0, // bumps on every (re)connect and sign-out: stale callbacks check it and stop
  es: null,
  attempt: 0,
  timer: null,
  state: "idle",
  since: null,
  resyncing: false,
  buffer: [],
  lastResync: 0,
  stateMs: 0, // how long the last /v1/state read took
  backfill: true,
  statsTimer: null,
  statsMissing: false,
};

// ---------------------------------------------------------------- status

function setStatus(state, text) {
  conn.state = state;
  const el = $("status");
  el.dataset.state = state;
  el.textContent = text;
  el.title = `${text} (since ${fmtClock(Date.now() / 1000)})`;
  // What is on screen may be stale until the next resync: say so by dimming it.
  $("dashboard").classList.toggle("stale", state === "disconnected" || state === "connecting");
}

// ---------------------------------------------------------------- sign-in

async function signIn(key) {
  await api("POST", "/v1/auth/login", { key });
}

function showSignIn(message = "") {
  ui.signedIn = false;
  stopConnection();
  model.clear();
  // Nothing an admin saw stays on the page once signed out.
  ui.gridShape = null;
  ui.cells.clear();
  ui.feed = [];
  ui.feedChanged.clear();
  ui.hitRuns.clear();
  hits.clear();
  ui.lastFeedId = 0;
  ui.feedDrawn = { key: null, upTo: -1 };
  ui.selected = null;
  ui.blockers.clear();
  ui.drawnVersion = -1;
  $("feed").replaceChildren();
  $("details").hidden = true;
  $("pools").replaceChildren();
  $("outside").replaceChildren();
  $("dashboard").hidden = true;
  $("signin").hidden = false;
  $("signout").hidden = true;
  $("who").textContent = "";
  $("signin-error").textContent = message;
  setStatus("signed-out", "signed out");
  $("signin-key").focus();
}

function showDashboard() {
  ui.signedIn = true;
  $("signin").hidden = true;
  $("dashboard").hidden = false;
  $("signout").hidden = false;
  $("who").textContent = "admin";
  $("signin-error").textContent = "";
}

$("signin-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const input = $("signin-key");
  const key = input.value;
  if (!key) return;
  $("signin-error").textContent = "";
  try {
    await signIn(key);
    input.value = "";
    start();
  } catch (err) {
    $("signin-error").textContent =
      err instanceof HttpError
        ? err.status === 401
          ? "That key was refused."
          : `Sign-in failed: ${err.message}`
        : "The daemon is unreachable.";
  }
});

$("signout").addEventListener("click", async () => {
  try {
    await api("POST", "/v1/auth/logout");
  } catch {
    // signed out locally regardless
  }
  showSignIn();
});

// ---------------------------------------------------------------- connection

function stopConnection() {
  conn.gen += 1;
  if (conn.es) conn.es.close();
  conn.es = null;
  clearTimeout(conn.timer);
  clearTimeout(conn.statsTimer);
  conn.timer = null;
  conn.statsTimer = null;
  conn.resyncing = false;
  conn.buffer = [];
}

async function start() {
  stopConnection();
  showDashboard();
  conn.attempt = 0;
  conn.backfill = true;
  setStatus("connecting", "connecting…");
  loadHost();
  connect();
  pollStats();
}

async function loadHost() {
  try {
    renderHost(await api("GET", "/v1/host"));
  } catch {
    // shown from /v1/state once connected
  }
}

function disconnected(reason) {
  const gen = conn.gen;
  if (conn.es) conn.es.close();
  conn.es = null;
  const wasLive = conn.state === "live";
  const base = RECONNECT_DELAYS_MS[Math.min(conn.attempt, RECONNECT_DELAYS_MS.length - 1)];
  const delay = base * (0.8 + 0.4 * Math.random());
  conn.attempt += 1;
  setStatus("disconnected", `disconnected — reconnecting (attempt ${conn.attempt})…`);
  if (wasLive) localFeed("disconnected", reason);
  rates.gap();
  clearTimeout(conn.timer);
  conn.timer = setTimeout(() => {
    if (gen === conn.gen) connect();
  }, delay);
}

async function readState() {
  const started = performance.now();
  const snap = await api("GET", "/v1/state");
  conn.stateMs = performance.now() - started;
  return snap;
}

async function connect() {
  const gen = ++conn.gen;
  conn.resyncing = false; // a resync in flight belongs to the old stream; this one replaces it
  daemonClock.lead = null; // the daemon may have restarted on another clock
  conn.buffer = [];
  const reconnecting = conn.attempt > 0;
  let snap;
  try {
    snap = await readState();
  } catch (err) {
    if (gen !== conn.gen) return;
    if (isAuthError(err)) {
      showSignIn("Your sign-in is no longer valid; sign in again.");
      return;
    }
    disconnected(err.message);
    return;
  }
  if (gen !== conn.gen) return;
  model.loadSnapshot(snap);
  conn.lastResync = Date.now();
  renderHost(snap.host);
  if (reconnecting) localFeed("resynced", `state re-read at event ${snap.event_id}`);
  // The feed continues where it stopped (missed events are shown, not applied); on first load
  // it shows a little history.
  let since = snap.event_id;
  if (ui.lastFeedId > 0) since = Math.min(ui.lastFeedId, snap.event_id);
  else if (conn.backfill) since = Math.max(0, snap.event_id - FEED_BACKFILL);
  openStream(gen, since);
  scheduleRender();
}

function openStream(gen, since) {
  const es = new EventSource(`/v1/events?since=${since}`);
  conn.es = es;
  conn.since = since;
  es.onopen = () => {
    if (gen !== conn.gen) return;
    conn.attempt = 0;
    setStatus("live", "live");
  };
  const onEvent = (msg) => {
    if (gen !== conn.gen) return;
    let ev;
    try {
      ev = JSON.parse(msg.data);
    } catch {
      return;
    }
    if (!ev.type) ev.type = msg.type === "message" ? "unknown" : msg.type;
    if (typeof ev.id !== "number" && msg.lastEventId) ev.id = Number(msg.lastEventId);
    onServerEvent(ev);
  };
  for (const t of EVENT_TYPES) es.addEventListener(t, onEvent);
  es.onmessage = onEvent;
  es.onerror = () => {
    if (gen !== conn.gen) return;
    // EventSource would retry by itself, but we resync from /v1/state on every reconnect.
    disconnected("event stream lost");
  };
}

function onServerEvent(ev) {
  // Newer than the state the page holds: it happened just now (not history replayed for the feed).
  if (typeof ev.id === "number" && ev.id > model.eventId) noteLiveEvent(ev);
  // Every hit report counts once, live or replayed, as the feed shows it.
  if (addToFeed(ev) && ev.type === "hit") {
    hits.add(ev);
    if (ev.allocation?.id === ui.selected) ui.listsDirty = true;
  }
  if (ev.type === "waiting" && ev.allocation) {
    ui.blockers.set(ev.allocation.id, (ev.blockers ?? []).map(blockerName));
    if (ui.blockers.size > 5000) ui.blockers.delete(ui.blockers.keys().next().value);
  }
  if (ev.type === "reset") {
    // Our ?since= was older than the daemon's retention: nothing more to show from history.
    conn.backfill = false;
    resync();
    return;
  }
  if (conn.resyncing) {
    conn.buffer.push(ev);
    return;
  }
  const result = model.apply(ev);
  if (result === "applied" && ev.type === "hit") flashHit(ev);
  scheduleRender();
}

/** Re-read /v1/state without dropping the stream; events that arrive meanwhile are replayed. */
async function resync() {
  if (conn.resyncing) return;
  const gen = conn.gen;
  let retry = false;
  conn.resyncing = true;
  conn.buffer = [];
  conn.lastResync = Date.now();
  try {
    const snap = await readState();
    if (gen !== conn.gen) return;
    model.loadSnapshot(snap);
    for (const ev of conn.buffer) model.apply(ev);
  } catch (err) {
    if (gen !== conn.gen) return;
    if (isAuthError(err)) {
      showSignIn("Your sign-in is no longer valid; sign in again.");
      return;
    }
    // Keep what we have, brought up to date by what the stream delivered meanwhile (after a
    // `reset` that is still incomplete until the retry below succeeds).
    for (const ev of conn.buffer) model.apply(ev);
    retry = true;
  } finally {
    if (gen === conn.gen) {
      conn.resyncing = false;
      conn.buffer = [];
      scheduleRender();
      if (retry) setTimeout(() => gen === conn.gen && resync(), 2000);
    }
  }
}

// ---------------------------------------------------------------- stats (rate charts)

async function pollStats() {
  const gen = conn.gen;
  let next = STATS_EVERY_MS;
  try {
    const s = await api("GET", "/v1/stats");
    if (!ui.signedIn) return;
    rates.add(performance.now() / 1000, s);
    conn.statsMissing = false;
    $("charts-note").textContent = "";
  } catch (err) {
    if (!ui.signedIn) return;
    if (err instanceof HttpError) {
      if (isAuthError(err)) {
        // the state read will notice and ask for a sign-in
      } else {
        conn.statsMissing = true;
        $("charts-note").textContent = `stats unavailable (HTTP ${err.status})`;
        next = 10_000;
      }
    } else {
      rates.gap();
      // Unreachable although the stream looks open: it is stale (e.g. a silent network drop).
      if (conn.state === "live" && gen === conn.gen) disconnected("stats poll failed");
    }
  }
  if (!ui.signedIn) return;
  drawCharts();
  clearTimeout(conn.statsTimer);
  conn.statsTimer = setTimeout(pollStats, next);
}

function drawCharts() {
  if ($("dashboard").hidden) return;
  const now = performance.now() / 1000;
  const specs = [
    ["allocations", "allocations_total", "#4ea1ff"],
    ["evictions", "evictions_total", "#f0a030"],
    ["refusals", "refusals_total", "#e5534b"],
  ];
  for (const [name, field, color] of specs) {
    drawRate($(`chart-${name}`), rates, field, color, now);
    $(`rate-${name}`).textContent = fmtRate(rates.latest(field));
  }
}

window.addEventListener("resize", () => drawCharts());

// ---------------------------------------------------------------- feed

/** A blocker as a refusal or `waiting` event names it: an allocation id, or for users outside
 * debugregd (no allocation) the daemon's label, "outside debugregd: 2 registers on CPU 1". */
function blockerName(b) {
  return b.allocation ?? b.label ?? (b.outside ? "outside debugregd" : "?");
}

const RESERVATION = "reservation (armed by its debugger)";

/** Where an outside holder is, for the feed and the details: "CPU 1", "task 7" (with the pool
 * when the host has more than one). */
function outsideWhere(pool, target) {
  const where = outsidePlace(target);
  return model.poolKeys().length > 1 ? `${where} (${pool})` : where;
}

const plural = (n, word) => `${num(n)} ${word}${n === 1 ? "" : "s"}`;

/** Who hit, where: "writer_a+0x11 ×40 (tid 42, cpu 0), 0x401200 ×17 (3 threads, cpu 0,1)". */
function hitSites(sum, shown = 2) {
  const sites = sum.ranked();
  const counted = sites.length > 1 || sum.reports > 1;
  const parts = sites.slice(0, shown).map((s) => {
    const who = s.threads > 1 ? `${s.threads} threads` : s.tids.size ? `tid ${[...s.tids][0]}` : null;
    const cpus = s.cpus.size ? `cpu ${[...s.cpus].sort((x, y) => x - y).join(",")}` : null;
    const where = [who, cpus].filter(Boolean).join(", ");
    return `${siteName(s)}${counted ? ` ×${num(s.count)}` : ""}${where ? ` (${where})` : ""}`;
  });
  const more = sites.length - parts.length;
  if (more > 0) parts.push(`+${plural(more, "more site")}`);
  return parts.join(", ");
}

/** A hit report, or a run of them (`sum`): how many, on what, from where. */
function hitText(ev, who, sum) {
  const a = ev.allocation;
  if (ev.unknown) {
    return `${who} hits unknown: ${ev.reason ?? "the daemon restarted"}${ev.total != null ? ` (total before: ${num(ev.total)})` : ""}`;
  }
  const address = ev.address ?? (a ? fmtAddress(a) : "");
  const what = `${ev.access ?? a?.access ?? ""} ${address}${ev.length ? ` +${ev.length}` : ""}`;
  const n = `${plural(sum.count, "hit")}${sum.reports > 1 ? ` in ${sum.reports} reports over ${fmtDuration(sum.last - sum.first)}` : ""}`;
  const sites = hitSites(sum);
  return [
    `${who} ${n}`,
    what,
    sites || null,
    sum.lost ? plural(sum.lost, "sample") + " lost" : null,
    ev.total != null ? `total ${num(ev.total)}` : null,
  ]
    .filter(Boolean)
    .join(" · ");
}

function summarize(ev, sum) {
  const a = ev.allocation;
  const who = a
    ? `${a.id}${a.label ? ` “${a.label}”` : ""} (${model.sessionName(a.session)})`
    : "";
  const regs = (list) => {
    if (!list?.length) return "no registers";
    const byIndex = new Map();
    for (const r of list) {
      const k = indexName(r.pool, r.index);
      if (!byIndex.has(k)) byIndex.set(k, []);
      byIndex.get(k).push(r.cpu);
    }
    return [...byIndex.entries()].map(([k, cpus]) => `${k} on cpu ${cpus.join(",")}`).join("; ");
  };
  switch (ev.type) {
    case "installed":
    case "reinstalled":
      return `${who} ${fmtScope(a?.scope)} ${a ? fmtRange(a) : ""} → ${regs(a?.registers)}${
        a?.arm === false ? ` · ${RESERVATION}` : ""
      }`;
    case "waiting": {
      const all = (ev.blockers ?? []).map(blockerName);
      const b = all.slice(0, 6).join(", ") + (all.length > 6 ? ` and ${all.length - 6} more` : "");
      return `${who} ${fmtScope(a?.scope)} queued${a?.arm === false ? ` (${RESERVATION})` : ""}${
        b ? `; blocked by ${b}` : ""
      }`;
    }
    case "outside": {
      const measured = ev.measured != null && ev.measured !== ev.registers ? `; the kernel shows ${ev.measured}` : "";
      return `outside debugregd: ${outsideWhere(ev.pool, ev.target)} now ${plural(ev.registers, "register")} (was ${ev.previous ?? "?"})${measured}`;
    }
    case "evicted":
      return `${who} ${fmtScope(a?.scope)} — ${ev.reason ?? a?.reason ?? "evicted"}${
        a?.state === "waiting" ? " (requeued)" : ""
      }`;
    case "moved":
      return `${who} ${regs(ev.previous)} → ${regs(a?.registers)}`;
    case "released":
    case "expired":
      return `${who} ${fmtScope(a?.scope)} — ${a?.reason ?? ev.type}`;
    case "hit": {
      if (!sum) {
        sum = new HitSum();
        sum.add(ev);
      }
      return hitText(ev, who, sum);
    }
    case "session_opened":
      return `${ev.session} “${ev.name ?? ""}” ttl ${ev.ttl_s ?? "?"} s`;
    case "session_closed":
      return `${ev.session} (${model.sessionName(ev.session)}) ${ev.reason ?? "closed"}`;
    case "reset":
      return "missed events beyond the daemon's retention; state re-read";
    default:
      return JSON.stringify(ev);
  }
}

/** Put a server event in the feed; false when it was there already. A hit report joins its
 * allocation's run (one row, updated in place) while reports keep coming and nothing else
 * happens to that allocation, so a hot watchpoint cannot push everything else out. */
function addToFeed(ev) {
  if (typeof ev.id === "number" && ev.type !== "reset") {
    if (ev.id <= ui.lastFeedId) return false;
    ui.lastFeedId = ev.id;
  }
  const id = ev.allocation?.id;
  const report = ev.type === "hit" && id && !ev.unknown;
  if (report) {
    const run = ui.hitRuns.get(id);
    const kept = run && ui.feed.length && run.key >= ui.feed[0].key;
    if (kept && ev.at - run.sum.last < FEED_HIT_GAP_S && ev.at - run.sum.first < FEED_HIT_SPAN_S) {
      run.sum.add(ev);
      run.ev = ev;
      run.rev += 1;
      run.text = summarize(ev, run.sum);
      run.search = `${ev.type} ${run.text} ${JSON.stringify(ev)}`.toLowerCase();
      ui.feedChanged.add(run);
      scheduleRender();
      return true;
    }
  }
  if (id) ui.hitRuns.delete(id);
  const item = { key: ++ui.feedSeq, ev, text: "", search: "", local: false, rev: 0 };
  if (report) {
    item.sum = new HitSum(20); // a row names its top sites; the drawer keeps them all
    item.sum.add(ev);
    ui.hitRuns.set(id, item);
  }
  item.text = summarize(ev, item.sum);
  item.search = `${ev.type} ${item.text} ${JSON.stringify(ev)}`.toLowerCase();
  ui.feed.push(item);
  if (ui.feed.length > FEED_KEEP) ui.feed.splice(0, ui.feed.length - FEED_KEEP);
  scheduleRender();
  return true;
}

function localFeed(kind, text) {
  const ev = { type: "connection", at: Date.now() / 1000, kind };
  ui.feed.push({
    key: ++ui.feedSeq,
    ev,
    text: `${kind}: ${text}`,
    search: `connection ${kind} ${text}`.toLowerCase(),
    local: true,
  });
  scheduleRender();
}

function feedVisible(item) {
  const f = ui.feedFilter;
  if (f.hidden.has(item.ev.type)) return false;
  return !f.text || item.search.includes(f.text);
}

function feedRow(item) {
  const ev = item.ev;
  const li = h(
    "li",
    {
      class: `feed-item t-${ev.type}`,
      "data-testid": "feed-item",
      "data-type": ev.type,
      "data-event-id": ev.id ?? "",
      "data-key": item.key,
      "data-reports": item.sum ? item.sum.reports : null,
      "data-allocation": ev.allocation?.id ?? "",
      "data-outside": ev.type === "outside" && ev.target ? outsideKey(ev.pool, ev.target) : null,
    },
    // a run of hit reports is dated by its first
    h("time", { text: fmtClock(item.sum?.first ?? ev.at ?? Date.now() / 1000) }),
    h("span", { class: "etype", text: ev.type.replace("session_", "session ") }),
    h("span", { class: "etext", text: item.text }),
  );
  if (ev.allocation || ev.type === "outside") li.classList.add("clickable");
  return li;
}

function renderFeed() {
  const list = $("feed");
  const f = ui.feedFilter;
  const key = `${f.text}\u0000${[...f.hidden].sort().join(",")}`;
  const drawn = ui.feedDrawn;
  const lastKey = ui.feed.length ? ui.feed[ui.feed.length - 1].key : 0;
  if (drawn.key !== key) {
    const rows = [];
    for (let i = ui.feed.length - 1; i >= 0 && rows.length < FEED_SHOW; i--) {
      if (feedVisible(ui.feed[i])) rows.push(feedRow(ui.feed[i]));
    }
    list.replaceChildren(...rows);
  } else {
    // Runs of hits updated in place: their rows are redrawn where they are.
    for (const it of ui.feedChanged) {
      if (it.key > drawn.upTo) continue; // not drawn yet: added below
      const row = list.querySelector(`:scope > [data-key="${it.key}"]`);
      if (row && feedVisible(it)) row.replaceWith(feedRow(it));
      else if (row) row.remove();
    }
    const fresh = ui.feed.filter((it) => it.key > drawn.upTo && feedVisible(it)).slice(-FEED_SHOW);
    for (const it of fresh) list.prepend(feedRow(it));
    while (list.childElementCount > FEED_SHOW) list.lastElementChild.remove();
  }
  ui.feedChanged.clear();
  drawn.key = key;
  drawn.upTo = lastKey;
  list.dataset.empty = ui.feed.length ? "no event matches the filter" : "no events yet";
}

function buildTypeFilters() {
  const box = $("type-filters");
  for (const t of [...EVENT_TYPES, "connection"]) {
    const btn = h("button", {
      type: "button",
      class: `type-toggle t-${t}`,
      "aria-pressed": "true",
      "data-testid": `feed-filter-${t}`,
      "data-type": t,
      text: t.replace("session_", "session "),
      onclick: () => {
        const hidden = ui.feedFilter.hidden;
        if (hidden.has(t)) hidden.delete(t);
        else hidden.add(t);
        btn.setAttribute("aria-pressed", String(!hidden.has(t)));
        scheduleRender();
      },
    });
    box.append(btn);
  }
  $("feed-filter").addEventListener("input", (e) => {
    ui.feedFilter.text = e.target.value.trim().toLowerCase();
    scheduleRender();
  });
}

// ---------------------------------------------------------------- host and legend

function renderHost(host) {
  if (!host) return;
  const pools = Object.entries(host.pools)
    .map(([n, s]) => `${n}×${s}`)
    .join(" ");
  $("host").textContent = [
    host.profile,
    `${host.cpus} CPU${host.cpus === 1 ? "" : "s"}`,
    pools,
    host.mode_switching ? "mode switching" : null,
    `${host.backend} backend`,
    host.version ? `v${host.version}` : null,
  ]
    .filter(Boolean)
    .join(" · ");
}

function buildLegend() {
  const items = [
    ["critical", "critical ≥900"],
    ["ptrace", "ptrace ≥700"],
    ["normal", "normal ≥300"],
    ["background", "background ≥100"],
    ["below-background", "<100"],
  ];
  $("legend").replaceChildren(
    ...items.map(([c, t]) => h("span", { class: `key p-${c}` }, h("i"), t)),
    h("span", { class: "key ne" }, h("i"), "non-evictable"),
    h("span", { class: "key reservation-key", title: "counted and evicted like any allocation; the daemon arms nothing" }, h("i"), RESERVATION),
    h("span", { class: "key outside-key", title: "registers held by gdb, perf, bpftrace… that do not ask debugregd" }, h("i"), "outside debugregd"),
    h("span", { class: "key cpu-key" }, h("i"), "CPU-held (top)"),
    h("span", { class: "key task-key" }, h("i"), "task-held (bottom)"),
  );
}

// ---------------------------------------------------------------- register grid

function chipTitle(a, holder) {
  return [
    `${a.id}${a.label ? ` “${a.label}”` : ""}${a.arm === false ? ` — ${RESERVATION}` : ""}`,
    `${holder}: ${fmtScope(a.scope)}`,
    `session ${model.sessionName(a.session)}${a.session ? ` (${a.session})` : ""}`,
    `${a.access} ${a.length} bytes at ${fmtAddress(a)} (${a.space})`,
    `priority ${a.priority} (${priorityClass(a.priority)})${a.evictable ? "" : ", non-evictable"}`,
    `on evict: ${a.on_evict}; generation ${a.generation}`,
  ].join("\n");
}

/**
 * One register's holder as a chip. `group` is every allocation sharing that register (identical
 * watchpoints of one scope share it, reference-counted): the chip shows the strongest holder,
 * coloured by its priority class, with "×N" for the others, which its tooltip lists.
 */
function chip(group, kind, compact) {
  const a = group.reduce((best, x) => (x.priority > best.priority ? x : best), group[0]);
  const pc = priorityClass(a.priority);
  const ne = group.some((x) => !x.evictable);
  // Only identical requests share a register, so a group is all reservations or none.
  const reservation = a.arm === false;
  const tag = kind === "cpu" ? "CPU" : `T${a.scope.tid}`;
  const top = h(
    "div",
    { class: "chip-top" },
    h("span", { class: "tag" }, tag),
    h("span", { class: "label", text: a.label || a.id }),
    group.length > 1 ? h("span", { class: "tag shared", title: "holders sharing this register" }, `×${group.length}`) : null,
    reservation ? h("span", { class: "tag rsv-tag", title: RESERVATION }, "RSV") : null,
    ne ? h("span", { class: "tag ne-tag", title: "non-evictable" }, "NE") : null,
  );
  // A reservation says so in full where a watchpoint names its holder (who is in the tooltip),
  // on up to two lines.
  const lines = compact
    ? [h("div", { class: "chip-line mono", text: fmtRange(a) })]
    : reservation
      ? [h("div", { class: "chip-line rsv-line", text: `${RESERVATION} · ${fmtRange(a)}` })]
      : [
          h("div", {
            class: "chip-line",
            text: `${model.sessionName(a.session)} · ${fmtScope(a.scope)} · p${a.priority}`,
          }),
          h("div", { class: "chip-line mono", text: fmtRange(a) }),
        ];
  const holder = kind === "cpu" ? "CPU-held" : "task-held";
  return h(
    "div",
    {
      class: `chip ${kind} p-${pc}${ne ? " ne" : ""}${reservation ? " reservation" : ""}${group.some((x) => x.id === ui.selected) ? " selected" : ""}`,
      "data-allocation": a.id,
      "data-testid": "chip",
      tabindex: "0",
      role: "button",
      title: group.map((x) => chipTitle(x, holder)).join("\n\n"),
    },
    top,
    ...lines,
  );
}

/** Registers held by users outside debugregd: not an allocation, so no priority colour. */
function outsideChip(rec, compact) {
  const t = rec.target;
  const key = outsideKey(rec.pool, t);
  const tag = t.kind === "cpu" ? "CPU" : t.kind === "task" ? `T${t.tid}` : "T?";
  const title = [
    outsidePhrase(rec),
    rec.measured !== rec.registers ? `the kernel shows ${rec.measured}; the register files count ${rec.registers}` : null,
    `measured since ${fmtClock(rec.since)}; re-measured by the daemon until they leave`,
    "held without asking debugregd (gdb, perf, bpftrace…): never evicted, above every priority",
  ]
    .filter(Boolean)
    .join("\n");
  return h(
    "div",
    {
      class: `chip outside ${t.kind === "cpu" ? "cpu" : "task"}${ui.selected === `outside:${key}` ? " selected" : ""}`,
      "data-testid": "outside-chip",
      "data-outside": key,
      tabindex: "0",
      role: "button",
      title,
    },
    h("div", { class: "chip-top" }, h("span", { class: "tag" }, tag), h("span", { class: "label", text: "outside debugregd" })),
    compact ? null : h("div", { class: "chip-line", text: outsideAmount(rec) }),
  );
}

function cellSignature(cell) {
  const parts = [];
  for (const o of cell.outside) parts.push(`o${outsideKey(o.pool, o.target)}:${o.registers}:${o.measured}`);
  for (const a of cell.cpu) parts.push(`c${a.id}:${a.generation}:${a.updated_at}:${a.session}`);
  for (const [tid, list] of cell.tasks) {
    for (const a of list) parts.push(`t${tid}:${a.id}:${a.generation}:${a.updated_at}:${a.session}`);
  }
  return parts.join("|");
}

function renderCell(td, cell, pk, cpu, index, usage) {
  const sig = `${cellSignature(cell)}#${ui.selected}#${model.sessions.size}`;
  if (td.dataset.sig === sig) return;
  td.dataset.sig = sig;
  const ids = [...cell.cpu.map((a) => a.id), ...[...cell.tasks.values()].flat().map((a) => a.id)];
  const outCpu = cell.outside.filter((o) => o.target.kind === "cpu");
  const outTask = cell.outside.filter((o) => o.target.kind !== "cpu");
  const hasCpu = cell.cpu.length > 0;
  const hasTask = cell.tasks.size > 0;
  // data-holder says which of the daemon's own allocations hold the register; "outside" when
  // only users outside debugregd do, named in data-outside-targets ("cpu:1", "task:7", "others:0").
  td.dataset.holder =
    hasCpu && hasTask ? "both" : hasCpu ? "cpu" : hasTask ? "task" : cell.outside.length ? "outside" : "";
  td.dataset.allocations = ids.join(" ");
  td.dataset.outsideTargets = cell.outside
    .map((o) => `${o.target.kind}:${o.target.kind === "task" ? o.target.tid : o.target.cpu}`)
    .join(" ");
  td.dataset.reservation = String([...cell.tasks.values()].flat().some((a) => a.arm === false));
  // Which end of the file this index belongs to right now: CPU holders take the top indices,
  // tasks the bottom ones.
  const zone =
    hasCpu || outCpu.length
      ? "cpu-zone"
      : index < usage.maxTask
        ? "task-zone"
        : index >= pk.slots - usage.cpuHeld
          ? "cpu-zone"
          : "free";
  td.className = `cell ${zone}`;
  const kids = [];
  const anyCpu = hasCpu || outCpu.length > 0;
  const anyTask = hasTask || outTask.length > 0;
  if (hasCpu) kids.push(chip(cell.cpu, "cpu", anyTask));
  for (const o of outCpu) kids.push(outsideChip(o, anyTask || hasCpu));
  if (anyTask) {
    const entries = [...cell.tasks.entries()];
    const shown = entries.length + outTask.length;
    const compact = shown > 1 || anyCpu;
    // Outside holders first: they are the ones nobody can move.
    for (const o of outTask.slice(0, CELL_TASKS_SHOWN)) kids.push(outsideChip(o, compact));
    const room = Math.max(0, CELL_TASKS_SHOWN - outTask.length);
    for (const [, list] of entries.slice(0, room)) kids.push(chip(list, "task", compact));
    const hidden = shown - Math.min(shown, CELL_TASKS_SHOWN);
    if (hidden > 0) {
      kids.push(h("div", { class: "more", text: `+${hidden} more task${hidden > 1 ? "s" : ""}` }));
    }
  }
  if (!kids.length) kids.push(h("span", { class: "free-mark", text: "free" }));
  td.replaceChildren(...kids);
}

function renderGrid() {
  const d = model.derived();
  const pools = [...d.pools.values()];
  const shape = pools.map((p) => `${p.key}:${p.slots}x${p.rows.length}`).join(",");
  const box = $("pools");
  if (ui.gridShape !== shape) {
    ui.gridShape = shape;
    ui.cells.clear();
    box.replaceChildren(
      ...pools.map((p) => {
        const head = h(
          "tr",
          null,
          h("th", { class: "corner", scope: "col" }, "CPU"),
          ...Array.from({ length: p.slots }, (_, i) =>
            h("th", { scope: "col", class: "idx" }, indexName(p.pool, i)),
          ),
        );
        const rows = p.rows.map((_, cpu) =>
          h(
            "tr",
            { "data-testid": `row-${p.key}-${cpu}` },
            h("th", { scope: "row", class: "cpu-head" }),
            ...Array.from({ length: p.slots }, (_, i) => {
              const td = h("td", { class: "cell", "data-testid": `cell-${p.key}-${cpu}-${i}` });
              ui.cells.set(`${p.key}-${cpu}-${i}`, td);
              return td;
            }),
          ),
        );
        const title = p.space ? `${p.pool} (${p.space} space)` : p.pool;
        return h(
          "div",
          { class: "pool", "data-testid": `pool-${p.key}` },
          h("h3", null, `pool ${title}`, h("span", { class: "muted small" }, ` ${p.slots} slots per CPU`)),
          h(
            "div",
            { class: "table-wrap" },
            h("table", { class: "grid", style: `--slots:${p.slots}` }, h("thead", null, head), h("tbody", null, ...rows)),
          ),
        );
      }),
    );
  }
  for (const p of pools) {
    const table = box.querySelector(`[data-testid="pool-${CSS.escape(p.key)}"] tbody`);
    if (!table) continue;
    p.rows.forEach((cells, cpu) => {
      const tr = table.rows[cpu];
      const u = p.usage[cpu];
      const head = tr.cells[0];
      const free = p.slots - u.cpuHeld - u.maxTask;
      const out = u.outside;
      const usageSig = `${u.cpuHeld}/${u.maxTask}/${u.tasks}/${out.cpu}/${out.others}/${[...out.tasks].join(",")}`;
      if (head.dataset.sig !== usageSig) {
        head.dataset.sig = usageSig;
        const outParts = [
          out.cpu ? `${out.cpu} CPU-wide` : null,
          ...[...out.tasks].map(([tid, n]) => `${n} on task ${tid}`),
          out.others ? `${out.others} on another task` : null,
        ].filter(Boolean);
        head.replaceChildren(
          h("div", { class: "cpu-name" }, `cpu ${cpu}`),
          h(
            "div",
            {
              class: "usage",
              title: `CPU-held ${u.cpuHeld}${out.cpu ? ` (${out.cpu} outside debugregd)` : ""}, fullest task ${u.maxTask}, free ${free} (of ${p.slots})`,
            },
            h("span", { class: "u-task", style: `flex:${u.maxTask}` }),
            h("span", { class: "u-free", style: `flex:${Math.max(0, free)}` }),
            h("span", { class: "u-cpu", style: `flex:${u.cpuHeld - out.cpu}` }),
            h("span", { class: "u-out", style: `flex:${out.cpu}` }),
          ),
          h("div", { class: "usage-text muted" }, `T${u.maxTask} C${u.cpuHeld} · ${u.tasks} task${u.tasks === 1 ? "" : "s"}`),
          ...(out.total
            ? [
                h(
                  "div",
                  {
                    class: "outside-badge",
                    "data-testid": `outside-count-${p.key}-${cpu}`,
                    title: `outside debugregd on cpu ${cpu}: ${outParts.join(", ")}`,
                  },
                  `${out.total} outside`,
                ),
              ]
            : []),
        );
      }
      cells.forEach((cell, i) => renderCell(tr.cells[i + 1], cell, p, cpu, i, u));
    });
  }
}

/** Every outside holder, under the grid: what the daemon last measured, target by target. */
function renderOutside(d) {
  const box = $("outside");
  $("outside-count").textContent = d.outside.length ? `(${d.outside.length})` : "";
  const tail = d.outside.length ? [] : [h("li", { class: "empty", text: "none measured" })];
  reconcile(
    box,
    d.outside,
    (rec) => rec.key,
    (rec) => `${rec.registers}:${rec.measured}:${rec.since}:${ui.selected === `outside:${rec.key}`}`,
    (rec) =>
      h(
        "li",
        {
          class: `outside-item${ui.selected === `outside:${rec.key}` ? " selected" : ""}`,
          "data-testid": "outside-item",
          "data-outside": rec.key,
          tabindex: "0",
          role: "button",
        },
        h("span", { class: "swatch" }),
        h("span", { class: "label", text: outsidePhrase(rec) }),
        model.poolKeys().length > 1 ? h("span", { class: "muted", text: rec.pool }) : null,
        rec.measured !== rec.registers ? h("span", { class: "muted", text: `kernel shows ${rec.measured}` }) : null,
        h("span", { class: "muted since", text: `since ${fmtClock(rec.since)}` }),
      ),
    tail,
  );
}

/** The grid cell of one of an allocation's registers. */
function cellOf(a, r) {
  const key = model.host?.mode_switching ? `${r.pool}/${a.space}` : r.pool;
  return ui.cells.get(`${key}-${r.cpu}-${r.index}`) ?? null;
}

const FLASH_EVERY_MS = 250; // a hot register glows steadily instead of strobing
const flashedAt = new WeakMap(); // td -> when its flash last began

/** Light up the registers a live report was hit through: on the CPUs its samples name (all the
 * allocation's CPUs when none were sampled). */
function flashHit(ev) {
  const a = ev.allocation;
  if (!a || ev.unknown || !(ev.count > 0)) return;
  const cpus = new Set((ev.sites ?? []).flatMap((s) => s.cpus ?? []));
  if (ev.cpu != null) cpus.add(ev.cpu);
  const now = performance.now();
  for (const r of a.registers ?? []) {
    if (cpus.size && !cpus.has(r.cpu)) continue;
    const td = cellOf(a, r);
    if (!td || now - (flashedAt.get(td) ?? -Infinity) < FLASH_EVERY_MS) continue;
    flashedAt.set(td, now);
    td.querySelector(":scope > .hit-flash")?.remove();
    const spark = h("span", { class: "hit-flash", "aria-hidden": "true" });
    spark.addEventListener("animationend", () => spark.remove());
    td.append(spark);
  }
}

const rateText = (r) => `${fmtHitRate(r)} hits/s`;

/**
 * Each occupied cell's hit rate: the sum over the allocations holding it that were hit in the
 * last RATE_WINDOW_S, as a badge in the cell's corner (out of the flow: nothing moves). Runs on
 * every render and on a timer, so rates fall to zero when reports stop.
 */
function renderHitRates() {
  const now = daemonNow();
  const cells = new Map(); // td -> [[allocation, rate]]
  for (const [id, rate] of hits.rates(now)) {
    const a = model.allocations.get(id);
    if (!a || a.state !== "installed") continue;
    for (const r of a.registers ?? []) {
      const td = cellOf(a, r);
      if (!td) continue;
      if (!cells.has(td)) cells.set(td, []);
      cells.get(td).push([a, rate]);
    }
  }
  for (const badge of $("pools").querySelectorAll(".hit-rate")) {
    const td = badge.parentElement;
    if (cells.has(td)) continue;
    delete td.dataset.hitRate;
    badge.remove();
  }
  for (const [td, parts] of cells) {
    parts.sort((x, y) => y[1] - x[1]);
    const total = parts.reduce((n, [, r]) => n + r, 0);
    let badge = td.querySelector(":scope > .hit-rate");
    if (!badge) {
      badge = h("span", { class: "hit-rate", "data-testid": "hit-rate" });
      td.append(badge);
    }
    const text = rateText(total);
    if (badge.textContent !== text) badge.textContent = text;
    const title = [
      `hits per second over the last ${RATE_WINDOW_S} s (on every CPU the allocation watches)`,
      ...parts.map(([a, r]) => `${a.id}${a.label ? ` “${a.label}”` : ""}: ${rateText(r)}`),
    ].join("\n");
    if (badge.title !== title) badge.title = title;
    badge.dataset.allocation = parts[0][0].id; // a click opens the busiest one
    td.dataset.hitRate = total.toFixed(2);
  }
  const shown = $("details").querySelector('[data-testid="hits-rate"]');
  if (shown) setText(shown, rateText(hits.rate(shown.dataset.hitsOf, now)));
}

function setText(el, text) {
  if (el && el.textContent !== text) el.textContent = text;
}

// ---------------------------------------------------------------- tasks, waiting, sessions

function allocLine(a, extra) {
  const pc = priorityClass(a.priority);
  return h(
    "li",
    {
      class: `alloc-line p-${pc}${a.evictable ? "" : " ne"}${a.arm === false ? " reservation" : ""}${ui.selected === a.id ? " selected" : ""}`,
      "data-allocation": a.id,
      tabindex: "0",
      role: "button",
    },
    h("span", { class: "swatch" }),
    h("span", { class: "label", text: a.label || a.id }),
    h("span", { class: "muted", text: a.id }),
    h("span", { class: "mono", text: fmtRange(a) }),
    h("span", { class: "muted", text: `p${a.priority}` }),
    a.arm === false ? h("span", { class: "tag rsv-tag", title: RESERVATION }, "reservation") : null,
    a.evictable ? null : h("span", { class: "tag ne-tag" }, "NE"),
    extra,
  );
}

function regsText(a) {
  if (a.state === "waiting") return "waiting";
  const byCpu = new Map();
  for (const r of a.registers ?? []) {
    if (!byCpu.has(r.cpu)) byCpu.set(r.cpu, []);
    byCpu.get(r.cpu).push(indexName(r.pool, r.index));
  }
  return [...byCpu.entries()].map(([c, ix]) => `cpu${c}:${ix.join("+")}`).join(" ");
}

/**
 * Make `box`'s children the rows for `items`, in order, reusing every row whose signature is
 * unchanged: a busy host changes a few rows per redraw, so only those are laid out again.
 * `tail` nodes (notes such as "…and 12 more") follow the rows.
 */
function reconcile(box, items, key, sig, build, tail = []) {
  const old = new Map();
  for (const el of box.children) if (el.dataset.key) old.set(el.dataset.key, el);
  const keep = new Set();
  let prev = null;
  for (const item of items) {
    const k = key(item);
    const s = sig(item);
    let el = old.get(k);
    if (!el || el.dataset.sig !== s) {
      const fresh = build(item);
      fresh.dataset.key = k;
      fresh.dataset.sig = s;
      if (el) el.replaceWith(fresh);
      el = fresh;
    }
    keep.add(el);
    const want = prev ? prev.nextSibling : box.firstChild;
    if (want !== el) box.insertBefore(el, want);
    prev = el;
  }
  for (const el of [...box.children]) if (!keep.has(el)) el.remove();
  box.append(...tail);
}

const allocSig = (a) => `${a.id}:${a.generation}:${a.updated_at}:${a.state}:${ui.selected === a.id}`;

function renderTasks(d) {
  const q = $("tasks-filter").value.trim().toLowerCase();
  const matches = d.tasks.filter(
    (t) =>
      !q ||
      t.tid.includes(q) ||
      (t.outside.length > 0 && "outside debugregd".includes(q)) ||
      t.allocs.some((a) =>
        `${a.label} ${a.id} ${a.session} ${model.sessionName(a.session)}`.toLowerCase().includes(q),
      ),
  );
  $("tasks-count").textContent = d.tasks.length ? `(${d.tasks.length})` : "";
  const shown = matches.slice(0, LIST_LIMIT);
  const tail = [];
  if (matches.length > shown.length) {
    tail.push(h("p", { class: "muted" }, `…and ${matches.length - shown.length} more; filter to narrow`));
  }
  if (!shown.length) {
    tail.push(h("p", { class: "empty", text: d.tasks.length ? "no task matches" : "no task-scoped allocations" }));
  }
  reconcile(
    $("tasks"),
    shown,
    (t) => t.tid,
    (t) =>
      `${t.allocs.map(allocSig).join("|")}#${t.outside.map((o) => `${o.registers}:${o.measured}:${ui.selected === `outside:${o.key}`}`).join("|")}#${model.sessions.size}`,
    (t) =>
      h(
        "div",
        { class: "task", "data-testid": `task-${t.tid}` },
        h(
          "div",
          { class: "task-head" },
          h("b", null, `tid ${t.tid}`),
          h("span", { class: "muted" }, ` ${t.allocs.length} allocation${t.allocs.length === 1 ? "" : "s"}`),
        ),
        h(
          "ul",
          { class: "alloc-list" },
          ...t.outside.map((o) =>
            h(
              "li",
              {
                class: `alloc-line outside-line${ui.selected === `outside:${o.key}` ? " selected" : ""}`,
                "data-outside": o.key,
                tabindex: "0",
                role: "button",
              },
              h("span", { class: "swatch" }),
              h("span", { class: "label", text: outsidePhrase(o) }),
            ),
          ),
          ...t.allocs.map((a) => allocLine(a, h("span", { class: "regs", text: regsText(a) }))),
        ),
      ),
    tail,
  );
}

function renderWaiting(d) {
  $("waiting-count").textContent = d.waiting.length ? `(${d.waiting.length})` : "";
  const shown = d.waiting.slice(0, LIST_LIMIT); // positions are a CSS counter
  const tail = [];
  if (d.waiting.length > shown.length) {
    tail.push(h("li", { class: "muted" }, `…and ${d.waiting.length - shown.length} more`));
  }
  if (!shown.length) tail.push(h("li", { class: "empty", text: "nobody is waiting" }));
  reconcile(
    $("waiting"),
    shown,
    (a) => a.id,
    (a) => `${allocSig(a)}:${ui.blockers.get(a.id)?.join(",") ?? ""}:${model.sessionName(a.session)}`,
    (a) => {
      const blockers = ui.blockers.get(a.id);
      return h(
        "li",
        {
          class: `wait-item p-${priorityClass(a.priority)}${a.evictable ? "" : " ne"}${a.arm === false ? " reservation" : ""}${ui.selected === a.id ? " selected" : ""}`,
          "data-testid": "waiting-item",
          "data-allocation": a.id,
          tabindex: "0",
          role: "button",
        },
        h(
          "div",
          { class: "wait-main" },
          h("span", { class: "swatch" }),
          h("span", { class: "label", text: a.label || a.id }),
          h("span", { class: "muted", text: `${a.id} · p${a.priority} (${priorityClass(a.priority)})` }),
          a.arm === false ? h("span", { class: "tag rsv-tag", title: RESERVATION }, "reservation") : null,
          a.evictable ? null : h("span", { class: "tag ne-tag" }, "NE"),
        ),
        h(
          "div",
          { class: "wait-sub muted" },
          h("span", { class: "mono", text: fmtRange(a) }),
          ` · ${fmtScope(a.scope)} · ${model.sessionName(a.session)}`,
          a.reason ? ` · ${a.reason}` : "",
          blockers?.length
            ? ` · when queued, blocked by ${blockers.slice(0, 6).join(", ")}${blockers.length > 6 ? ` +${blockers.length - 6}` : ""}`
            : "",
        ),
      );
    },
    tail,
  );
}

function grants(s) {
  const out = [];
  if (s.max_priority != null && s.max_priority > 300) out.push(`max ${priorityClass(s.max_priority)}`);
  if (s.allow_non_evictable) out.push("non-evictable");
  if (s.allow_kernel) out.push("kernel");
  return out.join(", ") || (s.max_priority == null ? "?" : "—");
}

function renderSessions(d) {
  const box = $("sessions");
  const list = [...model.sessions.values()].sort((a, b) => (a.expires_at ?? 0) - (b.expires_at ?? 0));
  $("sessions-count").textContent = list.length ? `(${list.length})` : "";
  if (!box.querySelector("table")) {
    box.replaceChildren(
      h(
        "table",
        { class: "list" },
        h(
          "thead",
          null,
          h("tr", null, h("th", null, "id"), h("th", null, "name"), h("th", { class: "num" }, "allocs"), h("th", null, "grants"), h("th", { class: "num" }, "expires in")),
        ),
        h("tbody"),
      ),
      h("p", { class: "muted note" }),
    );
  }
  const shown = list.slice(0, LIST_LIMIT);
  box.querySelector("table").hidden = !list.length;
  box.querySelector(".note").textContent = !list.length
    ? "no open sessions"
    : list.length > shown.length
      ? `…and ${list.length - shown.length} more`
      : "";
  const count = (s) => d.perSession.get(s.id) ?? 0;
  reconcile(
    box.querySelector("tbody"),
    shown,
    (s) => s.id,
    (s) => `${s.name}:${count(s)}:${grants(s)}:${s.expires_at}:${s.ttl_s}`,
    (s) =>
      h(
        "tr",
        { "data-testid": `session-${s.id}`, "data-session": s.id },
        h("td", { class: "mono" }, s.id),
        h("td", { class: "name", text: s.name, title: s.name }),
        h("td", { class: "num" }, String(count(s))),
        h("td", { class: "muted" }, grants(s)),
        h("td", { class: "num countdown", "data-expires": s.expires_at ?? "", "data-ttl": s.ttl_s ?? "" }),
      ),
  );
  tickCountdowns();
}

function tickCountdowns() {
  const now = serverNow();
  let overdue = false;
  for (const el of document.querySelectorAll("#sessions .countdown")) {
    if (!el.dataset.expires) {
      el.textContent = "?";
      continue;
    }
    const left = Number(el.dataset.expires) - now;
    el.textContent = left > 0 ? fmtDuration(left) : left > -1 ? "0.0 s" : "renewed?";
    const ttl = Number(el.dataset.ttl) || 30;
    el.classList.toggle("soon", left < Math.min(5, ttl / 3));
    if (left < -1) overdue = true;
  }
  // Keepalives send no event, and the daemon expires a lease within moments of its deadline: a
  // session still open a second after it should have expired was renewed. Re-read the state to
  // learn its new expiry, at most every 5 s (longer when the state is large and slow to read).
  const gap = Math.max(5000, 20 * conn.stateMs);
  if (overdue && conn.state === "live" && Date.now() - conn.lastResync > gap) resync();
}

// ---------------------------------------------------------------- details drawer

function lastRecord(id) {
  const live = model.allocations.get(id);
  if (live) return live;
  for (let i = ui.feed.length - 1; i >= 0; i--) {
    const a = ui.feed[i].ev.allocation;
    if (a && a.id === id) return a;
  }
  return null;
}

function select(id) {
  ui.selected = id;
  ui.evictArmed = null;
  ui.listsDirty = true;
  scheduleRender();
}

function renderDetails() {
  const box = $("details");
  const id = ui.selected;
  if (!id) {
    box.hidden = true;
    box.dataset.sig = "";
    return;
  }
  if (id.startsWith("outside:")) {
    box.dataset.sig = "";
    renderOutsideDetails(box, id.slice("outside:".length));
    return;
  }
  const a = lastRecord(id);
  box.hidden = false;
  if (!a) {
    box.dataset.sig = "";
    box.replaceChildren(h("p", null, `${id}: no record`));
    return;
  }
  const live = model.allocations.has(id);
  // Hits change the record ten times a second: the drawer is rebuilt only when something else
  // does (so its buttons keep focus), and its hits and history are updated in place.
  const sig = `${allocSig(a)}#${live}#${ui.evictArmed === id}#${model.sessionName(a.session)}`;
  if (box.dataset.sig !== sig) {
    box.dataset.sig = sig;
    buildDetails(box, a, live);
  }
  renderDetailsHits(box, a);
  const history = ui.feed.filter((it) => it.ev.allocation?.id === id).slice(-20).reverse();
  const list = box.querySelector("ol.history");
  const historySig = history.map((it) => `${it.key}.${it.rev ?? 0}`).join(",");
  if (list.dataset.sig !== historySig) {
    list.dataset.sig = historySig;
    list.replaceChildren(...history.map(feedRow));
  }
}

function buildDetails(box, a, live) {
  const id = a.id;
  const rows = [
    ["id", a.id],
    ["state", a.state],
    ["armed", a.arm === false ? RESERVATION : "by debugregd"],
    ["label", a.label || "—"],
    ["session", `${model.sessionName(a.session)}${a.session ? ` (${a.session})` : ""}`],
    ["scope", fmtScope(a.scope)],
    ["access", a.access],
    ["length", `${a.length} bytes`],
    ["address", fmtAddress(a)],
    ["space", a.space],
    ["priority", `${a.priority} (${priorityClass(a.priority)})`],
    ["evictable", a.evictable ? "yes" : "no (non-evictable)"],
    ["on evict", a.on_evict],
    ["generation", a.generation],
    ["registers", regsText(a) || "—"],
    ["created", fmtClock(a.created_at)],
    ["updated", fmtClock(a.updated_at)],
  ];
  if (a.reason) rows.push(["reason", a.reason]);
  const actions = [];
  if (live && a.state === "installed") {
    const armed = ui.evictArmed === id;
    actions.push(
      h("button", {
        type: "button",
        class: `btn ${armed ? "danger" : ""}`,
        "data-testid": "details-evict",
        text: armed ? "Confirm evict" : "Evict",
        onclick: () => act(id, "evict"),
      }),
    );
  }
  if (live) {
    actions.push(h("button", { type: "button", class: "btn", "data-testid": "details-release", text: "Release", onclick: () => act(id, "release") }));
  }
  // replaceChildren, unlike h(), would write a null child as the text "null"
  const parts = [
    h(
      "div",
      { class: "panel-head" },
      h("h2", null, `Allocation ${a.id}`),
      h("button", { type: "button", class: "btn small", "data-testid": "details-close", "aria-label": "close", text: "×", onclick: () => select(null) }),
    ),
    a.arm === false ? h("p", { class: `rsv-note p-${priorityClass(a.priority)}`, "data-testid": "details-reservation" }, `A ${RESERVATION}: the daemon counts it, evicts for it and may evict it like any allocation, but opens nothing for it; its debugger writes the registers through ptrace.`) : null,
    h("dl", { class: `kv p-${priorityClass(a.priority)}${a.arm === false ? " reservation" : ""}` }, ...rows.flatMap(([k, v]) => [h("dt", null, k), h("dd", { text: String(v) })])),
    h("div", { class: "actions" }, ...actions, h("span", { class: "error", id: "details-error" })),
    hitsSection(a),
    h("h3", null, "Recent events"),
    h("ol", { class: "feed mini history" }),
  ];
  box.replaceChildren(...parts.filter(Boolean));
}

/** The drawer's hits: filled in by renderDetailsHits. */
function hitsSection(a) {
  const kv = (label, testid) => [h("dt", null, label), h("dd", { "data-testid": testid, "data-hits-of": a.id })];
  if (a.arm === false) {
    return h(
      "section",
      { class: "hits", "data-testid": "details-hits" },
      h("h3", null, "Hits"),
      h("p", { class: "muted small" }, "Its debugger arms it: debugregd sees none of its hits."),
    );
  }
  return h(
    "section",
    { class: "hits", "data-testid": "details-hits" },
    h("h3", null, "Hits"),
    h(
      "dl",
      { class: "kv hit-kv" },
      ...kv("total", "hits-total"),
      ...kv("rate", "hits-rate"),
      ...kv("samples lost", "hits-lost-total"),
      ...kv("last report", "hits-last"),
    ),
    h("p", { class: "hit-warn", "data-testid": "hits-unknown", role: "status", hidden: true }),
    h("h3", null, "Top call sites"),
    h("p", { class: "muted small", "data-testid": "hits-seen" }),
    h("p", { class: "hit-lost", "data-testid": "hits-lost", hidden: true }),
    h(
      "table",
      { class: "list sites", "data-testid": "hit-sites", hidden: true },
      h(
        "thead",
        null,
        h(
          "tr",
          null,
          h("th", { class: "num", title: "sampled hits at this call site" }, "samples"),
          h("th", null, "call site"),
          h("th", null, "threads"),
          h("th", null, "CPUs"),
          h("th", null, "last seen"),
        ),
      ),
      h("tbody"),
    ),
    h("p", { class: "muted small", "data-testid": "hits-other", hidden: true }),
  );
}

function threadsText(site) {
  const tids = [...site.tids].sort((x, y) => x - y);
  const shown = tids.slice(0, 4);
  const more = Math.max(site.threads, tids.length) - shown.length;
  return `${shown.join(", ") || "?"}${more > 0 ? ` +${more}` : ""}`;
}

function pidsText(site) {
  const pids = [...site.pids].sort((x, y) => x - y);
  if (!pids.length) return null;
  const more = pids.length > 3 ? ` +${pids.length - 3}` : "";
  return `pid${pids.length > 1 ? "s" : ""} ${pids.slice(0, 3).join(", ")}${more}`;
}

function siteRow(s) {
  const where = [
    s.symbol ? s.ip : null,
    s.mapping ? `${s.mapping.file}+${s.mapping.offset}` : "mapping unknown",
    pidsText(s),
  ]
    .filter(Boolean)
    .join(" · ");
  return h(
    "tr",
    { "data-testid": "hit-site", "data-ip": s.ip ?? "" },
    h("td", { class: "num", "data-testid": "site-samples" }, num(s.count)),
    h(
      "td",
      { class: "site" },
      h("div", { class: "mono site-name", "data-testid": "site-name", text: siteName(s) }),
      h("div", { class: "mono muted site-where", "data-testid": "site-where", text: where }),
    ),
    h("td", { class: "mono", "data-testid": "site-threads", title: `${plural(s.threads, "thread")}: ${[...s.tids].join(", ")}` }, threadsText(s)),
    h("td", { class: "mono", "data-testid": "site-cpus" }, [...s.cpus].sort((x, y) => x - y).join(",") || "?"),
    h("td", { class: "mono small", "data-testid": "site-last" }, fmtClock(s.last)),
  );
}

/** An allocation's totals (from its record), its rate, and its call sites summed over the
 * reports seen since the page loaded, most samples first. */
function renderDetailsHits(box, a) {
  const section = box.querySelector('[data-testid="details-hits"]');
  if (!section || a.arm === false) return;
  const part = (testid) => section.querySelector(`[data-testid="${testid}"]`);
  const book = hits.get(a.id);
  const sum = book?.sum;
  setText(part("hits-total"), num(a.hits ?? sum?.count ?? 0));
  setText(part("hits-rate"), rateText(hits.rate(a.id, daemonNow())));
  setText(part("hits-lost-total"), num(a.hits_lost ?? sum?.lost ?? 0));
  setText(part("hits-last"), sum?.last != null ? fmtClock(sum.last) : "none since the page loaded");
  const unknown = part("hits-unknown");
  unknown.hidden = !book?.unknown;
  if (book?.unknown) setText(unknown, `Hits unknown: ${book.unknown.reason} (${fmtClock(book.unknown.at)}).`);
  setText(
    part("hits-seen"),
    sum?.reports
      ? `Summed over the ${plural(sum.reports, "report")} seen since the page loaded (${plural(sum.count, "hit")}, ${num(sum.sampled)} sampled).`
      : "No hit reported since the page loaded.",
  );
  const lost = part("hits-lost");
  lost.hidden = !sum?.lost;
  if (sum?.lost) setText(lost, `${plural(sum.lost, "sample")} lost: counted in the hits, missing from the call sites.`);
  const sites = sum ? sum.ranked() : [];
  const table = part("hit-sites");
  table.hidden = !sites.length;
  reconcile(
    table.querySelector("tbody"),
    sites.slice(0, SITES_SHOWN),
    (s) => s.key,
    (s) => `${s.count}:${s.last}:${s.threads}:${s.tids.size}:${s.cpus.size}:${s.pids.size}:${s.symbol}:${s.mapping?.file}`,
    siteRow,
  );
  const unlisted = sites.slice(SITES_SHOWN).reduce((n, s) => n + s.count, 0) + (sum?.otherCount ?? 0);
  const other = part("hits-other");
  other.hidden = !unlisted;
  if (unlisted) setText(other, `${plural(unlisted, "sample")} at other call sites.`);
}

function renderOutsideDetails(box, key) {
  box.hidden = false;
  const rec = model.outside.get(key);
  const history = ui.feed
    .filter((it) => it.ev.type === "outside" && it.ev.target && outsideKey(it.ev.pool, it.ev.target) === key)
    .slice(-20)
    .reverse();
  const last = history[0]?.ev;
  const target = rec?.target ?? last?.target;
  const pool = rec?.pool ?? last?.pool;
  const held = [];
  for (const p of model.derived().pools.values()) {
    p.rows.forEach((cells, cpu) => {
      const ix = cells.flatMap((cell, i) => (cell.outside.some((o) => outsideKey(o.pool, o.target) === key) ? [indexName(p.pool, i)] : []));
      if (ix.length) held.push(`cpu${cpu}:${ix.join("+")}`);
    });
  }
  const rows = target
    ? [
        ["holder", rec ? outsidePhrase(rec) : "users outside debugregd, gone"],
        ["target", outsideWhere(pool, target)],
        ["pool", pool],
        ["registers", rec ? `${rec.registers} counted` : "none now"],
        ["measured", rec ? `${rec.measured} (what the kernel shows)` : "none now: they left"],
        ["where", held.join(" ") || "—"],
        ["since", rec ? fmtClock(rec.since) : "—"],
        ["priority", "above every priority; never evicted"],
      ]
    : [["target", key]];
  box.replaceChildren(
    h(
      "div",
      { class: "panel-head" },
      h("h2", null, "Outside debugregd"),
      h("button", { type: "button", class: "btn small", "data-testid": "details-close", "aria-label": "close", text: "×", onclick: () => select(null) }),
    ),
    h(
      "p",
      { class: "muted small" },
      "Registers the kernel holds for users that do not ask debugregd. The daemon measures them (on a refusal, on a timer and after every release) and counts them in admission; when they leave, waiters are reinstalled.",
    ),
    h("dl", { class: "kv outside" }, ...rows.flatMap(([k, v]) => [h("dt", null, k), h("dd", { text: String(v) })])),
    h("h3", null, "Recent measurements"),
    h("ol", { class: "feed mini" }, ...history.map(feedRow)),
  );
}

async function act(id, what) {
  try {
    if (what === "evict") {
      if (ui.evictArmed !== id) {
        ui.evictArmed = id;
        renderDetails();
        return;
      }
      ui.evictArmed = null;
      await api("POST", `/v1/allocations/${encodeURIComponent(id)}/evict`, { reason: "evicted from the dashboard" });
    } else {
      await api("DELETE", `/v1/allocations/${encodeURIComponent(id)}`);
    }
  } catch (err) {
    const el = $("details-error");
    if (el) el.textContent = err.message;
  }
}

// Clicks and keyboard on any allocation (chips, task and waiting lines) or outside holder (its
// cells, list and feed rows) open the drawer; hovering a chip lights up every register it holds.
const selection = (el) =>
  el?.dataset.allocation ? el.dataset.allocation : el?.dataset.outside ? `outside:${el.dataset.outside}` : null;
document.addEventListener("click", (e) => {
  const id = selection(e.target.closest?.("[data-allocation], [data-outside]"));
  if (id) select(id);
});
document.addEventListener("keydown", (e) => {
  if (e.key === "Escape" && ui.selected) select(null);
  if (e.key !== "Enter" && e.key !== " ") return;
  const id = selection(e.target.closest?.("[data-allocation][role=button], [data-outside][role=button]"));
  if (id) {
    e.preventDefault();
    select(id);
  }
});
function hover(id, on) {
  if (!id) return;
  for (const el of document.querySelectorAll(`.chip[data-allocation="${CSS.escape(id)}"]`)) {
    el.classList.toggle("hover", on);
  }
}
document.addEventListener("mouseover", (e) => hover(e.target.closest?.(".chip")?.dataset.allocation, true));
document.addEventListener("mouseout", (e) => hover(e.target.closest?.(".chip")?.dataset.allocation, false));

// ---------------------------------------------------------------- render loop

const RENDER_EVERY_MS = 100; // at most ten redraws a second, however fast events arrive

function scheduleRender() {
  if (ui.renderQueued) return;
  ui.renderQueued = true;
  const run = () => {
    ui.renderQueued = false;
    ui.renderedAt = performance.now();
    render();
  };
  const wait = Math.max(0, RENDER_EVERY_MS - (performance.now() - ui.renderedAt));
  // rAF is paused in background tabs; the timeout keeps the page current there too.
  setTimeout(() => (document.hidden ? run() : requestAnimationFrame(run)), wait);
}

const LIST_EVERY_MS = 250; // under a storm of events, lists redraw at most 4 times a second

function render() {
  $("event-id").textContent = model.loaded ? `event #${model.eventId}` : "";
  renderFeed();
  if (!ui.signedIn || !model.loaded) return;
  const now = performance.now();
  const changed = ui.drawnVersion !== model.version || ui.listsDirty;
  if (changed) {
    renderGrid();
    renderHitRates(); // after the grid: a redrawn cell gets its badge back in the same frame
    renderOutside(model.derived());
    if (now - ui.listsAt >= LIST_EVERY_MS) {
      const d = model.derived();
      renderTasks(d);
      renderWaiting(d);
      renderSessions(d);
      renderDetails();
      ui.listsAt = now;
      ui.drawnVersion = model.version;
      ui.listsDirty = false;
    } else {
      clearTimeout(ui.listsTimer);
      ui.listsTimer = setTimeout(scheduleRender, LIST_EVERY_MS - (now - ui.listsAt));
    }
  }
}

$("tasks-filter").addEventListener("input", () => {
  ui.listsDirty = true;
  scheduleRender();
});
setInterval(tickCountdowns, 250);
setInterval(() => {
  if (ui.signedIn && model.loaded && !document.hidden) renderHitRates();
}, 250);
setInterval(() => {
  if (ui.signedIn) drawCharts();
}, 10_000);

// ---------------------------------------------------------------- boot

/** A `#key=` sign-in link: take the key, and erase it from the address bar and the history entry
 * before anything else (the fragment never reached the server). */
function takeLinkKey() {
  if (location.hash.length <= 1) return null;
  const key = new URLSearchParams(location.hash.slice(1)).get("key");
  if (key !== null) history.replaceState(history.state, "", location.pathname + location.search);
  return key;
}

async function signInWithLink(key) {
  try {
    await signIn(key);
    start();
  } catch (err) {
    showSignIn(
      err instanceof HttpError && err.status === 401
        ? "The key in the sign-in link was refused."
        : `Sign-in failed: ${err.message}`,
    );
  }
}

async function boot() {
  const linkKey = takeLinkKey();
  try {
    renderHost(await api("GET", "/v1/host"));
  } catch {
    // not up yet: the connection loop reports it
  }
  if (linkKey) {
    await signInWithLink(linkKey);
    return;
  }
  let admin = false;
  try {
    admin = Boolean((await api("GET", "/v1/auth/me"))?.admin);
  } catch (err) {
    if (!(err instanceof HttpError)) {
      // The daemon is unreachable: keep trying until it answers.
      setStatus("disconnected", "daemon unreachable — retrying…");
      setTimeout(boot, 2000);
      return;
    }
  }
  if (admin) start();
  else showSignIn();
}

// A sign-in link opened in a tab that already shows the dashboard changes only the fragment.
window.addEventListener("hashchange", () => {
  const key = takeLinkKey();
  if (key) signInWithLink(key);
});

buildLegend();
buildTypeFilters();
boot();
