// Gigafactory dashboard: plain JavaScript, no build step, no external files.
// Live data: the event stream over SSE (read with fetch so the token can be sent as a
// header), stats every 2 s, workers and the jobs page refreshed periodically and when
// events arrive. Only one page of jobs is ever rendered.
"use strict";

const $ = (s, el = document) => el.querySelector(s);
const STATES = ["pending", "blocked", "dispatched", "running", "waiting", "succeeded", "dead", "cancelled", "rejected"];
const TERMINAL = new Set(["succeeded", "dead", "cancelled", "rejected"]);
const PAGE = 50;

// A link carrying the token (`gf dev` prints `http://…/#token=…`): keep it, then drop
// it from the address bar. A fragment is never sent to the server.
{
  const m = location.hash.match(/(?:^#|&)token=([^&]+)/);
  if (m) {
    localStorage.setItem("gf_token", decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
}

const app = {
  token: localStorage.getItem("gf_token") || "",
  role: "operator",
  stateFilter: "",
  cursors: [null],        // cursor of each page visited; last = current
  nextCursor: null,
  missing: new Set(),     // optional endpoints that answered 404 (requeue, reject, …)
  lastProcessed: null,
  eventsAbort: null,
  logAbort: null,
  jobTimer: null,
};

// ---------- helpers ----------
function esc(s) {
  return String(s ?? "").replace(/[&<>"']/g, c => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}
function h(html) { const t = document.createElement("template"); t.innerHTML = html.trim(); return t.content.firstChild; }
function short(id) { return String(id || "").slice(-8); }
function ago(iso) {
  if (!iso) return "";
  const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  return s < 60 ? `${s.toFixed(0)}s ago` : s < 3600 ? `${(s / 60).toFixed(0)}m ago` : s < 86400 ? `${(s / 3600).toFixed(1)}h ago` : `${(s / 86400).toFixed(1)}d ago`;
}
function dur(ms) {
  if (ms == null) return "–";
  if (ms < 1000) return `${ms} ms`;
  const s = ms / 1000;
  return s < 60 ? `${s.toFixed(1)} s` : s < 3600 ? `${(s / 60).toFixed(1)} min` : `${(s / 3600).toFixed(1)} h`;
}
function uptime(sec) {
  const d = Math.floor(sec / 86400), h_ = Math.floor(sec % 86400 / 3600), m = Math.floor(sec % 3600 / 60), s = sec % 60;
  return d ? `${d}d ${h_}h` : h_ ? `${h_}h ${m}m` : m ? `${m}m ${s}s` : `${s}s`;
}
function fmt(n) { return n == null ? "–" : Number(n).toLocaleString(); }
function time(iso) { return iso ? new Date(iso).toLocaleTimeString([], { hour12: false }) : ""; }
function badge(state) { return `<span class="badge ${esc(state)}" data-state="${esc(state)}">${esc(state)}</span>`; }
function toast(msg, err) {
  const t = $("#toast"); t.textContent = msg; t.className = "toast" + (err ? " err" : ""); t.hidden = false;
  clearTimeout(toast.timer); toast.timer = setTimeout(() => { t.hidden = true; }, 3500);
}

class HttpError extends Error {
  constructor(status, kind, message) { super(message); this.status = status; this.kind = kind; }
}

function headers(extra = {}) {
  const hd = { ...extra };
  if (app.token) hd.Authorization = `Bearer ${app.token}`;
  return hd;
}

async function api(method, path, body) {
  const opts = { method, headers: headers(body ? { "Content-Type": "application/json" } : {}) };
  if (body) opts.body = JSON.stringify(body);
  const r = await fetch(path, opts);
  let data = null;
  try { data = await r.json(); } catch (_) { /* empty body */ }
  if (!r.ok) {
    const e = data && data.error ? data.error : { kind: "http", message: r.statusText };
    if (r.status === 401) askToken();
    throw new HttpError(r.status, e.kind, e.message);
  }
  return data;
}

// An optional endpoint (added by later work): answers null when it does not exist yet.
async function optional(path) {
  if (app.missing.has(path.split("?")[0].replace(/[0-9a-f-]{36}/, "{id}"))) return null;
  try { return await api("GET", path); } catch (e) {
    if (e.status === 404 && e.kind !== "not_found_job") {
      if (e.message === "no such route") app.missing.add(path.split("?")[0].replace(/[0-9a-f-]{36}/, "{id}"));
      return null;
    }
    throw e;
  }
}

// ---------- SSE over fetch (headers + Last-Event-ID + reconnect) ----------
async function sse(url, { onEvent, onState, signal, lastId = null }) {
  let backoff = 500;
  while (!signal.aborted) {
    try {
      const hd = headers({ Accept: "text/event-stream" });
      if (lastId) hd["Last-Event-ID"] = lastId;
      const r = await fetch(url, { headers: hd, signal });
      if (r.status === 401) { askToken(); throw new Error("unauthorized"); }
      if (!r.ok) throw new Error(`HTTP ${r.status}`);
      onState && onState(true);
      backoff = 500;
      const reader = r.body.getReader();
      const dec = new TextDecoder();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += dec.decode(value, { stream: true });
        let i;
        while ((i = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, i); buf = buf.slice(i + 2);
          const ev = { event: "message", id: null, data: "" };
          for (const line of block.split("\n")) {
            if (line.startsWith(":")) continue;
            const c = line.indexOf(":");
            const k = c < 0 ? line : line.slice(0, c);
            const v = c < 0 ? "" : line.slice(c + 1).replace(/^ /, "");
            if (k === "event") ev.event = v; else if (k === "id") ev.id = v; else if (k === "data") ev.data += (ev.data ? "\n" : "") + v;
          }
          if (!ev.data && ev.event === "message") continue;
          if (ev.id) lastId = ev.id;
          if (onEvent(ev) === false) return;   // the consumer is done (e.g. `end`)
        }
      }
    } catch (e) {
      if (signal.aborted) return;
    }
    onState && onState(false);
    await new Promise(res => setTimeout(res, backoff));
    backoff = Math.min(backoff * 2, 5000);
  }
}

// ---------- auth ----------
function askToken() {
  const d = $("#token-dialog");
  if (!d.open) { $("#token-error").textContent = app.token ? "That token was refused." : ""; d.showModal(); $("#token-input").focus(); }
}
$("#token-form").addEventListener("submit", () => {
  app.token = $("#token-input").value.trim();
  localStorage.setItem("gf_token", app.token);
  $("#token-input").value = "";
  boot();
});
$("#token-btn").addEventListener("click", () => { $("#token-error").textContent = ""; $("#token-dialog").showModal(); });

// ---------- charts (inline SVG) ----------
function chart(el, series, opts) {
  const W = el.clientWidth || 500, H = el.clientHeight || 130, P = { l: 34, r: 6, t: 8, b: 16 };
  const n = series[0].values.length;
  const max = Math.max(1, ...series.flatMap(s => s.values.filter(v => v != null)));
  const x = i => P.l + (W - P.l - P.r) * (n <= 1 ? 0 : i / (n - 1));
  const y = v => H - P.b - (H - P.t - P.b) * (v / max);
  let svg = `<svg viewBox="0 0 ${W} ${H}" preserveAspectRatio="none">`;
  for (const f of [0, .5, 1]) {
    const yy = y(max * f);
    svg += `<line class="axis" x1="${P.l}" x2="${W - P.r}" y1="${yy}" y2="${yy}" stroke-dasharray="${f ? "2 3" : ""}"/>`;
    svg += `<text x="${P.l - 4}" y="${yy + 3}" text-anchor="end">${esc(opts.fmt(max * f))}</text>`;
  }
  svg += `<text x="${P.l}" y="${H - 3}">-15m</text><text x="${W - P.r}" y="${H - 3}" text-anchor="end">now</text>`;
  if (opts.bars) {
    const bw = Math.max(1, (W - P.l - P.r) / n - 1);
    for (let i = 0; i < n; i++) {
      let base = 0;
      for (const s of series) {
        const v = s.values[i] || 0;
        if (!v) continue;
        const top = y(base + v), bottom = y(base);
        svg += `<rect x="${(P.l + (W - P.l - P.r) * i / n).toFixed(1)}" y="${top.toFixed(1)}" width="${bw.toFixed(1)}" height="${(bottom - top).toFixed(1)}" fill="${s.color}"><title>${esc(s.name)}: ${v}</title></rect>`;
        base += v;
      }
    }
  } else {
    for (const s of series) {
      let d = "", pen = false;
      s.values.forEach((v, i) => { if (v == null) { pen = false; return; } d += `${pen ? "L" : "M"}${x(i).toFixed(1)},${y(v).toFixed(1)}`; pen = true; });
      svg += `<path d="${d}" fill="none" stroke="${s.color}" stroke-width="1.6"/>`;
      s.values.forEach((v, i) => { if (v != null) svg += `<circle cx="${x(i).toFixed(1)}" cy="${y(v).toFixed(1)}" r="1.8" fill="${s.color}"><title>${esc(s.name)}: ${esc(opts.fmt(v))}</title></circle>`; });
    }
  }
  svg += `</svg>`;
  el.innerHTML = svg + `<div class="legend">${series.map(s => `<span><i style="background:${s.color}"></i>${esc(s.name)}</span>`).join("")}</div>`;
}

const css = v => getComputedStyle(document.documentElement).getPropertyValue(v).trim();

// ---------- overview ----------
function setCounter(id, value) {
  const el = $(id);
  const text = String(value);
  if (el.textContent !== text) { el.textContent = text; el.classList.remove("bump"); void el.offsetWidth; el.classList.add("bump"); }
}

async function loadStats() {
  const s = await api("GET", "/api/stats");
  const j = s.jobs;
  setCounter("#counter-processed", fmt(j.processed));
  $("#sub-processed").textContent = `${fmt(j.by_state.succeeded)} succeeded · ${fmt(j.total)} total`;
  setCounter("#counter-running", fmt(j.running));
  $("#sub-running").textContent = `${fmt(s.workers.slots - s.workers.free_slots)}/${fmt(s.workers.slots)} slots busy`;
  const depth = Object.entries(j.queue_depth);
  setCounter("#counter-queued", fmt(depth.reduce((a, [, n]) => a + n, 0)));
  $("#queue-depth").innerHTML = depth.length ? depth.map(([q, n]) => `<span class="chip" data-queue="${esc(q)}">${esc(q)} ${n}</span>`).join(" ") : "no backlog";
  setCounter("#counter-workers", fmt(s.workers.online));
  $("#sub-workers").textContent = s.workers.draining ? `${s.workers.draining} draining` : "all active";
  setCounter("#counter-dead", fmt(j.by_state.dead));
  $("#sub-dead").textContent = `${fmt(j.by_state.cancelled)} cancelled · ${fmt(j.by_state.blocked)} blocked`;
  $("#counter-uptime").textContent = uptime(s.uptime_secs);
  $("#sub-uptime").textContent = s.coordinator;
  $("#coord").textContent = s.coordinator;
  const l = $("#leader"); l.textContent = s.is_leader ? "scheduler leader" : "standby"; l.className = "pill" + (s.is_leader ? " leader" : "");
  for (const st of STATES) { const n = $(`#state-filters [data-state="${st}"] .n`); if (n) n.textContent = fmt(j.by_state[st]); }
  const pts = j.series;
  chart($("#chart-throughput"), [
    { name: "succeeded", color: css("--ok"), values: pts.map(p => p.succeeded) },
    { name: "dead", color: css("--err"), values: pts.map(p => p.dead) },
    { name: "cancelled", color: css("--muted"), values: pts.map(p => p.cancelled) },
  ], { bars: true, fmt: v => Math.round(v) });
  chart($("#chart-latency"), [
    { name: "avg", color: css("--accent"), values: pts.map(p => p.latency_ms_avg) },
    { name: "max", color: css("--wait"), values: pts.map(p => p.latency_ms_max) },
    { name: "run avg", color: css("--ok"), values: pts.map(p => p.run_ms_avg) },
  ], { fmt: v => dur(Math.round(v)) });
  const mt = $("#models-table tbody");
  mt.innerHTML = j.models.length ? j.models.map(m => `<tr><td>${esc(m.provider)}</td><td class="mono">${esc(m.model)}</td><td class="num">${fmt(m.jobs)}</td><td class="num">${fmt(m.calls)}</td><td class="num">${fmt(m.input_tokens)}</td><td class="num">${fmt(m.output_tokens)}</td><td class="num">${m.tokens_per_sec == null ? "–" : m.tokens_per_sec.toFixed(1)}</td><td class="num">${m.ms_per_call == null ? "–" : fmt(m.ms_per_call)}</td><td class="num">${m.cost.toFixed(4)}</td></tr>`).join("")
    : `<tr><td colspan="9" class="empty">no job has reported model usage yet</td></tr>`;
}

function stateFilters() {
  const el = $("#state-filters");
  el.innerHTML = [["", "all"], ...STATES.map(s => [s, s])].map(([v, label]) =>
    `<button type="button" class="ghost${app.stateFilter === v ? " on" : ""}" data-state="${v}">${label}${v ? '<span class="n"></span>' : ""}</button>`).join("");
  el.querySelectorAll("button").forEach(b => b.addEventListener("click", () => {
    app.stateFilter = b.dataset.state; app.cursors = [null]; stateFilters(); loadJobs(); loadStats().catch(() => {});
  }));
}

function actionButtons(job) {
  if (app.role !== "operator") return "";
  const id = esc(job.id);
  let out = "";
  if (!TERMINAL.has(job.state)) out += `<button type="button" class="small danger act-cancel" data-id="${id}">Cancel</button> `;
  if (["dead", "cancelled", "rejected"].includes(job.state) && !app.missing.has("requeue"))
    out += `<button type="button" class="small act-requeue" data-id="${id}">Requeue</button> `;
  if (["pending", "blocked"].includes(job.state) && !app.missing.has("reject"))
    out += `<button type="button" class="small act-reject" data-id="${id}">Reject</button>`;
  return out;
}

async function jobAction(kind, id) {
  if (kind === "cancel" && !confirm(`Cancel job ${id}?`)) return;
  try {
    const r = await api("POST", `/api/jobs/${id}/${kind}`, kind === "cancel" ? { reason: "cancelled from the dashboard" } : undefined);
    toast(`${kind}: ${short(id)} → ${r && r.state ? r.state : "ok"}`);
  } catch (e) {
    if (e.status === 404 && e.message === "no such route") {
      app.missing.add(kind); toast(`${kind} is not available on this coordinator`, true);
    } else toast(`${kind} failed: ${e.message}`, true);
  }
  refreshSoon();
}

document.addEventListener("click", e => {
  const b = e.target.closest("button[data-id]");
  if (!b) return;
  for (const k of ["cancel", "requeue", "reject"]) if (b.classList.contains(`act-${k}`)) jobAction(k, b.dataset.id);
  if (b.classList.contains("act-drain")) drain(b.dataset.id, b.dataset.drain === "1");
});

async function loadJobs() {
  const q = new URLSearchParams({ limit: PAGE });
  if (app.stateFilter) q.set("state", app.stateFilter);
  const queue = $("#queue-filter").value.trim(); if (queue) q.set("queue", queue);
  const product = $("#product-filter").value.trim(); if (product) q.set("product", product);
  const cur = app.cursors[app.cursors.length - 1]; if (cur) q.set("cursor", cur);
  let page;
  try { page = await api("GET", `/api/jobs?${q}`); } catch (e) { if (e.status === 400) { toast(e.message, true); return; } throw e; }
  app.nextCursor = page.next_cursor || null;
  const from = (app.cursors.length - 1) * PAGE;
  $("#jobs-total").textContent = page.total ? `${from + 1}–${from + page.jobs.length} of ${fmt(page.total)}` : "";
  $("#jobs-prev").disabled = app.cursors.length <= 1;
  $("#jobs-next").disabled = !app.nextCursor;
  const tb = $("#jobs-table tbody");
  tb.innerHTML = page.jobs.length ? page.jobs.map(j => `<tr data-id="${esc(j.id)}" data-state="${esc(j.state)}">
      <td class="mono"><a href="#/job/${esc(j.id)}" title="${esc(j.id)}">${esc(short(j.id))}</a></td>
      <td>${badge(j.state)}</td><td>${esc(j.spec.queue)}</td>
      <td class="cmd" title="${esc(j.spec.command.join(" "))}${j.reason ? "\n" + esc(j.reason) : ""}">${esc(j.spec.command.join(" "))}</td>
      <td class="num">${j.attempts}/${j.spec.max_attempts}</td><td class="num">${j.epoch}</td>
      <td class="mono">${esc(j.lease ? j.lease.worker : (j.history && j.history.length ? j.history[j.history.length - 1].worker : ""))}</td>
      <td title="${esc(j.submitted_at)}">${ago(j.submitted_at)}</td><td title="${esc(j.updated_at)}">${ago(j.updated_at)}</td>
      <td>${actionButtons(j)}</td></tr>`).join("")
    : `<tr><td colspan="10" class="empty">no jobs${app.stateFilter ? " in state " + esc(app.stateFilter) : ""}</td></tr>`;
}
$("#jobs-next").addEventListener("click", () => { if (app.nextCursor) { app.cursors.push(app.nextCursor); loadJobs(); } });
$("#jobs-prev").addEventListener("click", () => { if (app.cursors.length > 1) { app.cursors.pop(); loadJobs(); } });
for (const id of ["#queue-filter", "#product-filter"]) $(id).addEventListener("change", () => { app.cursors = [null]; loadJobs(); });

async function loadWorkers() {
  const ws = await api("GET", `/api/workers${$("#workers-all").checked ? "?all=true" : ""}`);
  $("#workers-sub").textContent = `${ws.filter(w => w.online).length} online`;
  const tb = $("#workers-table tbody");
  tb.innerHTML = ws.length ? ws.map(w => {
    const caps = Object.entries(w.capabilities.values || {}).map(([k, v]) => `<span class="chip">${esc(k)}=${esc(v)}</span>`).join("")
      + (w.capabilities.tags || []).map(t => `<span class="chip tag">${esc(t)}</span>`).join("");
    const used = w.slots - w.free_slots;
    const state = w.online || w.state === "gone" ? w.state : "gone";
    const btn = app.role !== "operator" || state === "gone" ? "" : w.state === "draining"
      ? `<button type="button" class="small act-drain" data-id="${esc(w.id)}" data-drain="0">Undrain</button>`
      : `<button type="button" class="small act-drain" data-id="${esc(w.id)}" data-drain="1">Drain</button>`;
    return `<tr data-worker="${esc(w.id)}"><td class="mono">${esc(w.id)}</td><td>${badge(state)}</td><td><div class="caps">${caps}</div></td>
      <td>${esc((w.capabilities.queues || []).join(", "))}</td>
      <td><div class="bar" title="${used}/${w.slots}" style="width:70px;display:inline-block;vertical-align:middle"><span style="width:${w.slots ? 100 * used / w.slots : 0}%"></span></div> ${used}/${w.slots}</td>
      <td class="mono">${(w.running || []).map(r => `<a href="#/job/${esc(r.job_id)}">${esc(short(r.job_id))}</a>`).join(" ")}</td>
      <td>${dur(w.heartbeat_age_ms)} ago</td><td class="muted">${esc(w.version)}</td><td>${btn}</td></tr>`;
  }).join("") : `<tr><td colspan="9" class="empty">no workers</td></tr>`;
}
$("#workers-all").addEventListener("change", () => loadWorkers());

async function drain(id, on) {
  try {
    const r = await api("POST", `/api/workers/${encodeURIComponent(id)}/${on ? "drain" : "undrain"}`);
    toast(`${id} is ${r.state}`);
  } catch (e) { toast(`${on ? "drain" : "undrain"} failed: ${e.message}`, true); }
  loadWorkers().catch(() => {});
}

// ---------- factories (secured NATS; operators only) ----------
function approved(x) {
  const parts = (x.pool ? [`pool=${x.pool}`] : []).concat(Object.entries(x.caps || {}).map(([k, v]) => `${k}=${v}`), (x.tags || []).map(t => `+${t}`));
  return parts.length ? parts.map(p => `<span class="chip">${esc(p)}</span>`).join("") : `<span class="muted">any</span>`;
}
async function loadFactories() {
  const card = $("#factories-card");
  if (app.role !== "operator") { card.hidden = true; return; }
  let fs, ts;
  try { fs = await optional("/api/factories"); } catch (e) { card.hidden = true; return; }
  if (fs == null) { card.hidden = true; return; }   // an open NATS: no factories
  try { ts = await api("GET", "/api/factory-tokens"); } catch (e) { ts = []; }
  card.hidden = false;
  $("#factories-sub").textContent = `${fs.filter(f => f.connected).length} connected of ${fs.length} enrolled`;
  $("#factories-table tbody").innerHTML = fs.length ? fs.map(f => `<tr data-factory="${esc(f.id)}"><td class="mono">${esc(f.id)}</td>
      <td><span class="badge ${f.state === "revoked" ? "dead" : "succeeded"}">${esc(f.state)}</span></td><td>${esc(f.pool || "any")}</td><td><div class="caps">${approved({ caps: f.caps, tags: f.tags })}</div></td>
      <td title="${esc(f.last_seen || "")}">${f.last_seen ? `${ago(f.last_seen)} from ${esc(f.host || "")}` : "never"}</td><td>${f.connected ? "yes" : "no"}</td><td class="num">${esc(f.keys)}</td>
      <td>${f.state === "active" ? `<button type="button" class="small act-revoke-factory" data-factory-id="${esc(f.id)}">Revoke</button>` : ""}</td></tr>`).join("")
    : `<tr><td colspan="8" class="empty">no factories enrolled: make a token, then <code>gf worker --key-dir DIR --enroll TOKEN</code></td></tr>`;
  $("#tokens-table tbody").innerHTML = ts.length ? ts.map(t => `<tr data-token="${esc(t.id)}"><td class="mono">${esc(t.id)}</td><td>${esc(t.state)}</td>
      <td class="num">${esc(t.used)}/${esc(t.used + t.uses_left)}</td><td title="${esc(t.expires_at)}">${esc(time(t.expires_at))}</td><td><div class="caps">${approved(t)}</div></td>
      <td>${esc(t.cidrs.length ? t.cidrs.join(", ") : "any")}</td><td class="mono">${esc(t.factories.join(", "))}</td><td class="error-text">${esc(t.last_refusal || "")}</td>
      <td>${t.state === "active" ? `<button type="button" class="small act-revoke-token" data-token-id="${esc(t.id)}">Revoke</button>` : ""}</td></tr>`).join("")
    : `<tr><td colspan="9" class="empty">no enrollment tokens</td></tr>`;
  for (const b of card.querySelectorAll("button.act-revoke-factory")) {
    b.onclick = async () => {
      if (!confirm(`Revoke factory ${b.dataset.factoryId}? Its connection is closed and it cannot reconnect.`)) return;
      try {
        const r = await api("POST", `/api/factories/${encodeURIComponent(b.dataset.factoryId)}/revoke`);
        toast(`${r.factory} revoked${r.was_connected ? (r.kicked ? "; its connection was closed" : "; not closed yet (its credentials expire)") : ""}`);
      } catch (e) { toast(`revoke failed: ${e.message}`, true); }
      loadFactories();
    };
  }
  for (const b of card.querySelectorAll("button.act-revoke-token")) {
    b.onclick = async () => {
      try { await api("POST", `/api/factory-tokens/${encodeURIComponent(b.dataset.tokenId)}/revoke`); toast(`token ${b.dataset.tokenId} revoked`); }
      catch (e) { toast(`revoke failed: ${e.message}`, true); }
      loadFactories();
    };
  }
}
$("#token-create").addEventListener("click", async () => {
  try {
    const r = await api("POST", "/api/factory-tokens", { uses: 1, ttl: "1h" });
    const el = $("#token-new");
    el.hidden = false;
    el.innerHTML = `New token (one use, 1 h), shown once: <code id="token-value">${esc(r.token)}</code> — on the factory: <code>gf worker --key-dir DIR --enroll TOKEN</code>`;
  } catch (e) { toast(`cannot make a token: ${e.message}`, true); }
  loadFactories();
});

/// Spend over the period as an inline SVG line, with the limit as a dashed line.
function burnDown(b) {
  const start = b.period_secs ? Date.parse(b.period_start) : -Infinity;
  const pts = (b.history || []).filter(p => Date.parse(p.time) >= start);
  if (pts.length < 2) return `<span class="muted">${pts.length} report${pts.length === 1 ? "" : "s"}</span>`;
  const W = 220, H = 36;
  const t0 = Date.parse(pts[0].time), t1 = Math.max(Date.parse(pts[pts.length - 1].time), t0 + 1);
  const top = Math.max(b.limit_cost || 0, ...pts.map(p => p.cost), 1e-9);
  const x = t => (W * (Date.parse(t) - t0) / (t1 - t0)).toFixed(1), y = v => (H - 2 - (H - 4) * v / top).toFixed(1);
  const line = pts.map(p => `${x(p.time)},${y(p.cost)}`).join(" ");
  const limit = b.limit_cost ? `<line x1="0" x2="${W}" y1="${y(b.limit_cost)}" y2="${y(b.limit_cost)}" stroke="var(--err)" stroke-dasharray="3 3"/>` : "";
  return `<svg class="burn" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" role="img" aria-label="spend over time">${limit}<polyline fill="none" stroke="var(--ok)" stroke-width="1.5" points="${line}"/></svg>`;
}

async function loadBudgets() {
  const el = $("#budgets");
  let b;
  try { b = await optional("/api/budgets"); } catch (e) { el.innerHTML = `<p class="error-text">${esc(e.message)}</p>`; return; }
  if (b == null) { el.innerHTML = `<p class="muted">Budgets are not available on this coordinator yet.</p>`; return; }
  const list = Array.isArray(b) ? b : [];
  if (!list.length) { el.innerHTML = `<p class="muted">No budgets yet: a product gets one when it first reports usage, or with <code>gf budgets set</code>.</p>`; return; }
  el.innerHTML = `<table class="data"><thead><tr><th>Product</th><th class="num">Spent / limit</th><th></th><th class="num">Tokens</th><th>Period</th><th>Burn-down</th><th></th></tr></thead><tbody>${list.map(x => {
    const pct = x.limit_cost ? Math.min(100, 100 * x.spent_cost / x.limit_cost) : 0;
    const period = x.period_secs ? `${Math.round(x.period_secs / 3600)} h` : "none";
    return `<tr data-product="${esc(x.product)}"><td>${esc(x.product)}</td><td class="num">${Number(x.spent_cost || 0).toFixed(2)} / ${x.limit_cost != null ? Number(x.limit_cost).toFixed(2) : "∞"}</td>
      <td style="width:20%"><div class="bar${pct >= 100 ? " over" : ""}"><span style="width:${pct}%"></span></div></td>
      <td class="num">${esc(x.spent_tokens || 0)}${x.limit_tokens ? " / " + esc(x.limit_tokens) : ""}</td><td>${esc(period)}</td>
      <td>${burnDown(x)}</td><td>${x.paused ? badge("blocked").replace(">blocked<", ">paused<") : ""}</td></tr>`;
  }).join("")}</tbody></table>`;
}

// What needs an operator (GET /api/recommendations): it reads every job record, so it
// refreshes every 30 s, not with the 2 s overview.
async function loadRecommendations() {
  const el = $("#recommendations");
  let rs;
  try { rs = await optional("/api/recommendations"); } catch (e) { el.innerHTML = `<p class="error-text">${esc(e.message)}</p>`; return; }
  if (rs == null) { el.innerHTML = `<p class="muted">Recommendations are not available on this coordinator yet.</p>`; return; }
  if (!rs.length) { el.innerHTML = `<p class="muted">Nothing to recommend: no flaky worker, no kind failing everywhere, no missing capability, no budget burning out early.</p>`; return; }
  el.innerHTML = `<table class="data"><thead><tr><th>Topic</th><th>Subject</th><th>What to do</th></tr></thead><tbody>${rs.map(r =>
    `<tr data-topic="${esc(r.topic)}"><td>${esc(r.topic.replace(/_/g, " "))}</td><td class="mono">${esc(r.subject)}</td><td>${esc(r.text)}</td></tr>`).join("")}</tbody></table>`;
}

// ---------- profiles and tracker deliveries ----------
async function loadProfiles() {
  const el = $("#profiles");
  let ps;
  try { ps = await optional("/api/profiles"); } catch (e) { el.innerHTML = `<p class="error-text">${esc(e.message)}</p>`; return; }
  if (!ps || !ps.length) { el.innerHTML = `<p class="muted">No profiles: declare them under <code>[profiles.NAME]</code> in gigafactory.toml.</p>`; return; }
  el.innerHTML = `<table class="data"><thead><tr><th>Profile</th><th>Command prefix</th><th>Queue</th><th>Requires</th><th>Description</th></tr></thead><tbody>${ps.map(p =>
    `<tr data-profile="${esc(p.name)}"><td class="mono">${esc(p.name)}</td><td class="mono">${esc((p.command || []).join(" "))}</td><td>${esc(p.queue || "")}</td>
     <td>${esc(Object.entries(p.requires || {}).map(([k, v]) => `${k}=${v}`).concat(p.tags || []).join(" "))}</td><td>${esc(p.description || "")}</td></tr>`).join("")}</tbody></table>`;
}

async function loadDeliveries() {
  const el = $("#deliveries");
  let ds;
  try { ds = await optional("/api/bridge/deliveries?limit=20"); } catch (e) { el.innerHTML = `<p class="error-text">${esc(e.message)}</p>`; return; }
  if (!ds || !ds.length) { el.innerHTML = `<p class="muted">No deliveries: jobs made from tracker webhooks echo their state changes here.</p>`; return; }
  const op = app.role === "operator";
  el.innerHTML = `<table class="data"><thead><tr><th>Item</th><th>State</th><th>Status</th><th class="num">Att.</th><th>Last error</th><th>Updated</th><th></th></tr></thead><tbody>${ds.map(d =>
    `<tr data-delivery="${esc(d.echo.id)}" data-status="${esc(d.status)}"><td><a href="#/job/${esc(d.echo.job_id)}">${esc(d.echo.item)}</a></td><td>${badge(d.echo.state)}</td>
     <td><span class="badge ${d.status === "delivered" ? "succeeded" : d.status === "failed" ? "dead" : "pending"}">${esc(d.status)}</span></td>
     <td class="num">${esc(d.attempts)}</td><td class="error-text" title="${esc(d.last_error || "")}">${esc((d.last_error || "").slice(0, 60))}</td><td>${esc(ago(d.updated_at))}</td>
     <td>${op ? `<button class="ghost act-redeliver" type="button" data-id="${esc(d.echo.id)}">Redeliver</button>` : ""}</td></tr>`).join("")}</tbody></table>`;
  for (const b of el.querySelectorAll("button.act-redeliver")) {
    b.onclick = async () => {
      try { await api("POST", `/api/bridge/deliveries/${encodeURIComponent(b.dataset.id)}/redeliver`); toast(`queued again: ${b.dataset.id}`); loadDeliveries(); }
      catch (e) { toast(e.message, true); }
    };
  }
}

/// Where each value of a job came from: its record's provenance (jobs with a profile),
/// else the submission where it differs from the default.
function renderProvenance(j) {
  const fields = ["command", "queue", "requires", "tags", "priority", "timeout_secs", "max_attempts", "lease_ttl_secs", "env", "product", "labels", "prefer", "weights", "max_cost"];
  const prov = j.provenance && Object.keys(j.provenance).length ? j.provenance : null;
  const shown = v => v == null ? "–" : Array.isArray(v) ? v.join(" ") : typeof v === "object" ? Object.entries(v).map(([k, x]) => `${k}=${x}`).join(" ") : String(v);
  const rows = fields.filter(f => !prov || prov[f] !== "default").map(f => {
    const from = prov ? prov[f] : "submission";
    return `<tr data-field="${esc(f)}"><td class="mono">${esc(f)}</td><td class="mono wrap">${esc(shown(j.spec[f]))}</td><td><span class="pill from-${esc(from)}">${esc(from)}</span></td></tr>`;
  }).filter((_, i) => prov || i < 3);
  const head = prov ? `<p>profile <b class="mono">${esc(j.spec.profile)}</b>: the submission overrides it; defaults not shown.</p>` : `<p class="muted">No profile: every value is the submission's or a default.</p>`;
  return head + `<table class="data"><thead><tr><th>Field</th><th>Value</th><th>From</th></tr></thead><tbody>${rows.join("")}</tbody></table>`;
}

function jobKind(spec) {
  if (spec.profile) return spec.profile;
  if (spec.labels && spec.labels.kind) return spec.labels.kind;
  const p = (spec.command || [""])[0] || "";
  return p.split(/[\\/]/).filter(Boolean).pop() || p;
}

// ---------- events ----------
function eventItem(e, fresh) {
  const ctx = [e.job_id ? `job ${short(e.job_id)}` : "", e.worker_id ? `worker ${e.worker_id}` : "", e.state ? `→ ${e.state}` : "", e.epoch != null ? `epoch ${e.epoch}` : "", e.message || ""].filter(Boolean).join(" · ");
  const li = h(`<li class="${esc(e.level)}${fresh ? " fresh" : ""}" data-kind="${esc(e.kind)}" data-level="${esc(e.level)}" data-job="${esc(e.job_id || "")}">
    <span class="t" title="${esc(e.time)}">${esc(time(e.time))}</span><span class="k">${esc(e.kind.replace(/_/g, " "))}</span>
    <span class="ctx" title="${esc(ctx)} (${esc(e.source)})">${e.job_id ? `<a href="#/job/${esc(e.job_id)}">${esc(short(e.job_id))}</a> · ` : ""}${esc(ctx.replace(/^job [^ ]+( · )?/, ""))}</span></li>`);
  if ($("#errors-only").checked && e.level === "info") li.hidden = true;
  return li;
}

async function startEvents() {
  if (app.eventsAbort) app.eventsAbort.abort();
  const ctrl = new AbortController(); app.eventsAbort = ctrl;
  const list = $("#events");
  let last = null;
  try {
    const page = await api("GET", "/api/events?limit=150");
    list.innerHTML = "";
    for (const e of page.events) list.appendChild(eventItem(e, false));
    if (page.events.length) last = String(page.events[0].seq);
  } catch (e) { /* the stream below still starts */ }
  sse("/api/events/stream", {
    signal: ctrl.signal, lastId: last,
    onState: ok => { const l = $("#live"); l.textContent = ok ? "● live" : "● reconnecting"; l.className = "live " + (ok ? "on" : "off"); },
    onEvent: ev => {
      let e; try { e = JSON.parse(ev.data); } catch (_) { return; }
      list.insertBefore(eventItem(e, true), list.firstChild);
      while (list.children.length > 300) list.lastChild.remove();
      refreshSoon();
      if (app.currentJob && e.job_id === app.currentJob) loadJob(app.currentJob, false);
    },
  });
}
$("#errors-only").addEventListener("change", () => {
  for (const li of $("#events").children) li.hidden = $("#errors-only").checked && li.dataset.level === "info";
});

// Coalesces refreshes triggered by bursts of events.
function refreshSoon() {
  if (app.refreshTimer) return;
  app.refreshTimer = setTimeout(() => {
    app.refreshTimer = null;
    if (!$("#overview").hidden) { loadJobs().catch(() => {}); loadStats().catch(() => {}); }
  }, 300);
}

// ---------- job page ----------
async function loadJob(id, withLog) {
  let j;
  try { j = await api("GET", `/api/jobs/${id}`); } catch (e) {
    $("#job-title").textContent = `Job ${id}`; $("#job-facts").innerHTML = `<p class="error-text">${esc(e.message)}</p>`; return;
  }
  $("#job-title").innerHTML = `Job <span class="mono">${esc(j.id)}</span>`;
  const st = $("#job-state"); st.className = `badge ${j.state}`; st.textContent = j.state; st.dataset.state = j.state;
  $("#job-reason").textContent = j.reason || "";
  $("#job-actions").innerHTML = actionButtons(j);
  const lease = j.lease;
  const facts = [["queue", j.spec.queue], ["product", j.spec.product], ["priority", j.spec.priority], ["epoch", j.epoch],
    ["attempts", `${j.attempts} of ${j.spec.max_attempts}`], ["lease holder", lease ? lease.worker : "–"],
    // Leased at dispatch: until the start is confirmed the expiry is the start deadline;
    // after it, each renewal sets the expiry one TTL ahead.
    ["lease expires", lease ? (j.state === "dispatched" ? `${time(lease.expires_at)} (start deadline)` : `${time(lease.expires_at)} (ttl ${dur(lease.ttl_ms)})`) : "–"],
    ["lease renewed", lease && j.state !== "dispatched" ? time(new Date(Date.parse(lease.expires_at) - lease.ttl_ms).toISOString()) : "–"],
    ["retry at", j.retry_at ? time(j.retry_at) : "–"],
    ["submitted", new Date(j.submitted_at).toLocaleString()], ["updated", new Date(j.updated_at).toLocaleString()],
    ["requires", Object.entries(j.spec.requires || {}).map(([k, v]) => `${k}=${v}`).concat(j.spec.tags || []).join(" ") || "–"],
    ["usage", j.usage ? `${j.usage.provider || "?"}/${j.usage.model || "?"} · ${fmt(j.usage.calls)} calls · ${fmt(j.usage.input_tokens + j.usage.output_tokens)} tok · ${j.usage.cost}` : "–"]];
  $("#job-facts").innerHTML = facts.map(([k, v]) => `<div><dt>${esc(k)}</dt><dd title="${esc(v)}">${esc(v)}</dd></div>`).join("");
  const tl = [`<li><div>submitted</div><div class="when">${esc(new Date(j.submitted_at).toLocaleString())}</div></li>`];
  for (const a of j.history || []) {
    const o = a.outcome;
    const res = o ? (o.status === "succeeded" ? `succeeded (exit ${o.exit_code})` : o.status === "failed" ? `failed: ${o.error}` : `timed out after ${o.after_secs}s`) : (a.ended_because || (a.ended_at ? "ended" : "running"));
    const cls = o && o.status === "succeeded" ? "good" : (o || a.ended_because) ? "bad" : "";
    tl.push(`<li class="${cls}"><div>attempt at epoch ${a.epoch} on <span class="mono">${esc(a.worker)}</span> — ${esc(res)}</div>${(a.artifact_errors || []).map(e => `<div class="error-text">${esc(e)}</div>`).join("")}
      <div class="when">${esc(new Date(a.started_at).toLocaleString())}${a.ended_at ? " → " + esc(time(a.ended_at)) + " (" + dur(Date.parse(a.ended_at) - Date.parse(a.started_at)) + ")" : ""}</div></li>`);
  }
  // The current grant: dispatched to whom, and the deadline to start by.
  if (lease && j.state === "dispatched") {
    tl.push(`<li><div>dispatched at epoch ${lease.epoch} to <span class="mono">${esc(lease.worker)}</span>, to start by ${esc(time(lease.expires_at))}</div>
      <div class="when">${esc(new Date(lease.granted_at).toLocaleString())}</div></li>`);
  }
  tl.push(`<li class="${j.state === "succeeded" ? "good" : ["dead", "cancelled"].includes(j.state) ? "bad" : ""}"><div>now ${badge(j.state)} ${esc(j.reason || "")}</div><div class="when">${esc(new Date(j.updated_at).toLocaleString())}</div></li>`);
  $("#job-timeline").innerHTML = tl.join("");
  $("#job-spec").textContent = JSON.stringify(j.spec, null, 2);
  $("#job-kind").textContent = `kind ${jobKind(j.spec)}`;
  $("#job-provenance").innerHTML = renderProvenance(j);
  loadArtifacts(id).catch(e => { $("#job-artifacts-card").hidden = false; $("#job-artifacts").innerHTML = `<p class="error-text">${esc(e.message)}</p>`; });
  if (withLog) {
    optional(`/api/jobs/${id}/explain`).then(x => { $("#job-explain").innerHTML = x == null ? `<p class="muted">No score breakdown on this coordinator yet.</p>` : renderExplain(x); }).catch(e => { $("#job-explain").innerHTML = `<p class="error-text">${esc(e.message)}</p>`; });
    optional(`/api/jobs/${id}/dag`).then(x => { $("#job-dag").innerHTML = x == null ? `<p class="muted">No DAG on this coordinator yet.</p>` : renderDag(x); }).catch(e => { $("#job-dag").innerHTML = `<p class="error-text">${esc(e.message)}</p>`; });
    startLog(id);
  }
}

// The job's artifacts (links download with the token, so they work with auth on),
// its checkpoint, and uploads that were refused.
async function loadArtifacts(id) {
  const a = await optional(`/api/jobs/${id}/artifacts`);
  const card = $("#job-artifacts-card");
  if (a == null) { card.hidden = true; return; }
  card.hidden = false;
  const files = (a.files || []).map(f => {
    const href = `/api/jobs/${id}/artifacts/${encodeURIComponent(f.name)}?attempt=${f.attempt}`;
    return `<tr><td><a href="${esc(href)}" data-download="${esc(f.name.split("/").pop())}" class="mono">${esc(f.name)}</a></td>
      <td class="num">${esc(f.attempt)}</td><td class="num">${fmt(f.size)}</td><td class="mono" title="${esc(f.sha256)}">${esc(f.sha256.slice(0, 12))}</td>
      <td>${esc(time(f.uploaded_at))}</td></tr>`;
  }).join("");
  const ck = a.checkpoint ? `<p>Checkpoint: <a href="/api/jobs/${esc(id)}/checkpoint" data-download="${esc(id)}-checkpoint.tar">${fmt(a.checkpoint.size)} bytes</a>
    from attempt ${esc(a.checkpoint.attempt)} (epoch ${esc(a.checkpoint.epoch)}), saved ${esc(time(a.checkpoint.saved_at))}</p>` : "";
  const errs = (a.errors || []).map(e => `<li class="error-text">attempt ${esc(e.attempt)}: ${esc(e.message)}</li>`).join("");
  $("#job-artifacts").innerHTML = (files ? `<table class="data" id="artifact-table"><thead><tr><th>File</th><th class="num">Attempt</th><th class="num">Bytes</th><th>SHA-256</th><th>Uploaded</th></tr></thead><tbody>${files}</tbody></table>`
    : `<p class="muted">No artifacts (files a job leaves in $GF_ARTIFACTS_DIR are kept).</p>`) + ck + (errs ? `<ul class="plain">${errs}</ul>` : "");
}
document.addEventListener("click", async ev => {
  const link = ev.target.closest && ev.target.closest("a[data-download]");
  if (!link) return;
  ev.preventDefault();
  const r = await fetch(link.getAttribute("href"), { headers: headers({}) });
  if (r.status === 401) { askToken(); return; }
  if (!r.ok) { alert(`download failed: HTTP ${r.status}`); return; }
  const url = URL.createObjectURL(await r.blob());
  const a = document.createElement("a");
  a.href = url; a.download = link.dataset.download; document.body.appendChild(a); a.click(); a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
});

function renderExplain(x) {
  const terms = Object.entries((x.score && x.score.terms) || {});
  const max = Math.max(...terms.map(([, v]) => Math.abs(v)), 1e-9);
  const waiting = (x.waiting_for || []).map(w => `<li>${esc(w)}</li>`).join("");
  const workers = (x.workers || []).map(w => `<tr><td>${esc(w.worker)}</td>
    <td>${w.missing ? `<span class="error-text">lacks ${esc(w.missing)}</span>` : badge("active").replace(">active<", ">fits<")}</td>
    <td class="num">${esc(w.free_slots)}</td><td class="num">${w.score ? esc(w.score.total) : ""}</td>
    <td class="num">${w.score ? esc((w.score.terms || {}).affinity || 0) : ""}</td></tr>`).join("");
  return `<p>${esc(x.summary || "")}</p>${waiting ? `<ul class="plain">${waiting}</ul>` : ""}
    <table class="data"><thead><tr><th>Term</th><th class="num">Value</th><th></th></tr></thead><tbody>
    ${terms.map(([k, v]) => `<tr><td>${esc(k)}</td><td class="num">${v}</td><td style="width:50%"><div class="bar${v < 0 ? " over" : ""}"><span style="width:${100 * Math.abs(v) / max}%"></span></div></td></tr>`).join("")}
    <tr><td><b>total</b></td><td class="num"><b>${esc(x.score ? x.score.total : "")}</b></td><td></td></tr></tbody></table>
    ${workers ? `<table class="data"><thead><tr><th>Worker</th><th>Fit</th><th class="num">Free</th><th class="num">Score</th><th class="num">Affinity</th></tr></thead><tbody>${workers}</tbody></table>` : `<p class="muted">no live workers</p>`}`;
}

function renderDag(x) {
  const nodes = x.nodes || [];
  if (nodes.length <= 1 && !(nodes[0] && (nodes[0].children.length || nodes[0].depends_on.length)))
    return `<p class="muted">No dependencies or children.</p>`;
  return `<table class="data"><thead><tr><th>Job</th><th>State</th><th>Depends on</th><th>Children</th><th>Command</th></tr></thead><tbody>${nodes.map(n => `<tr${n.job_id === x.root ? ' class="sel"' : ""}>
    <td><a href="#/job/${esc(n.job_id)}">${esc(short(n.job_id))}</a></td><td>${badge(n.state)}</td>
    <td>${(n.depends_on || []).map(d => `<a href="#/job/${esc(d)}">${esc(short(d))}</a>`).join(" ")}</td>
    <td>${(n.children || []).map(d => `<a href="#/job/${esc(d)}">${esc(short(d))}</a>`).join(" ")}</td>
    <td class="mono">${esc((n.command || "").slice(0, 60))}</td></tr>`).join("")}</tbody></table>`;
}

function startLog(id) {
  if (app.logAbort) app.logAbort.abort();
  const ctrl = new AbortController(); app.logAbort = ctrl;
  const pre = $("#log"); pre.textContent = "";
  let epoch = null, count = 0;
  $("#log-status").textContent = "connecting…";
  sse(`/api/jobs/${id}/logs/stream`, {
    signal: ctrl.signal,
    onState: ok => { $("#log-status").textContent = ok ? `live · ${count} lines` : "reconnecting…"; },
    onEvent: ev => {
      if (ev.event === "end") { $("#log-status").textContent = `${count} lines · job ${ev.data}`; return false; }
      let l; try { l = JSON.parse(ev.data); } catch (_) { return; }
      if (epoch !== null && l.epoch !== epoch) pre.appendChild(h(`<span class="sep">── attempt at epoch ${l.epoch} ──\n</span>`));
      epoch = l.epoch; count++;
      const span = document.createElement("span");
      if (l.stream === "stderr") span.className = "stderr";
      span.textContent = l.line + "\n";
      pre.appendChild(span);
      $("#log-status").textContent = `live · ${count} lines`;
      if ($("#log-follow").checked) pre.scrollTop = pre.scrollHeight;
    },
  });
}

// ---------- routing and boot ----------
function route() {
  const m = location.hash.match(/^#\/job\/([0-9a-fA-F-]{36})/);
  if (m) {
    $("#overview").hidden = true; $("#jobpage").hidden = false;
    app.currentJob = m[1];
    $("#job-explain").innerHTML = $("#job-dag").innerHTML = `<p class="muted">loading…</p>`;
    loadJob(m[1], true);
    clearInterval(app.jobTimer); app.jobTimer = setInterval(() => loadJob(app.currentJob, false), 3000);
  } else {
    $("#overview").hidden = false; $("#jobpage").hidden = true;
    app.currentJob = null; clearInterval(app.jobTimer);
    if (app.logAbort) { app.logAbort.abort(); app.logAbort = null; }
    loadJobs().catch(() => {}); loadWorkers().catch(() => {});
  }
  window.scrollTo(0, 0);
}
window.addEventListener("hashchange", route);

// Requeue and reject come with later work: ask once whether the routes exist (on an
// id no job has, so nothing is changed) and hide the buttons while they do not.
async function probeActions() {
  if (app.role !== "operator") return;
  for (const k of ["requeue", "reject"]) {
    try { await api("POST", `/api/jobs/00000000-0000-0000-0000-000000000000/${k}`); } catch (e) {
      if (e.status === 405 || (e.status === 404 && e.message === "no such route")) app.missing.add(k);
    }
  }
}

async function boot() {
  try {
    const me = await api("GET", "/api/whoami");
    app.role = me.role;
    $("#who").textContent = me.auth_enabled ? `${me.name} (${me.role})` : "auth off";
    $("#token-btn").hidden = !me.auth_enabled;
  } catch (e) {
    if (e.status === 401) return;   // the token dialog is open; boot again after it
    toast(`cannot reach the coordinator: ${e.message}`, true);
  }
  await probeActions();
  stateFilters();
  route();
  loadStats().catch(() => {});
  loadBudgets();
  loadRecommendations();
  loadProfiles();
  loadDeliveries();
  loadFactories();
  startEvents();
  clearInterval(app.timers);
  clearInterval(app.slowTimers);
  app.slowTimers = setInterval(() => { if (!document.hidden && !$("#overview").hidden) loadRecommendations(); }, 30000);
  app.timers = setInterval(() => {
    if (document.hidden) return;
    loadStats().catch(() => {});
    if (!$("#overview").hidden) { loadWorkers().catch(() => {}); loadJobs().catch(() => {}); loadBudgets(); loadDeliveries(); loadFactories(); }
  }, 2000);
}
boot();
