// The nurses' dashboard: the live triage queue.
//
// The queue is read from the alert API (GET /api/alerts) and kept current by its live
// stream (GET /api/alerts/stream, server-sent events fed by PostgreSQL NOTIFY): every
// alert change reloads the list, so a new alert appears and a changed one moves without a
// page reload. The list is sorted and filtered here too, so the page is right even when the
// API does not yet offer an ordering or a filter. Actions are sent to the dashboard's own
// endpoints with the session's CSRF token; the server names the signed-in nurse as actor.
"use strict";

(function () {
  const STATES = {
    active: ["open", "acknowledged"],
    open: ["open"],
    acknowledged: ["acknowledged"],
    resolved: ["resolved"],
  };
  const csrfMeta = document.querySelector('meta[name="csrf-token"]');
  const csrfToken = csrfMeta ? csrfMeta.content : "";

  const table = document.getElementById("queue");
  if (!table) {
    return; // not the queue page
  }
  // Most urgent first, in the server's order of severities (rpm/domain/severity.py).
  const SEVERITY_RANK = Object.fromEntries(
    table.dataset.severityOrder.split(" ").map((name, rank) => [name, rank]),
  );
  const rows = document.getElementById("queue-rows");
  const filters = document.getElementById("filters");
  const programSelect = document.getElementById("filter-program");
  const stateSelect = document.getElementById("filter-state");
  const liveStatus = document.getElementById("live-status");
  const filterNote = document.getElementById("filter-note");
  const announcer = document.getElementById("announcer");
  const myId = table.dataset.staffId;
  const canAssign = table.dataset.canAssign === "true";

  let known = null; // ids of the alerts shown, to tell new ones apart (null before 1st load)
  let loading = false;
  let loadAgain = false;
  let focusAfterRender = null; // {id, field}: where keyboard focus goes after a re-render

  // --- reading the queue ------------------------------------------------------------

  function queryUrl() {
    const params = new URLSearchParams({ order: "triage", limit: "500" });
    for (const s of STATES[stateSelect.value] || STATES.active) {
      params.append("state", s);
    }
    if (programSelect.value) {
      params.set("program", programSelect.value);
    }
    return "/api/alerts?" + params.toString();
  }

  async function load() {
    if (loading) {
      loadAgain = true; // coalesce bursts of changes into one more load
      return;
    }
    loading = true;
    try {
      do {
        loadAgain = false;
        const response = await fetch(queryUrl(), {
          headers: { Accept: "application/json" },
          cache: "no-store",
          credentials: "same-origin",
        });
        if (!response.ok) {
          throw new Error("the alert API answered " + response.status);
        }
        render(await response.json());
      } while (loadAgain);
    } catch (error) {
      liveStatus.textContent = "Could not load the queue (" + error.message + "); retrying.";
      setTimeout(load, 3000);
    } finally {
      loading = false;
    }
  }

  function visible(alerts) {
    const states = STATES[stateSelect.value] || STATES.active;
    const program = programSelect.value;
    let programKnown = true;
    const shown = alerts.filter((a) => {
      if (!states.includes(a.state)) {
        return false;
      }
      if (!program) {
        return true;
      }
      const programs = a.patient_programs || a.programs;
      if (Array.isArray(programs)) {
        return programs.includes(program);
      }
      programKnown = false;
      return true;
    });
    filterNote.hidden = programKnown;
    filterNote.textContent = programKnown
      ? ""
      : "This server does not report care programs with alerts yet: showing every program.";
    // Most severe first, then oldest first (the triage order).
    shown.sort(
      (a, b) =>
        (SEVERITY_RANK[a.severity] ?? 9) - (SEVERITY_RANK[b.severity] ?? 9) ||
        Date.parse(a.opened_at) - Date.parse(b.opened_at) ||
        a.id - b.id,
    );
    return shown;
  }

  function render(alerts) {
    const shown = visible(alerts);
    const focused = focusedControl();
    const fresh = known === null ? [] : shown.filter((a) => !known.has(a.id));
    known = new Set(shown.map((a) => a.id));
    if (shown.length === 0) {
      const tr = document.createElement("tr");
      tr.className = "placeholder";
      const td = cell("No alerts match these filters.");
      td.colSpan = 7;
      tr.append(td);
      rows.replaceChildren(tr);
    } else {
      rows.replaceChildren(...shown.map(row));
    }
    restoreFocus(focusAfterRender || focused);
    focusAfterRender = null;
    for (const a of fresh) {
      if (a.state === "open") {
        announce(
          `New ${a.severity.toLowerCase()} alert for patient ${a.patient_id}: ${a.title}.`,
        );
      }
    }
  }

  // --- one row ----------------------------------------------------------------------

  function cell(text, className) {
    const td = document.createElement("td");
    td.textContent = text;
    if (className) {
      td.className = className;
    }
    return td;
  }

  function note(text) {
    const span = document.createElement("span");
    span.className = "cell-note";
    span.textContent = text;
    return span;
  }

  function patientHref(a) {
    return `/dashboard/patients/${encodeURIComponent(a.patient_id)}?alert=${a.id}#alert`;
  }

  function row(a) {
    const tr = document.createElement("tr");
    tr.dataset.alertId = a.id;
    tr.dataset.patientId = a.patient_id;
    tr.dataset.state = a.state;
    tr.className = "sev-row-" + a.severity.toLowerCase();

    const severity = document.createElement("td");
    const badge = document.createElement("span");
    badge.className = "sev sev-" + a.severity.toLowerCase();
    badge.textContent = a.severity.charAt(0) + a.severity.slice(1).toLowerCase();
    severity.append(badge);

    const title = document.createElement("td");
    const link = document.createElement("a");
    link.href = patientHref(a);
    link.textContent = a.title;
    link.dataset.field = "link";
    title.append(link);

    const age = document.createElement("td");
    const time = document.createElement("time");
    time.dateTime = a.opened_at;
    time.title = new Date(a.opened_at).toLocaleString();
    time.textContent = ageText(a.opened_at);
    age.append(time);

    const state = document.createElement("td");
    const stateName = document.createElement("span");
    stateName.textContent = capitalize(a.state);
    stateName.dataset.field = "state";
    state.append(stateName);
    if (a.escalation_tier > 0 && a.state === "open") {
      state.append(note(`escalated to on-call tier ${a.escalation_tier}`));
    }
    if (a.snoozed_until && Date.parse(a.snoozed_until) > Date.now()) {
      const until = new Date(a.snoozed_until).toLocaleTimeString([], {
        hour: "2-digit",
        minute: "2-digit",
      });
      state.append(note(`similar alerts snoozed until ${until}`));
    }

    const assignee = cell(a.assigned_to ? a.assigned_to : "—");
    assignee.dataset.field = "assignee";

    tr.append(severity, cell(a.patient_id), title, age, state, assignee, actions(a));
    return tr;
  }

  function actions(a) {
    const td = document.createElement("td");
    td.className = "row-actions";
    const label = `alert “${a.title}” for patient ${a.patient_id}`;
    if (a.state === "open") {
      td.append(
        button("Acknowledge", `Acknowledge ${label}`, "acknowledge", () =>
          act(a, "acknowledge", {}),
        ),
      );
    }
    if (canAssign && a.state !== "resolved" && a.assigned_to !== myId) {
      td.append(
        button("Assign to me", `Assign to me: ${label}`, "assign", () =>
          act(a, "assign", { assignee: "me" }),
        ),
      );
    }
    if (a.state !== "resolved") {
      const resolve = document.createElement("a");
      resolve.href = patientHref(a);
      resolve.textContent = "Resolve…";
      resolve.dataset.field = "resolve";
      resolve.setAttribute("aria-label", `Resolve ${label} (opens the patient view)`);
      td.append(resolve);
    }
    return td;
  }

  function button(text, ariaLabel, field, onClick) {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = text;
    b.setAttribute("aria-label", ariaLabel);
    b.dataset.field = field;
    b.addEventListener("click", onClick);
    return b;
  }

  // --- acting -----------------------------------------------------------------------

  async function act(a, action, body) {
    focusAfterRender = { id: a.id, field: "link" };
    let response;
    try {
      response = await fetch(`/dashboard/alerts/${a.id}/${action}`, {
        method: "POST",
        headers: {
          "Content-Type": "application/json",
          Accept: "application/json",
          "X-CSRF-Token": csrfToken,
        },
        body: JSON.stringify(body),
        credentials: "same-origin",
      });
    } catch (error) {
      announce("The server could not be reached; nothing was changed.");
      return;
    }
    if (response.status === 401) {
      window.location.assign("/dashboard/sign-in?next=" + encodeURIComponent("/dashboard/"));
      return;
    }
    const result = await response.json().catch(() => ({}));
    if (!response.ok) {
      announce(result.detail || `The action failed (${response.status}).`);
      return;
    }
    const done = { acknowledge: "acknowledged", assign: "assigned" }[action] || "updated";
    announce(`Alert for patient ${a.patient_id} ${done}.`);
    load(); // the live stream will say so too; this makes it immediate
  }

  // A live update re-renders the rows: keyboard focus stays on the same control of the
  // same alert (or that alert's link, when the control is gone), never lost to the page.
  function focusedControl() {
    const active = document.activeElement;
    if (!active || !rows.contains(active) || !active.dataset.field) {
      return null;
    }
    return { id: active.closest("tr").dataset.alertId, field: active.dataset.field };
  }

  function restoreFocus(where) {
    if (!where) {
      return;
    }
    const tr = rows.querySelector(`tr[data-alert-id="${where.id}"]`);
    const target =
      tr && (tr.querySelector(`[data-field="${where.field}"]`) || tr.querySelector("a"));
    if (target) {
      target.focus();
    }
  }

  // --- small helpers ----------------------------------------------------------------

  function announce(text) {
    // Replacing the text of a polite live region makes screen readers read it out.
    announcer.textContent = "";
    window.setTimeout(() => {
      announcer.textContent = text;
    }, 50);
  }

  function capitalize(s) {
    return s ? s.charAt(0).toUpperCase() + s.slice(1) : s;
  }

  function ageText(iso) {
    const seconds = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
    if (seconds < 60) {
      return "just now";
    }
    const minutes = Math.floor(seconds / 60);
    if (minutes < 60) {
      return minutes + " min";
    }
    const hours = Math.floor(minutes / 60);
    if (hours < 48) {
      return hours + " h " + (minutes % 60) + " min";
    }
    return Math.floor(hours / 24) + " days";
  }

  function refreshAges() {
    for (const time of rows.querySelectorAll("time[datetime]")) {
      time.textContent = ageText(time.dateTime);
    }
  }

  // --- wiring -----------------------------------------------------------------------

  function filtersChanged() {
    const params = new URLSearchParams();
    if (programSelect.value) {
      params.set("program", programSelect.value);
    }
    if (stateSelect.value !== "active") {
      params.set("state", stateSelect.value);
    }
    const query = params.toString();
    window.history.replaceState(null, "", "/dashboard/" + (query ? "?" + query : ""));
    known = null; // a different list: nothing in it is "new"
    load();
  }

  function connect() {
    const stream = new EventSource("/api/alerts/stream");
    stream.addEventListener("open", () => {
      liveStatus.textContent = "Live: the queue updates by itself.";
      load(); // whatever changed while we were not connected
    });
    stream.addEventListener("alert", () => load());
    stream.addEventListener("error", () => {
      // EventSource reconnects by itself (the server asks for a 2 s retry).
      liveStatus.textContent = "Live updates interrupted; reconnecting…";
    });
  }

  document.documentElement.classList.add("js");
  filters.addEventListener("submit", (event) => {
    event.preventDefault();
    filtersChanged();
  });
  programSelect.addEventListener("change", filtersChanged);
  stateSelect.addEventListener("change", filtersChanged);
  window.setInterval(refreshAges, 30000);
  load();
  connect();
})();

