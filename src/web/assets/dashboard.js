// Antibody's dashboard: one page, no framework, nothing fetched from
// elsewhere. The operator's token is pasted once and kept in
// sessionStorage only (gone when the tab closes). Live data comes from the
// antibody_event WebSocket: a Snapshot, then one message per agent signal.
"use strict";

const TOKEN_KEY = "antibody.token";
const plans = new Map(); // id -> {id, timestamp, source, severity, description, status}
let socket = null;
let selected = null;
let retryDelay = 1000;
// Set while the page unloads: a socket closed by the unload is not a
// connection to retry (the retry's fetch would only be cancelled).
let leaving = false;

const $ = (id) => document.getElementById(id);

function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

function showError(text) {
  const e = $("error");
  e.textContent = text;
  e.hidden = !text;
}

function setConnected(on, text) {
  const badge = $("connection");
  badge.textContent = text;
  badge.className = "badge " + (on ? "on" : "off");
}

function renderStatus(status) {
  if (!status) {
    $("healthy").textContent = "unreachable";
    $("healthy").className = "bad";
    return;
  }
  $("healthy").textContent = status.healthy ? "healthy" : "unhealthy";
  $("healthy").className = status.healthy ? "ok" : "bad";
  $("queue-depth").textContent = String(status.queue_depth);
  $("active").textContent = String(status.active_mitigations);
  const ledger = status.ledger || {};
  $("ledger").textContent = ledger.ok
    ? `ok (${ledger.records} records)`
    : `broken at ${ledger.broken_at}`;
  $("ledger").className = ledger.ok ? "ok" : "bad";
  $("version").textContent = status.version;
}

function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text == null ? "" : String(text);
  if (className) td.className = className;
  return td;
}

function renderPlans() {
  const body = $("plans").tBodies[0];
  const rows = [...plans.values()].sort((a, b) =>
    String(b.timestamp || "").localeCompare(String(a.timestamp || "")));
  body.replaceChildren(...rows.map((p) => {
    const tr = document.createElement("tr");
    tr.dataset.planId = p.id;
    tr.append(
      cell(p.timestamp),
      cell(p.source),
      cell(p.severity),
      cell(p.description),
      cell(p.status, "status status-" + p.status),
    );
    tr.addEventListener("click", () => showPlan(p.id));
    return tr;
  }));
}

function remember(plan) {
  const known = plans.get(plan.id) || {};
  plans.set(plan.id, Object.assign(known, plan));
}

// How far along a plan is: a plan only moves forward through these.
const PROGRESS = { pending: 0, in_progress: 1, success: 2, failed: 2 };

// A plan fetched by HTTP may have been read before signals that arrived
// first (a one-action plan can finish while its GET is in flight): its
// status is taken only if it is not behind the one already shown.
function rememberFetched(plan) {
  const known = plans.get(plan.id);
  if (known && (PROGRESS[plan.status] ?? 0) < (PROGRESS[known.status] ?? 0)) {
    plan = Object.assign({}, plan, { status: known.status });
  }
  remember(plan);
}

async function api(path) {
  const response = await fetch(path, { headers: { Authorization: "Bearer " + token() } });
  const body = await response.json();
  if (!response.ok) throw new Error(`${body.error}: ${body.message}`);
  return body;
}

async function refreshStatus() {
  try {
    const response = await fetch("/antibody/status");
    renderStatus(response.ok ? await response.json() : null);
  } catch (e) {
    renderStatus(null);
  }
}

async function showPlan(id) {
  selected = id;
  try {
    const plan = await api("/antibody/plan/" + encodeURIComponent(id));
    if (selected !== id) return;
    rememberFetched({ id: plan.id, status: plan.status });
    $("plan-detail").hidden = false;
    $("detail-id").textContent = plan.id;
    $("detail-summary").textContent =
      `${plan.source} · ${plan.severity} · ${plan.status} · ${plan.description}`;
    $("actions").tBodies[0].replaceChildren(...(plan.actions || []).map((a, i) => {
      const tr = document.createElement("tr");
      tr.append(cell(i), cell(a.type), cell(a.state, "state-" + a.state), cell(a.attempts));
      return tr;
    }));
    $("detail-log").replaceChildren(...(plan.log || []).map((line) => {
      const li = document.createElement("li");
      li.textContent = typeof line === "string" ? line
        : line && line.message ? `${line.ts || ""}  ${line.message}` : JSON.stringify(line);
      return li;
    }));
    showError("");
  } catch (e) {
    showError(String(e.message || e));
  }
}

function onMessage(message) {
  switch (message.type) {
    case "Snapshot":
      renderStatus(message.status);
      plans.clear();
      for (const p of message.plans || []) remember(p);
      break;
    case "PlanQueued":
      remember({ id: message.plan_id, source: message.source, severity: message.severity,
        status: "pending", timestamp: message.ts });
      // The description and the agent's own timestamp come with the plan.
      api("/antibody/plan/" + encodeURIComponent(message.plan_id))
        .then((p) => { rememberFetched(p); renderPlans(); })
        .catch(() => {});
      break;
    case "PlanStatusChanged":
      remember({ id: message.plan_id, status: message.status });
      break;
    case "ActionFinished":
      break;
    default:
      return;
  }
  renderPlans();
  if (message.plan_id && message.plan_id === selected) showPlan(selected);
  if (message.type !== "Snapshot") refreshStatus();
}

function connect() {
  if (!token()) return;
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  // The token travels in the subprotocol list, not the URL (no log keeps it).
  socket = new WebSocket(`${scheme}//${location.host}/antibody/events`,
    ["antibody", "bearer." + token()]);
  socket.addEventListener("open", () => {
    retryDelay = 1000;
    setConnected(true, "live");
    showError("");
  });
  socket.addEventListener("message", (event) => {
    try {
      onMessage(JSON.parse(event.data));
    } catch (e) {
      showError("bad event: " + e);
    }
  });
  socket.addEventListener("close", () => {
    if (leaving) return;
    setConnected(false, "reconnecting…");
    socket = null;
    // A refused token closes at once: check it, and ask again if it is bad.
    fetch("/antibody/plans?limit=1", { headers: { Authorization: "Bearer " + token() } })
      .then((r) => {
        if (r.status === 401 || r.status === 403) {
          sessionStorage.removeItem(TOKEN_KEY);
          showError("The token was refused: paste another.");
          setConnected(false, "not connected");
          askToken();
        } else {
          setTimeout(connect, retryDelay);
          retryDelay = Math.min(retryDelay * 2, 30000);
        }
      })
      .catch(() => setTimeout(connect, retryDelay));
  });
}

function askToken() {
  $("token-form").hidden = false;
  $("forget").hidden = true;
}

function start() {
  window.addEventListener("pagehide", () => { leaving = true; });
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const value = $("token").value.trim();
    if (!value) return;
    sessionStorage.setItem(TOKEN_KEY, value);
    $("token").value = "";
    $("token-form").hidden = true;
    $("forget").hidden = false;
    connect();
  });
  $("forget").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    if (socket) socket.close();
    location.reload();
  });
  refreshStatus();
  setInterval(refreshStatus, 5000);
  if (token()) {
    $("forget").hidden = false;
    connect();
  } else {
    askToken();
  }
}

document.addEventListener("DOMContentLoaded", start);
