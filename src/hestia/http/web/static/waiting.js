// The waiting page: follow one backend's start over server-sent events and reload this same
// URL the moment it is READY. Every sentence comes from the gateway (`page` in each message);
// this script only places it and counts the elapsed time between messages.
"use strict";

(function () {
  const root = document.getElementById("waiting");
  if (!root) return;
  const $ = (id) => document.getElementById(id);
  const openedAt = performance.now();
  let view = {
    phase: root.dataset.phase,
    elapsedMs: Number(root.dataset.elapsedMs || 0),
    expectedMs: root.dataset.expectedMs ? Number(root.dataset.expectedMs) : null,
    expectedText: $("expected").textContent,
  };
  let viewAt = openedAt; // when `view.elapsedMs` was true
  let reloading = false;

  function durationText(ms) {
    const seconds = ms / 1000;
    if (seconds < 10) return seconds.toFixed(1) + " s";
    const whole = Math.round(seconds);
    if (whole < 60) return whole + " s";
    const minutes = Math.floor(whole / 60);
    const secs = whole % 60;
    if (minutes < 60) return secs ? minutes + " min " + secs + " s" : minutes + " min";
    const hours = Math.floor(minutes / 60);
    return hours + " h " + (minutes % 60) + " min";
  }

  function tick() {
    if (view.phase !== "starting") return;
    const elapsed = view.elapsedMs + (performance.now() - viewAt);
    $("elapsed").textContent = durationText(elapsed);
    const fill = $("bar-fill");
    if (view.expectedMs) {
      if (fill.classList.contains("bar-unknown")) {
        // From the sweeping band to the measured width at once, not by a slide.
        fill.style.transition = "none";
        fill.classList.remove("bar-unknown");
        fill.style.width = "0";
        void fill.offsetWidth;
        fill.style.transition = "";
      }
      // Never quite full before READY says so: a start may take longer than usual.
      fill.style.width = Math.min(95, (100 * elapsed) / view.expectedMs).toFixed(1) + "%";
      $("expected").textContent = elapsed > view.expectedMs * 1.2
        ? view.expectedText + "; this one is taking longer"
        : view.expectedText;
    } else {
      fill.classList.add("bar-unknown");
    }
  }

  function setList(list, lines) {
    list.replaceChildren(...lines.map((line) => {
      const item = document.createElement("li");
      item.textContent = line;
      return item;
    }));
  }

  function show(page) {
    view = page;
    viewAt = performance.now();
    root.dataset.phase = page.phase;
    const state = $("state");
    state.textContent = page.state;
    state.className = "state state-" + page.state;
    document.title = page.service + " · " + page.state + " · Hestia";
    $("headline").textContent = page.headline;
    $("machine").textContent = page.machine;
    $("expected").textContent = page.expectedText;
    $("elapsed").textContent = page.elapsedText;
    const failed = page.phase === "failed";
    $("progress-block").hidden = failed;
    $("failure").hidden = !failed;
    const failure = page.failure;
    if (failed && failure) {
      $("failure-summary").textContent = failure.summary;
      $("failure-detail").textContent = failure.detail;
      $("failure-log").textContent = failure.logTail.join("\n");
      $("failure-log-block").hidden = failure.logTail.length === 0;
      setList($("failure-attempts"), failure.attempts);
      $("failure-attempts-block").hidden = failure.attempts.length === 0;
    }
    if (!failed) {
      $("retry").disabled = false;
      $("retry-note").textContent = "";
    }
    tick();
  }

  function reload() {
    if (reloading) return;
    reloading = true;
    location.reload();
  }

  const events = new EventSource(root.dataset.events);
  events.onmessage = (message) => {
    const status = JSON.parse(message.data);
    if (status.state === "READY") {
      events.close();
      // A page that was already READY when it was rendered waits a moment, so that it can
      // never reload in a tight loop.
      if (root.dataset.phase === "ready" && performance.now() - openedAt < 1000) {
        setTimeout(reload, 1000);
      } else {
        reload();
      }
      return;
    }
    show(status.page);
  };
  events.onerror = () => {
    // EventSource reconnects by itself; when it gives up (the gateway answered something else
    // than a stream), load the page again and let the gateway say what it is now.
    if (events.readyState === EventSource.CLOSED) setTimeout(reload, 3000);
  };

  const form = $("retry-form");
  form.addEventListener("submit", async (submit) => {
    submit.preventDefault();
    const button = $("retry");
    const note = $("retry-note");
    button.disabled = true;
    note.textContent = "Asking for a start…";
    try {
      const answer = await fetch(form.action, {
        method: "POST",
        headers: { Accept: "application/json" },
        credentials: "same-origin",
      });
      const body = await answer.json().catch(() => ({}));
      if (answer.status === 202) {
        note.textContent = "Starting again…";
      } else if (answer.status === 409) {
        note.textContent = "It is already " + (body.state || "starting").toLowerCase() + ".";
      } else {
        note.textContent = body.detail || "The gateway answered " + answer.status + ".";
        button.disabled = false;
      }
    } catch (error) {
      note.textContent = "The gateway could not be reached.";
      button.disabled = false;
    }
  });

  setInterval(tick, 250);
  tick();
})();