// The patient page's timer: a running clock. The server's time_timers row is the state (a
// reload shows the same timer); the page is given the elapsed seconds as the server counted
// them, and this counts on from the moment the page loaded, so a wrong clock on the nurse's
// computer does not matter. Starting and stopping are plain forms (rpm/api/dashboard_time.py).
(function () {
  const clock = document.getElementById("timer-clock");
  if (!clock) {
    return; // no timer running
  }
  const elapsedAtLoad = Number(clock.dataset.elapsedS) || 0;
  const maxS = Number(clock.dataset.maxS) || Infinity;
  const limit = document.getElementById("timer-limit");
  const loadedAt = performance.now();

  function text(seconds) {
    const h = Math.floor(seconds / 3600);
    const m = Math.floor((seconds % 3600) / 60);
    const s = seconds % 60;
    const mm = h ? String(m).padStart(2, "0") : String(m);
    return (h ? h + ":" : "") + mm + ":" + String(s).padStart(2, "0");
  }

  function tick() {
    const seconds = elapsedAtLoad + Math.floor((performance.now() - loadedAt) / 1000);
    clock.textContent = text(seconds);
    if (limit) {
      limit.hidden = seconds <= maxS;
    }
  }

  tick();
  window.setInterval(tick, 1000);
})();

// The patient panel (docs/panel.md): the server renders the rows (GET /dashboard/panel,
// which reads GET /api/panel); this keeps them current. It listens to /api/panel/stream for
// the patients shown and, when one of them changes (a reading, an alert, a time entry),
// fetches this same page again, at most one fetch at a time and not more often than
// REFRESH_MS, and swaps the table body in place: no reload, focus kept where it was.
(function () {
  const REFRESH_MS = 500;
  const table = document.getElementById("panel");
  if (!table) {
    return; // not the panel page
  }
  const liveStatus = document.getElementById("live-status");
  const announcer = document.getElementById("announcer");
  const filters = document.getElementById("panel-filters");
  let stream = null;
  let watched = table.dataset.patients;
  let timer = null;
  let fetching = false;
  let again = false;
  let changed = new Set();

  function streamUrl() {
    const params = new URLSearchParams();
    for (const id of watched.split(" ").filter(Boolean)) {
      params.append("patient", id);
    }
    return "/api/panel/stream?" + params.toString();
  }

  function connect() {
    if (stream) {
      stream.close();
    }
    if (!watched) {
      liveStatus.textContent = "No patients shown: nothing to keep up to date.";
      return;
    }
    let opened = false;
    stream = new EventSource(streamUrl());
    stream.addEventListener("open", () => {
      liveStatus.textContent = "Live: rows update by themselves.";
      if (opened) {
        schedule(); // reconnected: whatever changed meanwhile
      }
      opened = true;
    });
    stream.addEventListener("changed", (event) => {
      const body = JSON.parse(event.data);
      for (const id of body.patients || []) {
        changed.add(id);
      }
      schedule();
    });
    stream.addEventListener("error", () => {
      liveStatus.textContent = "Live updates interrupted; reconnecting…";
    });
  }

  function schedule() {
    if (timer === null) {
      timer = window.setTimeout(() => {
        timer = null;
        refresh();
      }, REFRESH_MS);
    }
  }

  async function refresh() {
    if (fetching) {
      again = true;
      return;
    }
    fetching = true;
    try {
      do {
        again = false;
        const updated = changed;
        changed = new Set();
        const response = await fetch(window.location.href, {
          headers: { Accept: "text/html" },
          cache: "no-store",
          credentials: "same-origin",
        });
        if (response.status === 401) {
          window.location.assign(
            "/dashboard/sign-in?next=" + encodeURIComponent(window.location.pathname),
          );
          return;
        }
        if (!response.ok) {
          throw new Error("the panel answered " + response.status);
        }
        swap(new DOMParser().parseFromString(await response.text(), "text/html"), updated);
      } while (again);
    } catch (error) {
      liveStatus.textContent = "Could not update the panel (" + error.message + "); retrying.";
      window.setTimeout(schedule, 3000);
    } finally {
      fetching = false;
    }
  }

  function swap(fresh, updated) {
    const rows = document.getElementById("panel-rows");
    const newRows = fresh.getElementById("panel-rows");
    const newTable = fresh.getElementById("panel");
    if (!rows || !newRows || !newTable) {
      return;
    }
    const focused = document.activeElement;
    const where =
      focused && rows.contains(focused) && focused.closest("tr")
        ? focused.closest("tr").dataset.patientId
        : null;
    rows.replaceWith(newRows);
    for (const id of ["panel-summary"]) {
      const mine = document.getElementById(id);
      const theirs = fresh.getElementById(id);
      if (mine && theirs) {
        mine.replaceWith(theirs);
      }
    }
    const names = [];
    for (const tr of newRows.querySelectorAll("tr[data-patient-id]")) {
      if (updated.has(tr.dataset.patientId)) {
        tr.classList.add("updated");
        names.push(tr.dataset.patientId);
      }
    }
    if (where) {
      const link = newRows.querySelector(`tr[data-patient-id="${CSS.escape(where)}"] a`);
      if (link) {
        link.focus();
      }
    }
    if (names.length) {
      announce(`Updated: patient ${names.join(", ")}.`);
    }
    if (newTable.dataset.patients !== watched) {
      watched = newTable.dataset.patients; // other patients on the page now
      table.dataset.patients = watched;
      connect();
    }
  }

  function announce(text) {
    announcer.textContent = "";
    window.setTimeout(() => {
      announcer.textContent = text;
    }, 50);
  }

  // Filters apply as soon as they change (the form's button is for pages without script).
  document.documentElement.classList.add("js");
  for (const select of filters.querySelectorAll("select")) {
    select.addEventListener("change", () => filters.requestSubmit()); // back to page 1
  }
  connect();
})();
