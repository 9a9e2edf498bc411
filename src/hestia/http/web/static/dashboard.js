// Hestia's dashboard, live. The page arrives complete (dashboard.py renders it); this script
// keeps it current from the same API every client uses:
//   /v1/events (SSE)       what happened: a state change shows at once, then the service's
//                          status is fetched again; every event goes to the activity feed
//   /v1/services           every 5 s while the page is visible (in-flight and queued requests
//                          and the log change without an event), and after each reconnection
//   /v1/machines, /v1/activity   after a reconnection, and when a machine changes
// The texts (detail, idle, when, describe) are twins of dashboard.py's; change both together.
"use strict";

(() => {
  const main = document.getElementById("dashboard");
  if (!main) return;
  // Timestamps from the API are on the server's clock: compare them with our estimate of it.
  const skew = Number(main.dataset.now) - Date.now();
  const serverNow = () => Date.now() + skew;
  const REFRESH_MS = 5000;
  const FEED_MAX = 50;
  const KINDS = ["state", "start_attempt", "ready", "start_failed", "stopped", "crashed",
    "queue_overflow", "queue_timeout", "semaphore_task", "machine", "config_reloaded",
    "config_reload_failed"];

  // --- texts (twins in dashboard.py) ---------------------------------------------------------

  function duration(seconds) {
    const s = Math.max(0, Math.floor(seconds));
    if (s < 60) return `${s} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
    if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
    return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
  }

  const estimate = (ms) => (ms < 10000 ? `${(ms / 1000).toFixed(1)} s` : duration(ms / 1000));
  const epoch = (iso) => (iso ? Date.parse(iso) : 0);

  function when(iso) {
    if (!iso) return "never";
    const ago = (serverNow() - epoch(iso)) / 1000;
    if (ago < 5) return "just now";
    if (ago < 60) return `${Math.floor(ago)} s ago`;
    if (ago < 3600) return `${Math.floor(ago / 60)} min ago`;
    return `${duration(ago)} ago`;
  }

  // A countdown the API gave in seconds, less what passed since it was fetched.
  const left = (card, seconds) =>
    (seconds ? seconds - (Date.now() - card.fetchedAt) / 1000 : 0);

  function detail(st, card) {
    switch (st.state) {
      case "COLD": {
        const wait = left(card, st.nextAttemptInS);
        if (wait > 0) {
          return `Cold after ${st.failuresInARow} failed in a row: next start in ${duration(wait)}`;
        }
        return st.keepWarm ? "Cold: starts again by itself" : "Cold: starts on the next request";
      }
      case "STARTING": {
        const expected = st.expectedStartMs != null
          ? `usually ready in ${estimate(st.expectedStartMs)}` : "no earlier start to go by";
        if (card.since == null) return `Starting; ${expected}`;
        return `Starting for ${duration((serverNow() - card.since) / 1000)}; ${expected}`;
      }
      case "READY":
        return st.readySince
          ? `Ready for ${duration((serverNow() - epoch(st.readySince)) / 1000)}` : "Ready";
      case "STOPPING":
        return "Stopping";
      default: {
        const reason = (st.lastError && st.lastError.detail) || "start failed";
        const wait = left(card, st.cooldownRemainingS);
        return `Failed: ${reason}` +
          (wait > 0 ? ` · requests refused for ${duration(wait)} more` : "");
      }
    }
  }

  function idle(st) {
    if (st.keepWarm) return "never (kept warm)";
    if (!st.idleTimeoutS) return "never";
    if (st.state !== "READY") return `after ${duration(st.idleTimeoutS)} idle`;
    if (st.inFlight) return `paused while ${st.inFlight} in flight`;
    const since = Math.max(epoch(st.lastUsed), epoch(st.readySince));
    const remaining = (since + st.idleTimeoutS * 1000 - serverNow()) / 1000;
    return remaining >= 1 ? `in ${duration(remaining)}` : "now";
  }

  function machine(st) {
    if (st.machineId != null) {
      const pid = st.pid != null ? `, pid ${st.pid}` : "";
      return `${st.machineId} (${st.launcher}${pid})`;
    }
    return st.placements.map((p) => `${p.machine} (${p.launcher})`).join(" → ");
  }

  function machineState(m) {
    if (!m.enabled) return "disabled";
    return m.available ? "in rotation" : m.reason;
  }

  function describe(kind, d) {
    const took = (prefix) => (d.duration_ms != null ? `${prefix}${estimate(d.duration_ms)}` : "");
    switch (kind) {
      case "state": return `${d.previous} → ${d.state}`;
      case "start_attempt":
        return d.ok ? `attempt ${d.attempt} on ${d.machine} ready${took(" in ")}`
          : `attempt ${d.attempt} on ${d.machine} failed${took(" in ")}: ${d.detail}`;
      case "ready":
        return `ready on ${d.machine}${took(" after ")}` +
          ((d.attempts || 1) > 1 ? ` (${d.attempts} attempts)` : "");
      case "start_failed":
        return d.cancelled ? "start cancelled"
          : `start failed after ${d.attempts} attempt(s): ${d.detail}`;
      case "stopped": return `stopped (${d.reason})`;
      case "crashed": return `crashed: ${d.detail} (exit status ${d.exit_status})`;
      case "queue_overflow": return `queue full (${d.queue_max}) while ${d.state}: request refused`;
      case "queue_timeout": return `a request gave up after ${d.waited_s} s while ${d.state}`;
      case "semaphore_task": return `Semaphore task ${d.task_id} (${d.action}): ${d.status}`;
      case "machine": return `machine ${d.machine} ${d.enabled ? "enabled" : "disabled"}`;
      case "config_reloaded": {
        const parts = ["added", "removed", "restarted", "updated"]
          .map((k) => [k, Array.isArray(d[k]) ? d[k].length : Object.keys(d[k] || {}).length])
          .filter(([, n]) => n > 0).map(([k, n]) => `${n} ${k}`);
        return `configuration reloaded: ${parts.join(", ") || "no service changed"}`;
      }
      case "config_reload_failed": return `configuration reload refused: ${d.detail}`;
      default: return kind.replace(/_/g, " ");
    }
  }

  // --- talking to the API --------------------------------------------------------------------

  async function call(method, path) {
    const init = { method, headers: { Accept: "application/json" }, credentials: "same-origin" };
    if (method === "POST") {
      init.headers["Content-Type"] = "application/json";
      init.body = "{}";
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (error) {
      throw new Error(`cannot reach Hestia (${error.message})`);
    }
    const body = await response.json().catch(() => null);
    if (!response.ok) {
      // The gateway's error body says why (a 409's "already READY", a 401's "log in again").
      const why = (body && body.detail) || `${response.status} ${response.statusText}`;
      const refusal = new Error(why);
      refusal.refused = true;
      throw refusal;
    }
    return body;
  }

  const setText = (el, text) => {
    if (el && el.textContent !== text) el.textContent = text;
  };

  // --- services ------------------------------------------------------------------------------

  const cards = new Map(); // backend id → {el, status, fetchedAt, since, pending}
  for (const el of document.querySelectorAll("li.service[data-id]")) {
    cards.set(el.dataset.id, {
      el, status: null, fetchedAt: 0, pending: false,
      since: el.dataset.since ? Number(el.dataset.since) : null,
    });
  }
  const field = (card, name) => card.el.querySelector(`[data-field="${name}"]`);

  function renderCard(card) {
    const st = card.status;
    const { el } = card;
    const state = st ? st.state : el.dataset.state;
    el.dataset.state = state;
    el.querySelector('[data-action="start"]').disabled =
      card.pending || !["COLD", "STOPPING", "FAILED"].includes(state);
    el.querySelector('[data-action="stop"]').disabled =
      card.pending || !["STARTING", "READY"].includes(state);
    el.setAttribute("aria-busy", card.pending ? "true" : "false");
    const badge = field(card, "state");
    badge.className = `state state-${state}`;
    setText(badge, state);
    if (!st) return;
    setText(field(card, "detail"), detail(st, card));
    setText(field(card, "machine"), machine(st));
    setText(field(card, "idle"), idle(st));
    setText(field(card, "inFlight"), String(st.inFlight));
    setText(field(card, "queued"), String(st.queuePending));
    const used = field(card, "lastUsed");
    if (st.lastUsed) {
      let time = used.querySelector("time");
      if (!time) {
        used.textContent = "";
        time = used.appendChild(document.createElement("time"));
      }
      time.dateTime = st.lastUsed;
      setText(time, when(st.lastUsed));
    } else {
      setText(used, "never");
    }
    const lines = st.logTail || [];
    setText(field(card, "logCount"), `(${lines.length} line${lines.length === 1 ? "" : "s"})`);
    setText(field(card, "log"), lines.join("\n"));
    if (state === "FAILED" && card.shown !== "FAILED") card.el.querySelector("details").open = true;
    card.shown = state;
  }

  function take(status) {
    const card = cards.get(status.serviceId);
    if (!card) return;
    if (status.state !== "STARTING") {
      card.since = null;
    } else if (card.since == null && status.estimatedWaitMs > 0 && status.expectedStartMs) {
      // Missed the STARTING event (a reconnection): what past starts say has elapsed.
      card.since = serverNow() - (status.expectedStartMs - status.estimatedWaitMs);
    }
    card.status = status;
    card.fetchedAt = Date.now();
    renderCard(card);
  }

  function summarize() {
    const counts = {};
    for (const card of cards.values()) {
      const { state } = card.el.dataset;
      counts[state] = (counts[state] || 0) + 1;
    }
    const parts = ["READY", "STARTING", "STOPPING", "FAILED", "COLD"]
      .filter((s) => counts[s]).map((s) => `${counts[s]} ${s.toLowerCase()}`);
    const n = cards.size;
    setText(document.getElementById("summary"),
      `${n} service${n === 1 ? "" : "s"}` + (parts.length ? `: ${parts.join(", ")}` : ""));
  }

  async function refreshAll() {
    try {
      const { services } = await call("GET", "/v1/services");
      services.forEach(take);
      summarize();
    } catch (error) {
      setLive(false, `cannot read the services: ${error.message}`);
    }
  }

  const pendingRefresh = new Map();
  function refreshSoon(id) {
    // Events come in bursts (state, attempt, ready): one status read for the burst.
    if (!cards.has(id) || pendingRefresh.has(id)) return;
    pendingRefresh.set(id, setTimeout(async () => {
      pendingRefresh.delete(id);
      try {
        take(await call("GET", `/v1/services/${encodeURIComponent(id)}/status`));
        summarize();
      } catch (error) {
        setLive(false, `cannot read ${id}: ${error.message}`);
      }
    }, 100));
  }

  async function press(card, action) {
    const message = field(card, "message");
    message.classList.remove("error");
    setText(message, "");
    card.pending = true;
    renderCard(card);
    try {
      await call("POST", `/v1/services/${encodeURIComponent(card.el.dataset.id)}/${action}`);
      refreshSoon(card.el.dataset.id);
    } catch (error) {
      message.classList.add("error");
      const verb = action === "start" ? "Start" : "Stop";
      setText(message, `${verb} ${error.refused ? "refused" : "failed"}: ${error.message}`);
    } finally {
      card.pending = false;
      renderCard(card);
      summarize();
    }
  }

  for (const card of cards.values()) {
    for (const button of card.el.querySelectorAll("button[data-action]")) {
      button.addEventListener("click", () => press(card, button.dataset.action));
    }
  }

  // --- machines ------------------------------------------------------------------------------

  const machineRows = new Map();
  for (const row of document.querySelectorAll("#machines tr[data-machine]")) {
    machineRows.set(row.dataset.machine, row);
  }

  function takeMachine(m) {
    const row = machineRows.get(m.machineId);
    if (!row) return;
    row.dataset.enabled = String(m.enabled);
    row.dataset.available = String(m.available);
    setText(row.querySelector('[data-field="status"]'), machineState(m));
    setText(row.querySelector('[data-field="failures"]'),
      `${m.failuresInARow} of ${m.maxFailures}`);
    const button = row.querySelector("button");
    button.dataset.action = m.enabled ? "disable" : "enable";
    button.firstChild.textContent = m.enabled ? "Disable" : "Enable";
  }

  async function refreshMachines() {
    try {
      (await call("GET", "/v1/machines")).machines.forEach(takeMachine);
    } catch (error) {
      setLive(false, `cannot read the machines: ${error.message}`);
    }
  }

  const machinesMessage = document.getElementById("machines-message");
  for (const row of machineRows.values()) {
    const button = row.querySelector("button");
    button.addEventListener("click", async () => {
      const { action } = button.dataset;
      machinesMessage.classList.remove("error");
      setText(machinesMessage, "");
      button.disabled = true;
      try {
        takeMachine(await call("POST",
          `/v1/machines/${encodeURIComponent(row.dataset.machine)}/${action}`));
      } catch (error) {
        machinesMessage.classList.add("error");
        setText(machinesMessage, `${action === "enable" ? "Enable" : "Disable"} ` +
          `${row.dataset.machine} ${error.refused ? "refused" : "failed"}: ${error.message}`);
      } finally {
        button.disabled = false;
      }
    });
    button.disabled = false;
  }

  // --- activity ------------------------------------------------------------------------------

  const feed = document.getElementById("feed");
  const feedEmpty = document.getElementById("feed-empty");
  // Newest first: by time, then (within a millisecond) by arrival. The key (kind, service,
  // millisecond) skips an event seen twice: from the stream and from /v1/activity.
  let arrival = feed.children.length;
  let entries = [...feed.children].map((li, i) => ({
    key: li.dataset.key, at: epoch(li.querySelector("time").dateTime), order: arrival - i, li,
  }));

  const clock = (ms) => new Date(ms - skew).toLocaleTimeString([], { hour12: false });
  for (const entry of entries) setText(entry.li.querySelector("time"), clock(entry.at));

  function entry(at, service, kind, data) {
    const key = `${kind}|${service || ""}|${at}`;
    if (entries.some((e) => e.key === key)) return null;
    const li = document.createElement("li");
    li.dataset.key = key;
    if (kind === "state") li.className = "minor";
    const time = li.appendChild(document.createElement("time"));
    time.dateTime = new Date(at).toISOString();
    time.textContent = clock(at);
    const who = document.createElement("span");
    who.className = "who";
    who.textContent = service || "—";
    const what = document.createElement("span");
    what.className = "what";
    what.textContent = describe(kind, data);
    li.append(" ", who, " ", what);
    return { key, at, order: ++arrival, li };
  }

  function addToFeed(added) {
    const fresh = added.filter(Boolean);
    if (!fresh.length) return;
    entries = entries.concat(fresh).sort((a, b) => b.at - a.at || b.order - a.order)
      .slice(0, FEED_MAX);
    feed.replaceChildren(...entries.map((e) => e.li));
    feed.hidden = entries.length === 0;
    feedEmpty.hidden = entries.length > 0;
  }

  async function refreshActivity() {
    try {
      const { activity } = await call("GET", `/v1/activity?limit=${FEED_MAX}`);
      // Oldest first, so that arrival orders them as the server did. A stored row keeps the
      // event's fields in `detail`; a gateway without a store answers the events themselves
      // (with their `seq`). Either way `at` is ISO, to the millisecond, like the stream's.
      addToFeed(activity.reverse().map((row) => entry(
        epoch(row.at), row.service, row.kind, "seq" in row ? row : row.detail || {})));
    } catch (error) {
      setLive(false, `cannot read the activity: ${error.message}`);
    }
  }

  // --- the event stream ----------------------------------------------------------------------

  const live = document.getElementById("live");
  function setLive(ok, why) {
    live.hidden = false;
    live.classList.toggle("off", !ok);
    setText(live, ok ? "Live" : `Not live: ${why}`);
  }

  function onEvent(message) {
    const ev = JSON.parse(message.data);
    const card = ev.service != null ? cards.get(ev.service) : null;
    if (card && ev.kind === "state") {
      // Show the change at once; the status read that follows fills in the rest.
      if (ev.state === "STARTING") card.since = epoch(ev.at);
      if (card.status) {
        card.status = { ...card.status, state: ev.state };
      } else {
        card.el.dataset.state = ev.state;
      }
      renderCard(card);
      summarize();
    }
    if (card) refreshSoon(ev.service);
    if (ev.kind === "machine" || ev.kind === "start_attempt" || ev.kind === "start_failed") {
      refreshMachines();
    }
    addToFeed([entry(epoch(ev.at), ev.service, ev.kind, ev)]);
    if (ev.kind === "config_reloaded" && ((ev.added || []).length || (ev.removed || []).length)) {
      // Other services now: the page is made again by the server, cards and all.
      window.location.reload();
    }
  }

  function connect() {
    const source = new EventSource("/v1/events");
    source.addEventListener("open", () => {
      setLive(true);
      refreshAll();
      refreshMachines();
      refreshActivity();
    });
    source.addEventListener("error", () => {
      setLive(false, "reconnecting…");
      if (source.readyState === EventSource.CLOSED) {
        // Refused (not a dropped connection, which EventSource retries by itself).
        setTimeout(connect, REFRESH_MS);
      }
    });
    for (const kind of KINDS) source.addEventListener(kind, onEvent);
  }

  // --- filter, ticking, polling --------------------------------------------------------------

  const filter = document.getElementById("filter");
  document.getElementById("filter-box").hidden = false;
  filter.addEventListener("input", () => {
    const words = filter.value.trim().toLowerCase();
    for (const [id, card] of cards) {
      card.el.hidden = words !== "" && !id.toLowerCase().includes(words);
    }
  });

  for (const card of cards.values()) renderCard(card);
  summarize();
  connect();
  setInterval(() => {
    for (const card of cards.values()) if (card.status) renderCard(card);
  }, 1000);
  setInterval(() => {
    if (!document.hidden) refreshAll();
  }, REFRESH_MS);
})();
