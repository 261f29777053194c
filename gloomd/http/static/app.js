// gloomd status page: polls api/stats (and the dead letters) every second and
// draws everything itself; no library, no build step.
//
// Rates are computed here from successive polls: (counter now - counter
// before) / (uptime now - uptime before), on the daemon's own clock, so a
// slow poll does not distort them.  Per-type rates need per-type counters
// ("completed", "failed" in a type's row); a daemon without them shows "–".
"use strict";

const POLL_MS = 1000;
const HISTORY_S = 300; // the chart's span
const TOKEN_KEY = "gloomd.token";

const page = {
  token: sessionStorage.getItem(TOKEN_KEY),
  previous: null, // the last stats, for rates
  history: [], // {t, rate, depth}
  timer: null,
};

class AuthNeeded extends Error {}

// Ids beyond 2^53 must survive a round trip (kick, delete): keep their source
// text where the browser can (JSON.parse source access and JSON.rawJSON).
function parseJSON(text) {
  if (typeof JSON.rawJSON !== "function") return JSON.parse(text);
  return JSON.parse(text, (key, value, context) =>
    typeof value === "number" && Number.isInteger(value) && !Number.isSafeInteger(value) &&
    context && context.source ? JSON.rawJSON(context.source) : value);
}

// Paths are relative ("api/stats", not "/api/stats") so that the page also
// works behind a reverse proxy that serves it under a prefix (/gloomd/).
async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (page.token) headers["Authorization"] = "Bearer " + page.token;
  const response = await fetch(path, Object.assign({}, options, { headers, cache: "no-store" }));
  if (response.status === 401) throw new AuthNeeded();
  const server = response.headers.get("Server");
  if (server) text("version", server.replace("gloomd/", "v"));
  return { status: response.status, body: parseJSON(await response.text()) };
}

// ---------------------------------------------------------------- helpers

function el(id) { return document.getElementById(id); }
function text(id, value) { el(id).textContent = value; }

function make(tag, attrs = {}, content = null) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  if (content !== null) node.textContent = content;
  return node;
}

function typeLabel(type) {
  return typeof type === "string" ? type : JSON.stringify(type);
}

function show(value) {
  return value === undefined || value === null ? "–" : String(value);
}

function rate(now, before, dt) {
  if (now === undefined || before === undefined || !(dt > 0)) return "–";
  const value = (now - before) / dt;
  return value >= 100 ? value.toFixed(0) : value.toFixed(1);
}

function duration(seconds) {
  const s = Math.floor(seconds);
  const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600);
  const m = Math.floor((s % 3600) / 60), r = s % 60;
  if (d) return `${d} d ${h} h`;
  if (h) return `${h} h ${String(m).padStart(2, "0")} m`;
  if (m) return `${m} m ${String(r).padStart(2, "0")} s`;
  return `${r} s`;
}

function setStatus(state, label) {
  const node = el("status");
  node.dataset.state = state;
  node.textContent = label;
}

// ---------------------------------------------------------------- rendering

function renderStats(stats) {
  const before = page.previous;
  const dt = before ? stats.uptime_s - before.uptime_s : 0;
  const totals = stats.totals || {};
  const old = before ? before.totals || {} : {};
  const types = stats.types || [];
  const queued = types.reduce((sum, row) => sum + (row.queued || 0), 0);
  const running = types.reduce((sum, row) => sum + (row.running || 0), 0);

  const completedRate = rate(totals.completed, old.completed, dt);
  text("rate-completed", completedRate);
  text("rate-failed", rate(totals.failed, old.failed, dt));
  text("sum-queued", queued);
  text("sum-running", running);
  text("sum-waiting", show(stats.waiting));
  text("total-submitted", show(totals.submitted));

  text("uptime", duration(stats.uptime_s));
  const connections = stats.connections || {};
  text("conn-masters", show(connections.masters));
  text("conn-slaves", show(connections.slaves));
  text("journal", journalText(stats.journal));
  text("totals", Object.entries(totals).map(([k, v]) => `${k} ${v}`).join(" · "));

  renderTypes(types, before, dt);
  if (completedRate !== "–") {
    page.history.push({ t: stats.uptime_s, rate: Number(completedRate), depth: queued });
  }
  const horizon = stats.uptime_s - HISTORY_S;
  while (page.history.length && page.history[0].t < horizon) page.history.shift();
  renderChart(stats.uptime_s);
  page.previous = stats;
}

function journalText(journal) {
  if (journal === undefined || journal === null) return "off";
  return `${journal.path} (sync ${journal.sync}, ${journal.commits} commits, ` +
    `p99 ${journal.commit_ms_p99} ms, ${journal.bytes} bytes)`;
}

function renderTypes(types, before, dt) {
  const previousRows = new Map();
  if (before) for (const row of before.types || []) previousRows.set(typeLabel(row.type), row);
  const rows = types.slice().sort((a, b) => typeLabel(a.type).localeCompare(typeLabel(b.type)));
  const body = el("types").querySelector("tbody");
  const fresh = document.createDocumentFragment();
  for (const row of rows) {
    const label = typeLabel(row.type);
    const old = previousRows.get(label) || {};
    const idle = row.idle || 0;
    const busy = (row.slaves || 0) - idle;
    const paused = row.paused === undefined ? "–" : row.paused ? "paused" : "no";
    const cells = [
      ["type", label],
      ["queued", show(row.queued)],
      ["delayed", show(row.delayed)],
      ["waiting", show(row.waiting)],
      ["running", show(row.running)],
      ["dead", show(row.dead)],
      ["slaves", `${idle} / ${busy}`],
      ["paused", paused],
      ["completed-rate", rate(row.completed, old.completed, dt)],
      ["failed-rate", rate(row.failed, old.failed, dt)],
    ];
    const tr = make("tr", { "data-type": label });
    for (const [column, value] of cells) {
      tr.appendChild(make("td", { "data-col": column, class: column }, value));
    }
    fresh.appendChild(tr);
  }
  body.replaceChildren(fresh);
  el("no-types").hidden = rows.length > 0;
}

