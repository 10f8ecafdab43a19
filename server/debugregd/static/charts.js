// Small rate charts on plain canvas: per-second rates computed from monotonic counters.

export const WINDOW_S = 300; // the last five minutes

/** Turns successive samples of monotonic counters into per-second rates. */
export class RateSeries {
  constructor(fields) {
    this.fields = fields;
    this.points = []; // {t, rates: {field: perSecond}}
    this.last = null; // {t, values}
  }

  /** Add a sample taken at `t` seconds (local clock). A counter that went down restarted. */
  add(t, values) {
    const prev = this.last;
    this.last = { t, values };
    if (!prev || t <= prev.t) return;
    const dt = t - prev.t;
    const rates = {};
    for (const f of this.fields) {
      const d = values[f] - prev.values[f];
      if (!(d >= 0)) return; // daemon restarted: counters began again; start a new baseline
      rates[f] = d / dt;
    }
    this.points.push({ t, rates });
    const cutoff = t - WINDOW_S;
    while (this.points.length && this.points[0].t < cutoff) this.points.shift();
  }

  /** A gap (daemon unreachable): the next sample is a new baseline. */
  gap() {
    this.last = null;
  }

  latest(field) {
    const p = this.points[this.points.length - 1];
    return p ? p.rates[field] : null;
  }
}

function niceMax(v) {
  if (v <= 1) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

/** Draw one field of a series into a canvas, sized to its CSS box. */
export function drawRate(canvas, series, field, color, now) {
  const dpr = window.devicePixelRatio || 1;
  const w = Math.max(10, canvas.clientWidth);
  const h = Math.max(10, canvas.clientHeight);
  if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
    canvas.width = Math.round(w * dpr);
    canvas.height = Math.round(h * dpr);
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  const style = getComputedStyle(canvas);
  const grid = style.getPropertyValue("--chart-grid").trim() || "#2a3644";
  const muted = style.getPropertyValue("--chart-text").trim() || "#8696a7";
  const pts = series.points;
  const max = niceMax(Math.max(0, ...pts.map((p) => p.rates[field])));
  const left = 4;
  const right = w - 4;
  const top = 14;
  const bottom = h - 4;
  const x = (t) => right - ((now - t) / WINDOW_S) * (right - left);
  const y = (v) => bottom - (v / max) * (bottom - top);

  ctx.strokeStyle = grid;
  ctx.lineWidth = 1;
  ctx.beginPath();
  for (const f of [0, 0.5, 1]) {
    const yy = Math.round(y(max * f)) + 0.5;
    ctx.moveTo(left, yy);
    ctx.lineTo(right, yy);
  }
  ctx.stroke();
  ctx.fillStyle = muted;
  ctx.font = "10px system-ui, sans-serif";
  ctx.textBaseline = "top";
  ctx.fillText(`max ${max}/s`, left, 1);
  ctx.textAlign = "right";
  ctx.fillText("5 min", right, 1);
  ctx.textAlign = "left";

  if (!pts.length) return;
  // Segments break where samples are missing (more than 3 poll intervals apart).
  ctx.strokeStyle = color;
  ctx.lineWidth = 1.5;
  ctx.fillStyle = color + "33";
  let seg = [];
  const flush = () => {
    if (!seg.length) return;
    ctx.beginPath();
    ctx.moveTo(x(seg[0].t), bottom);
    for (const p of seg) ctx.lineTo(x(p.t), y(p.rates[field]));
    ctx.lineTo(x(seg[seg.length - 1].t), bottom);
    ctx.closePath();
    ctx.fill();
    ctx.beginPath();
    seg.forEach((p, i) => {
      const fn = i ? "lineTo" : "moveTo";
      ctx[fn](x(p.t), y(p.rates[field]));
    });
    ctx.stroke();
    seg = [];
  };
  let prevT = null;
  for (const p of pts) {
    if (prevT !== null && p.t - prevT > 7) flush();
    seg.push(p);
    prevT = p.t;
  }
  flush();
}
