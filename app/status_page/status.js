// The status page: follows GET /circuit-breaker/events (Server-Sent Events; no polling) and,
// with an admin token, GET /consumers after each summary. Plain DOM code: the page is small
// enough that a framework would outweigh it.
"use strict";

const STATE_LABELS = { closed: "Closed", open: "Open", half_open: "Half-open" };
const TIMELINE_LENGTH = 50;
const TOKEN_KEY = "stock-service-admin-token";
const RETRY_SECONDS = 5; // after the stream is closed for good (EventSource retries the rest)

const breakers = new Map(); // name -> {snapshot, probeAt: performance.now() ms or null}
const transitions = new Map(); // id -> a transition's data
let appliedId = 0; // the newest transition already reflected in `breakers`

const byId = (id) => document.getElementById(id);

function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  node.append(...children);
  return node;
}

function seconds(value) {
  if (value < 60) return `${value.toFixed(1)} s`;
  const minutes = Math.round(value / 60);
  if (minutes < 60) return `${minutes} min`;
  const [hours, rest] = [Math.floor(minutes / 60), minutes % 60];
  return rest === 0 ? `${hours} h` : `${hours} h ${rest} min`;
}

function clock(iso) {
  return new Date(iso).toLocaleTimeString([], { hour12: false });
}

// A time to come: the clock, and how far off it is.
function when(iso) {
  return `${clock(iso)}, in ${seconds(Math.max(0, (Date.parse(iso) - Date.now()) / 1000))}`;
}

function stateChip(state) {
  return element("span", { class: "chip", "data-state": state }, STATE_LABELS[state] || state);
}

// -- breakers -------------------------------------------------------------------------------

function probeAt(snapshot) {
  const waiting = snapshot.state === "open" && !snapshot.forced_open;
  return waiting ? performance.now() + snapshot.retry_after_seconds * 1000 : null;
}

function setSnapshots(snapshots) {
  for (const snapshot of snapshots) {
    breakers.set(snapshot.name, { snapshot, probeAt: probeAt(snapshot) });
  }
  renderBreakers();
}

function applyTransition(change) {
  const entry = breakers.get(change.breaker);
  if (!entry) return; // a breaker this page has no snapshot of yet: the next summary brings it
  const snapshot = { ...entry.snapshot, state: change.to, success_count: 0 };
  if (change.to === "closed") snapshot.failure_count = 0;
  if (change.to !== "open") snapshot.forced_open = false;
  if (change.reason === "forced_open") snapshot.forced_open = true;
  snapshot.retry_after_seconds = change.to === "open" ? change.retry_after : 0;
  if (change.to === "open") snapshot.opened_at = change.at;
  breakers.set(change.breaker, { snapshot, probeAt: probeAt(snapshot) });
  renderBreakers();
}

function breakerCard(name) {
  const id = `breaker-${name}`;
  let card = byId(id);
  if (!card) {
    card = element(
      "article",
      { class: "breaker", id },
      element("h3", {}, name),
      element("p", { class: "badge", id: `badge-${name}`, "data-state": "closed" }),
      element("p", { class: "counts" }),
      element("p", { class: "countdown", id: `countdown-${name}` }),
    );
    byId("breakers").append(card);
  }
  return card;
}

function counts(s) {
  if (s.state === "open") {
    const reopened = s.reopens > 0 ? `, reopened ${s.reopens}× in a row` : "";
    return s.opened_at === null ? "Rejecting calls" : `Opened ${clock(s.opened_at)}${reopened}`;
  }
  if (s.state === "half_open") return `Probes succeeded: ${s.success_count} of ${s.success_threshold}`;
  if (s.mode === "failure_rate" && s.failure_rate !== null) {
    return `Failure rate: ${Math.round(s.failure_rate * 100)}% over ${s.window_calls} calls`;
  }
  return `Failures in a row: ${s.failure_count} of ${s.failure_threshold}`;
}

function renderBreakers() {
  for (const [name, { snapshot: s }] of breakers) {
    const card = breakerCard(name);
    const badge = card.querySelector(".badge");
    badge.dataset.state = s.state;
    badge.textContent = STATE_LABELS[s.state] || s.state;
    card.querySelector(".counts").textContent = counts(s);
  }
  tick();
}

// The time left before the next probe, counted down here between two events.
function tick() {
  const now = performance.now();
  for (const [name, { snapshot, probeAt }] of breakers) {
    const countdown = byId(`countdown-${name}`);
    if (!countdown) continue;
    if (snapshot.state === "open" && snapshot.forced_open) {
      countdown.textContent = "Forced open: no probe until an admin resets it";
    } else if (probeAt === null) {
      countdown.textContent = "";
    } else {
      const left = Math.max(0, (probeAt - now) / 1000);
      countdown.textContent = left > 0 ? `Next probe in ${seconds(left)}` : "Next probe: due now";
    }
  }
}

// -- the timeline ---------------------------------------------------------------------------