const SVG = "http://www.w3.org/2000/svg";

function renderChart(now) {
  const svg = el("chart");
  const width = 600, height = 160, pad = 6;
  const points = page.history;
  // The span grows with the history, from one minute up to HISTORY_S, so a
  // young daemon's chart is not a sliver at the right edge.
  const span = points.length ? Math.min(HISTORY_S, Math.max(60, now - points[0].t)) : 60;
  const maxRate = Math.max(1, ...points.map((p) => p.rate));
  const maxDepth = Math.max(1, ...points.map((p) => p.depth));
  const x = (t) => ((t - (now - span)) / span) * width;
  const y = (value, max) => height - pad - (value / max) * (height - 2 * pad);
  const fresh = document.createDocumentFragment();
  for (const fraction of [0.25, 0.5, 0.75]) {
    const line = document.createElementNS(SVG, "line");
    const at = String(pad + fraction * (height - 2 * pad));
    for (const [name, value] of [["x1", "0"], ["x2", String(width)], ["y1", at], ["y2", at]]) {
      line.setAttribute(name, value);
    }
    line.setAttribute("class", "grid");
    fresh.appendChild(line);
  }
  for (const [key, max] of [["depth", maxDepth], ["rate", maxRate]]) {
    const line = document.createElementNS(SVG, "polyline");
    line.setAttribute("class", key);
    line.setAttribute("points", points.map((p) => `${x(p.t).toFixed(1)},${y(p[key], max).toFixed(1)}`).join(" "));
    fresh.appendChild(line);
  }
  svg.replaceChildren(fresh);
  text("chart-span", span >= 120 ? `−${Math.round(span / 60)} min` : `−${Math.round(span)} s`);
  text("chart-max", points.length
    ? `top: ${maxRate.toFixed(maxRate >= 100 ? 0 : 1)}/s · ${maxDepth} queued`
    : "collecting…");
}

function renderDead(reply) {
  const table = el("dead");
  const note = el("dead-note");
  if (!reply.body.ok) {
    table.hidden = true;
    note.textContent = reply.body.error === "unknown_action"
      ? "This gloomd keeps no dead letters (its job lifecycle is not there yet)."
      : `Cannot list dead letters: ${reply.body.error} ${show(reply.body.reason)}`;
    return;
  }
  const jobs = reply.body.jobs || [];
  note.textContent = jobs.length ? "" : "No dead letters.";
  table.hidden = jobs.length === 0;
  const fresh = document.createDocumentFragment();
  for (const job of jobs) {
    const tr = make("tr", { "data-id": String(job.id) });
    tr.appendChild(make("td", { "data-col": "id" }, String(job.id)));
    tr.appendChild(make("td", { "data-col": "type" }, typeLabel(job.type)));
    tr.appendChild(make("td", { "data-col": "attempt" }, show(job.attempt)));
    tr.appendChild(make("td", { "data-col": "age" }, job.age_s === undefined ? "–" : duration(job.age_s)));
    const actions = make("td");
    const kick = make("button", { type: "button", class: "kick" }, "kick");
    kick.addEventListener("click", () => act("kick", job.id));
    const remove = make("button", { type: "button", class: "delete danger" }, "delete");
    remove.addEventListener("click", () => act("delete", job.id));
    actions.append(kick, " ", remove);
    tr.appendChild(actions);
    fresh.appendChild(tr);
  }
  table.querySelector("tbody").replaceChildren(fresh);
}

async function act(action, id) {
  try {
    const reply = await api(`api/${action}`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ id }),
    });
    if (!reply.body.ok) el("dead-note").textContent = `${action} ${id}: ${reply.body.error}`;
  } catch (error) {
    handleError(error);
    return;
  }
  schedule(0);
}

// ---------------------------------------------------------------- polling

function handleError(error) {
  if (error instanceof AuthNeeded) {
    askForToken(page.token !== null);
    return true;
  }
  setStatus("offline", "offline");
  return false;
}

async function poll() {
  page.timer = null;
  try {
    const [stats, dead] = await Promise.all([
      api("api/stats"),
      api("api/jobs?state=dead&limit=100"),
    ]);
    el("auth").hidden = true;
    el("main").hidden = false;
    if (stats.body.ok) {
      renderStats(stats.body.stats);
      setStatus("live", "live");
    } else {
      setStatus("offline", `stats: ${stats.body.error}`);
    }
    renderDead(dead);
  } catch (error) {
    if (handleError(error)) return; // stopped until a token is given
  }
  schedule(POLL_MS);
}

function schedule(ms) {
  if (page.timer !== null) clearTimeout(page.timer);
  page.timer = setTimeout(poll, ms);
}

function askForToken(refused) {
  if (page.timer !== null) clearTimeout(page.timer);
  page.timer = null;
  sessionStorage.removeItem(TOKEN_KEY);
  page.token = null;
  el("main").hidden = true;
  el("auth").hidden = false;
  el("auth-error").hidden = !refused;
  setStatus("offline", "token needed");
  el("token").focus();
}

el("auth-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const token = el("token").value.trim();
  if (!token) return;
  page.token = token;
  sessionStorage.setItem(TOKEN_KEY, token); // for this tab only
  el("token").value = "";
  schedule(0);
});

schedule(0);
