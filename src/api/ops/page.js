// The operations page: signs in with an admin token (kept in sessionStorage), then polls the
// admin API every POLL_MS. Plain JavaScript, no dependencies: it must run on a box with no
// internet.
"use strict";

const POLL_MS = 2000;
const TOKEN_KEY = "order-service-ops-token";
const TOPICS = ["order.created", "order.updated", "order.status_changed", "order.confirmed",
  "order.cancelled", "order.chat_created", "order.chat_linked", "order.stock_override_applied",
  "order.audit", "order.statistics_updated"];
const TAIL_KEEP = 200;

const $ = (id) => document.getElementById(id);
let token = sessionStorage.getItem(TOKEN_KEY);
let timer = null;
let refreshes = 0;
let tail = { after: null, paused: false, rows: [] };
let lastServiceOk = null;
// A refresh started by a click overtakes the scheduled one: only the newest schedules the next.
let generation = 0;
let tailBusy = false;

// An element with attributes and children; text is always set as text, never as HTML.
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

class ApiFailure extends Error {
  constructor(status, body) {
    super(body && body.message ? body.message : `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

// A data call with the token. A network failure has status 0.
async function api(path, options = {}) {
  let response;
  try {
    response = await fetch(path, {
      ...options,
      headers: { "Authorization": `Bearer ${token}`, ...(options.body ? { "Content-Type": "application/json" } : {}) },
      cache: "no-store",
    });
  } catch (e) {
    throw new ApiFailure(0, { message: "the service cannot be reached" });
  }
  const text = await response.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch (e) { body = { message: text }; }
  if (!response.ok) throw new ApiFailure(response.status, body);
  return body;
}

function ageText(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  if (seconds < 1) return "0 s";
  if (seconds < 120) return `${Math.round(seconds)} s`;
  if (seconds < 7200) return `${Math.round(seconds / 60)} min`;
  if (seconds < 172800) return `${Math.round(seconds / 3600)} h`;
  return `${Math.round(seconds / 86400)} d`;
}

function sinceText(iso) {
  const t = Date.parse(iso);
  return Number.isNaN(t) ? "—" : ageText((Date.now() - t) / 1000);
}

function bytesText(n) {
  if (n === null || n === undefined) return "—";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${i === 0 ? n : n.toFixed(1)} ${units[i]}`;
}

function fill(tbody, rows, columns, emptyText) {
  tbody.replaceChildren(...(rows.length ? rows : [el("tr", { class: "empty" }, el("td", { colspan: columns }, emptyText))]));
}

// ---- sign-in ----

async function signIn(candidate) {
  token = candidate.trim();
  $("signin-error").textContent = "";
  if (!token) { $("signin-error").textContent = "Paste a token first."; return; }
  try {
    await api("/api/v1/admin/overview");
  } catch (e) {
    token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    if (e.status === 403) {
      $("signin-error").textContent = `Refused: this token is not an admin's. The operations page needs an admin token (${e.message}).`;
    } else if (e.status === 401) {
      $("signin-error").textContent = `Refused: the token is not valid (${e.message}).`;
    } else {
      $("signin-error").textContent = `Sign-in failed: ${e.message}.`;
    }
    document.body.dataset.state = "refused";
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  showBoard();
}

function showBoard() {
  $("signin").hidden = true;
  $("board").hidden = false;
  $("signout").hidden = false;
  document.body.dataset.state = "signed-in";
  tail = { after: null, paused: false, rows: [] };
  refresh();
}

function signOut() {
  sessionStorage.removeItem(TOKEN_KEY);
  token = null;
  clearTimeout(timer);
  $("board").hidden = true;
  $("signout").hidden = true;
  $("signin").hidden = false;
  $("token").value = "";
  document.body.dataset.state = "signed-out";
}

// ---- refresh ----

async function refresh() {
  clearTimeout(timer);
  const mine = ++generation;
  const problems = [];
  let serviceDown = false;
  let brokerDown = false;
  const note = (e) => {
    if (e.status === 0) serviceDown = true;
    else if (e.status === 503) brokerDown = true;
    else if (e.status === 401 || e.status === 403) { signOut(); $("signin-error").textContent = `Signed out: ${e.message}`; }
    else problems.push(e.message);
  };
  const jobs = [
    api("/api/v1/admin/overview").then(showOverview).then((b) => { if (b) brokerDown = true; }),
    api("/api/v1/admin/history").then(showHistory),
    api("/api/v1/admin/outbox?status=dead&limit=200").then(showDeadRows),
    api("/api/v1/admin/streams").then(showStreams),
    api("/api/v1/admin/consumers").then(showConsumers),
    api("/api/v1/admin/dead-letters").then(showLetters),
    tail.paused ? Promise.resolve() : pollTail(),
  ];
  for (const result of await Promise.allSettled(jobs)) {
    if (result.status === "rejected") note(result.reason);
  }
  if (!token || mine !== generation) return;
  const banner = $("banner");
  if (serviceDown) {
    const since = lastServiceOk ? ` since ${lastServiceOk.toLocaleTimeString()}` : "";
    banner.textContent = `The service cannot be reached${since}: the numbers below are not current.`;
    $("board").classList.add("stale");
    $("health").textContent = "service unreachable";
    $("health").className = "pill bad";
  } else {
    lastServiceOk = new Date();
    $("board").classList.remove("stale");
    $("updated").textContent = `updated ${lastServiceOk.toLocaleTimeString()}`;
    if (brokerDown) {
      banner.textContent = "The broker cannot be reached: orders are kept in the outbox; streams and subscribers are not current.";
      $("health").textContent = "broker unreachable";
      $("health").className = "pill bad";
    } else {
      $("health").textContent = "connected";
      $("health").className = "pill ok";
    }
  }
  banner.hidden = !(serviceDown || brokerDown || problems.length);
  if (problems.length && !serviceDown && !brokerDown) banner.textContent = problems.join("; ");
  document.body.dataset.service = serviceDown ? "down" : "up";
  document.body.dataset.broker = brokerDown ? "down" : "up";
  refreshes += 1;
  document.body.dataset.refreshes = String(refreshes);
  timer = setTimeout(refresh, POLL_MS);
}

// Returns true when the broker is down.
function showOverview(o) {
  $("pending").textContent = String(o.outbox.pending);
  $("dead").textContent = String(o.outbox.dead);
  $("dead").className = o.outbox.dead > 0 ? "value bad" : "value";
  $("oldest").textContent = o.outbox.pending > 0 ? ageText(o.outbox.oldest_pending_age_seconds) : "—";
  $("rate").textContent = o.outbox.published_per_second.toFixed(1);
  const b = o.broker;
  if (!b.relay_enabled) {
    $("broker").textContent = "relay off";
    $("broker").className = "value";
    return false;
  }
  $("broker").textContent = b.connected ? "connected" : "unreachable";
  $("broker").className = b.connected ? "value ok" : "value bad";
  return !b.connected;
}

// ---- charts (SVG drawn here) ----

const W = 600, H = 160, PAD = 14;

function chart(svg, windowSeconds, series) {
  const now = Date.now();
  const x = (t) => PAD + (W - 2 * PAD) * (1 - (now - t) / (windowSeconds * 1000));
  let max = 0;
  for (const s of series) for (const [, v] of s.points) if (v !== null && v > max) max = v;
  const top = max > 0 ? max * 1.1 : 1;
  const y = (v) => H - PAD - (H - 2 * PAD) * (v / top);
  const parts = [
    el("line", { class: "grid", x1: PAD, x2: W - PAD, y1: H - PAD, y2: H - PAD }),
    el("line", { class: "grid", x1: PAD, x2: W - PAD, y1: PAD, y2: PAD }),
    el("text", { x: PAD + 2, y: PAD - 3 }, top.toFixed(top < 10 ? 2 : 0)),
    el("text", { x: PAD + 2, y: H - 3 }, "−15 min"),
    el("text", { x: W - PAD - 22, y: H - 3 }, "now"),
  ];
  for (const s of series) {
    // A gap (no value) breaks the line rather than drawing a false zero.
    let run = [];
    const flush = () => {
      if (run.length) parts.push(el("polyline", { class: s.cls, points: run.join(" "), "data-series": s.cls }));
      run = [];
    };
    for (const [t, v] of s.points) {
      if (v === null) { flush(); continue; }
      run.push(`${x(t).toFixed(1)},${y(v).toFixed(1)}`);
    }
    flush();
  }
  svg.replaceChildren(...parts.map((p) => {
    // SVG children need the SVG namespace.
    const n = document.createElementNS("http://www.w3.org/2000/svg", p.tagName.toLowerCase());
    for (const a of p.attributes) n.setAttribute(a.name, a.value);
    n.textContent = p.textContent;
    return n;
  }));
}

function showHistory(h) {
  const pts = (f) => h.samples.map((s) => [Date.parse(s.at), f(s)]);
  chart($("chart-rate"), h.window_seconds, [{ cls: "rate", points: pts((s) => s.published_per_second) }]);
  chart($("chart-latency"), h.window_seconds, [
    { cls: "p50", points: pts((s) => s.latency_p50_ms) },
    { cls: "p99", points: pts((s) => s.latency_p99_ms) },
  ]);
  $("chart-rate").dataset.samples = String(h.samples.length);
  $("chart-rate").dataset.max = String(Math.max(0, ...h.samples.map((s) => s.published_per_second)));
}

// ---- dead rows ----

function showMessage(pre, text) {
  pre.hidden = false;
  try { pre.textContent = JSON.stringify(typeof text === "string" ? JSON.parse(text) : text, null, 2); }
  catch (e) { pre.textContent = String(text); }
}

function showDeadRows(body) {
  const rows = body.rows.map((r) => {
    const tr = el("tr", { class: "clickable", "data-id": r.id, onclick: () => {
      document.querySelectorAll("#dead-rows tr.selected").forEach((n) => n.classList.remove("selected"));
      tr.classList.add("selected");
      showMessage($("dead-message"), r.payload);
    } },
      el("td", { class: "num" }, r.id), el("td", {}, r.topic), el("td", {}, r.subject_key),
      el("td", { class: "num" }, r.attempts), el("td", { class: "err" }, r.last_error || ""),
      el("td", {}, sinceText(r.created_at)),
      el("td", {}, el("button", { type: "button", class: "requeue", "data-id": r.id, onclick: (ev) => {
        ev.stopPropagation();
        requeue(r.id, ev.target);
      } }, "Requeue")));
    return tr;
  });
  fill($("dead-rows").tBodies[0], rows, 7, "no dead rows");
}

async function requeue(id, button) {
  button.disabled = true;
  button.textContent = "Requeueing…";
  try {
    await api(`/api/v1/admin/outbox/${id}/requeue`, { method: "POST", body: "{}" });
    button.textContent = "Requeued";
  } catch (e) {
    button.disabled = false;
    button.textContent = "Requeue";
    $("banner").hidden = false;
    $("banner").textContent = `Requeue of row ${id} failed: ${e.message}`;
    return;
  }
  $("dead-message").hidden = true;
  refresh();
}

// ---- streams ----

function showStreams(body) {
  const rows = body.streams.map((s) => el("tr", { "data-stream": s.stream },
    el("td", {}, s.stream, el("br"), el("span", { class: "muted" }, s.topic)),
    el("td", { class: "num" }, s.exists ? s.messages : "missing"),
    el("td", { class: "num" }, bytesText(s.bytes)),
    el("td", {}, `${s.replicas_wanted} / ${s.replicas === null ? "—" : s.replicas}`),
    el("td", {}, ageText(s.retention_seconds)),
    el("td", { class: "num" }, s.partitions === null ? "—" : s.partitions),
    el("td", {}, el("span", { class: s.batching ? "on" : "off" }, s.batching ? "atomic batches" : "one by one")),
    // Drift needs an operator; a clamp is the server's size speaking, reported, not alarming.
    el("td", {}, ...s.drift.map((d) => el("div", { class: "err" }, d)),
      ...s.clamps.map((c) => el("div", { class: "muted" }, c)))));
  fill($("streams").tBodies[0], rows, 8, "no streams");
}

// ---- subscribers ----

function showConsumers(body) {
  const rows = body.groups.map((g) => el("tr", { "data-group": g.group },
    el("td", {}, g.group), el("td", {}, g.topic),
    el("td", {}, g.partition === null ? "all" : g.partition),
    el("td", { class: "num" }, g.lag_messages), el("td", { class: "num" }, g.lag_seconds.toFixed(1)),
    el("td", { class: "num" }, g.redelivered), el("td", { class: "num" }, g.dead_letters),
    el("td", {}, g.dead_letters > 0 ? el("button", { type: "button", class: "replay-all", onclick: (ev) =>
      replay("/api/v1/admin/dead-letters/replay", { group: g.group, topic: g.topic }, ev.target) }, "Replay all") : "")));
  fill($("groups").tBodies[0], rows, 8, body.error ? `not sampled: ${body.error}` : "no consumer groups");
}

function showLetters(body) {
  const rows = body.letters.map((l) => {
    const shown = l.message_truncated ? `${l.message}\n… (cut: the listing shows the first 16 KiB)` : l.message;
    const tr = el("tr", { class: "clickable", onclick: () => showMessage($("letter-message"), shown) },
      el("td", { class: "num" }, l.sequence), el("td", {}, l.group), el("td", {}, l.topic),
      el("td", {}, l.reason), el("td", { class: "err" }, l.error), el("td", {}, ageText(l.age_seconds)),
      el("td", {}, el("button", { type: "button", class: "replay", onclick: (ev) => {
        ev.stopPropagation();
        replay(`/api/v1/admin/dead-letters/${l.sequence}/replay`, { group: l.group }, ev.target);
      } }, "Replay")));
    return tr;
  });
  // The oldest page only: the counts per group above say how many there are in all.
  if (body.next_after != null) {
    rows.push(el("tr", {}, el("td", { colspan: 7, class: "more" },
      `the oldest ${body.letters.length} shown; the counts above include the rest`)));
  }
  fill($("letters").tBodies[0], rows, 7, "no dead letters");
}

async function replay(path, body, button) {
  button.disabled = true;
  try {
    const answer = await api(path, { method: "POST", body: JSON.stringify(body) });
    // Letters that do not match the event their stream stored stay, with why.
    if (answer && answer.refused && answer.refused.length > 0) {
      $("banner").hidden = false;
      $("banner").textContent = `Replayed ${answer.replayed}; refused ${answer.refused.length}: ` +
        answer.refused.map((r) => `#${r.sequence}: ${r.reason}`).join("; ");
    }
  } catch (e) {
    button.disabled = false;
    $("banner").hidden = false;
    $("banner").textContent = `Replay failed: ${e.message}`;
    return;
  }
  refresh();
}

// ---- live tail ----

function tailQuery() {
  const q = new URLSearchParams();
  if (tail.after !== null) q.set("after", tail.after);
  const topic = $("tail-topic").value;
  const order = $("tail-order").value.trim();
  if (topic) q.set("topic", topic);
  if (order) q.set("order", order);
  return q.toString();
}

async function pollTail() {
  if (tailBusy) return;
  tailBusy = true;
  let body;
  try { body = await api(`/api/v1/admin/tail?${tailQuery()}`); } finally { tailBusy = false; }
  tail.after = body.next_after;
  if (body.events.length) {
    tail.rows = [...body.events.reverse(), ...tail.rows].slice(0, TAIL_KEEP);
    showTail();
  } else if (!$("tail").tBodies[0].rows.length) {
    showTail();
  }
}

function showTail() {
  const rows = tail.rows.map((e) => el("tr", { "data-topic": e.topic, "data-order": e.order_id || e.key },
    el("td", { class: "num" }, e.id), el("td", {}, new Date(e.created_at).toLocaleTimeString()),
    el("td", {}, e.topic), el("td", {}, e.order_id || e.key), el("td", {}, e.status),
    el("td", {}, e.stream ? `${e.stream}:${e.stream_seq}` : "—")));
  fill($("tail").tBodies[0], rows, 6, "waiting for new events…");
}

function filterChanged() {
  // Events shown so far were of the old filter; the cursor stays, so nothing new is missed.
  tail.rows = [];
  showTail();
}

// ---- wiring ----

for (const t of TOPICS) $("tail-topic").append(el("option", { value: t }, t));
$("tail-topic").addEventListener("change", filterChanged);
$("tail-order").addEventListener("change", filterChanged);
$("tail-pause").addEventListener("click", () => {
  tail.paused = !tail.paused;
  $("tail-pause").textContent = tail.paused ? "Resume" : "Pause";
  $("tail-state").textContent = tail.paused ? "paused" : "live";
});
$("signin-form").addEventListener("submit", (ev) => { ev.preventDefault(); signIn($("token").value); });
$("signout").addEventListener("click", signOut);
if (token) showBoard();
