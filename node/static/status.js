// The cynode status page: asks for an admin API key, keeps it in this tab's sessionStorage, and
// draws GET /v1/cluster/overview every few seconds. Everything from the server is written with
// textContent (never innerHTML): member names and model ids are data, not markup.
"use strict";

const KEY = "cynode-admin-key";
const REFRESH_MS = 5000;
let timer = null;

const $ = (id) => document.getElementById(id);

function show(loggedIn) {
  $("login").hidden = loggedIn;
  $("dashboard").hidden = !loggedIn;
  $("session").hidden = !loggedIn;
}

function signOut(message) {
  sessionStorage.removeItem(KEY);
  clearTimeout(timer);
  show(false);
  $("login-error").textContent = message || "";
  $("api-key").focus();
}

async function refresh() {
  clearTimeout(timer);
  const key = sessionStorage.getItem(KEY);
  if (!key) return signOut();
  let reply;
  try {
    reply = await fetch("/v1/cluster/overview", { headers: { Authorization: "Bearer " + key }, cache: "no-store" });
  } catch (err) {
    $("fetch-error").textContent = "The node does not answer (" + err.message + "); trying again.";
    timer = setTimeout(refresh, REFRESH_MS);
    return;
  }
  if (reply.status === 401 || reply.status === 403) {
    let message = "That key was refused.";
    try { message = (await reply.json()).error.message; } catch (_) { /* keep the generic message */ }
    return signOut(message);
  }
  if (!reply.ok) {
    $("fetch-error").textContent = "The node answered " + reply.status + "; trying again.";
  } else {
    $("fetch-error").textContent = "";
    show(true);
    render(await reply.json());
  }
  timer = setTimeout(refresh, REFRESH_MS);
}

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined || text === "" ? "-" : String(text);
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

function badge(parent, text, cls) {
  const span = document.createElement("span");
  span.className = "badge " + cls;
  span.textContent = text;
  parent.appendChild(span);
}

function seconds(value) {
  if (value === null || value === undefined) return "-";
  return value < 1 ? Math.round(value * 1000) + " ms" : value.toFixed(2) + " s";
}

function rate(value) {
  return value === null || value === undefined ? "-" : value.toFixed(1);
}

function fill(tbody, rows) {
  tbody.replaceChildren(...rows);
}

function spark(svg, points, field) {
  const values = points.map((p) => p[field]).filter((v) => v !== null && v !== undefined);
  svg.replaceChildren();
  if (points.length < 2 || values.length === 0) return;
  const t0 = points[0].t, t1 = points[points.length - 1].t;
  const top = Math.max(...values) || 1;
  const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  line.setAttribute("points", points.filter((p) => p[field] !== null && p[field] !== undefined)
    .map((p) => ((p.t - t0) / (t1 - t0 || 1) * 300).toFixed(1) + "," + (58 - p[field] / top * 54).toFixed(1)).join(" "));
  svg.appendChild(line);
  const title = document.createElementNS("http://www.w3.org/2000/svg", "title");
  title.textContent = "last " + Math.round((t1 - t0) / 60) + " min, peak " + (field === "tps" ? rate(top) : seconds(top));
  svg.appendChild(title);
}

function render(o) {
  $("cluster-name").textContent = "· cluster " + o.cluster;
  $("served-by").textContent = "via " + o.node + " (v" + o.version + ")";
  $("updated").textContent = "updated " + new Date(o.generated_at * 1000).toLocaleTimeString();

  if (o.leader) {
    $("leader-id").textContent = o.leader.id;
    $("leader-detail").textContent = "epoch " + o.leader.epoch + " · " + (o.leader.address || "") + " · from " + o.leader.source;
  } else {
    $("leader-id").textContent = "none";
    $("leader-detail").textContent = "no coordinator leads right now";
  }
  $("queue-depth").textContent = o.queue ? String(o.queue.pending) : "-";
  $("queue-detail").textContent = o.queue ? "pending, as " + o.queue.reported_by + " reports" : "no leader reports a queue";
  $("tps").textContent = rate(o.throughput.tokens_per_second);
  $("ttft").textContent = seconds(o.throughput.ttft_mean_s);
  $("ttft-detail").textContent = "mean over the last minute; worst node p95 " + seconds(o.throughput.ttft_p95_s);
  spark($("tps-chart"), o.history, "tps");
  spark($("ttft-chart"), o.history, "ttft");

  const states = {};
  for (const m of o.members) states[m.state] = (states[m.state] || 0) + 1;
  $("member-count").textContent = String(states.alive || 0) + " alive";
  $("member-detail").textContent = Object.entries(states).map(([s, n]) => n + " " + s).join(" · ");

  fill($("members").tBodies[0], o.members.map((m) => {
    const row = document.createElement("tr");
    row.dataset.member = m.id;
    const name = cell(row, m.id);
    if (o.leader && o.leader.id === m.id) badge(name, "leader", "leader");
    const state = cell(row, "");
    state.textContent = "";
    badge(state, m.state, "state-" + m.state);
    cell(row, m.roles.join(", "));
    cell(row, m.address);
    cell(row, m.backend);
    cell(row, m.loaded.join(", "));
    cell(row, m.capacity ? m.active + " / " + m.capacity : m.active);
    cell(row, rate(m.tokens_per_second));
    cell(row, seconds(m.ttft_mean_s));
    return row;
  }));

  fill($("models").tBodies[0], o.models.map((m) => {
    const row = document.createElement("tr");
    row.dataset.model = m.id;
    cell(row, m.id);
    cell(row, m.loaded_on.join(", "));
    cell(row, m.served_by.join(", "));
    return row;
  }));

  fill($("training").tBodies[0], o.training_jobs.map((j) => {
    const row = document.createElement("tr");
    cell(row, j.id);
    cell(row, j.model);
    cell(row, j.status);
    cell(row, j.progress);
    return row;
  }));
  $("training-empty").hidden = o.training_jobs.length > 0;
  $("training").hidden = o.training_jobs.length === 0;
}

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("api-key").value.trim();
    $("api-key").value = "";
    if (!key) return;
    sessionStorage.setItem(KEY, key);
    $("login-error").textContent = "";
    refresh();
  });
  $("logout").addEventListener("click", () => signOut());
  if (sessionStorage.getItem(KEY)) refresh(); else signOut();
});