function addTransitions(list) {
  for (const change of list) transitions.set(change.id, change);
  const newest = [...transitions.values()].sort((a, b) => b.id - a.id).slice(0, TIMELINE_LENGTH);
  transitions.clear();
  for (const change of newest) transitions.set(change.id, change);
  byId("timeline").replaceChildren(
    ...newest.map((change) =>
      element(
        "li",
        { "data-id": String(change.id) },
        element("time", { datetime: change.at }, clock(change.at)),
        " ",
        element("strong", {}, change.breaker),
        " ",
        stateChip(change.from),
        " → ",
        stateChip(change.to),
        " ",
        element("span", { class: "muted" }, change.reason.replaceAll("_", " ")),
      ),
    ),
  );
  byId("timeline-empty").hidden = newest.length > 0;
}

// -- the budget -----------------------------------------------------------------------------

function renderQuota(quota) {
  if (quota === null) {
    byId("quota-left").textContent = "No daily quota";
    byId("quota-refill").textContent = "—";
    return;
  }
  byId("quota-left").textContent = `${quota.remaining} of ${quota.limit}`;
  const until = quota.blocked_until || quota.next_refill_at;
  byId("quota-refill").textContent = until === null ? "Nothing used" : when(until);
  byId("quota-blocked").hidden = !quota.blocked_until;
}

function renderSummary(summary) {
  renderQuota(summary.quota);
  const ratio = summary.cache_hit_ratio;
  byId("cache-hit-ratio").textContent =
    ratio === null ? "No lookup" : `${(ratio * 100).toFixed(1)}%`;
  byId("interval-title").textContent =
    `Calls / failed / rejected, last ${summary.interval_seconds} s`;
  byId("interval-calls").textContent =
    `${summary.calls} / ${summary.failures} / ${summary.rejections}`;
  setSnapshots(summary.breakers);
}

// -- the stream -----------------------------------------------------------------------------

function setConnection(state, text) {
  const status = byId("connection");
  status.dataset.connection = state;
  status.textContent = text;
}

function connect() {
  const source = new EventSource("/circuit-breaker/events");
  source.onopen = () => setConnection("live", "Live: following the event stream");
  source.onerror = () => {
    if (source.readyState === EventSource.CLOSED) {
      setConnection("down", `Disconnected: retrying in ${RETRY_SECONDS} s`);
      setTimeout(connect, RETRY_SECONDS * 1000);
    } else {
      setConnection("reconnecting", "Reconnecting…");
    }
  };
  source.addEventListener("state", (event) => {
    const state = JSON.parse(event.data);
    breakers.clear();
    byId("breakers").replaceChildren();
    setSnapshots(state.breakers);
    renderQuota(state.quota);
    addTransitions(state.history);
    appliedId = Math.max(appliedId, ...state.history.map((change) => change.id));
  });
  source.addEventListener("transition", (event) => {
    const change = JSON.parse(event.data);
    addTransitions([change]);
    // A replay after a reconnection is older than the state event's snapshots.
    if (change.id > appliedId) {
      appliedId = change.id;
      applyTransition(change);
    }
  });
  source.addEventListener("summary", (event) => {
    renderSummary(JSON.parse(event.data));
    loadConsumers();
  });
}

// -- consumers (admin) ----------------------------------------------------------------------

async function loadConsumers() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  byId("admin-forget").hidden = token === null;
  if (token === null) return;
  const status = byId("consumers-status");
  let response;
  try {
    response = await fetch("/consumers", { headers: { Authorization: `Bearer ${token}` } });
  } catch {
    status.textContent = "Could not reach /consumers.";
    return;
  }
  if (response.status === 401) {
    forgetToken("That admin token was refused.");
    return;
  }
  if (!response.ok) {
    const reason = response.status === 404 ? "admin endpoints are off (no ADMIN_TOKEN)" : "";
    status.textContent = `/consumers answered ${response.status}${reason && `: ${reason}`}.`;
    return;
  }
  renderConsumers(await response.json());
}

function renderConsumers(consumers) {
  const cell = (value) => element("td", {}, value === null ? "—" : String(value));
  byId("consumers").querySelector("tbody").replaceChildren(
    ...consumers.map((c) =>
      element(
        "tr",
        {},
        element("th", { scope: "row" }, c.name),
        cell(c.calls_per_day === null ? null : `${c.used} of ${c.calls_per_day}`),
        cell(c.remaining),
        cell(c.next_refill_at && when(c.next_refill_at)),
        cell(c.requests_per_second),
      ),
    ),
  );
  byId("consumers").hidden = consumers.length === 0;
  byId("consumers-status").textContent =
    consumers.length === 0
      ? "No consumer is configured: anyone may call /stock."
      : `Updated ${new Date().toLocaleTimeString([], { hour12: false })}, on each summary.`;
}

function forgetToken(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  byId("admin-forget").hidden = true;
  byId("consumers").hidden = true;
  byId("consumers-status").textContent = message;
}

function setUpAdminForm() {
  byId("admin-form").addEventListener("submit", (event) => {
    event.preventDefault(); // the token goes in a header, never in a URL or a form post
    const input = byId("admin-token");
    sessionStorage.setItem(TOKEN_KEY, input.value);
    input.value = "";
    byId("consumers-status").textContent = "Loading…";
    loadConsumers();
  });
  byId("admin-forget").addEventListener("click", () => forgetToken("Token forgotten."));
}

byId("live").hidden = false; // without JavaScript, the page shows only where the JSON is
setConnection("connecting", "Connecting to the event stream…");
setUpAdminForm();
connect();
loadConsumers();
setInterval(tick, 200);
