// The live part of the bindings page.
//
// The server sends a snapshot of every binding and then one event per change
// over Server-Sent Events (api/events); when that is unavailable the page
// polls api/bindings every second. Rows are cloned from the <template>
// elements of bindings.html and filled with textContent only: nothing a phone
// sent is ever parsed as HTML.
"use strict";

(function () {
  const POLL_MS = 1000;
  const SSE_RETRY_MS = 30000;
  const RENDER_DELAY_MS = 50;
  const MAX_GROUP_UPDATES = 200; // more changed AORs than this at once: rebuild the whole table
  const SOON_S = 30;
  const MESSAGE_MS = 20000;

  const body = document.body;
  const canRemove = body.dataset.canRemove === "true";
  const table = document.getElementById("bindings");
  const emptyBody = document.getElementById("empty");
  const noMatchBody = document.getElementById("no-match");
  const aorTemplate = document.getElementById("aor-template");
  const rowTemplate = document.getElementById("row-template");
  const filterInput = document.getElementById("filter");
  const statusBox = document.getElementById("status");
  const statusText = document.getElementById("status-text");
  const messageBox = document.getElementById("message");

  // aor -> contact -> {b: binding as in the JSON API, deadline: monotonic seconds}
  const model = new Map();
  // aor -> {tbody, rows: [{tr, record, cell, search}]}
  const groups = new Map();
  const dirty = new Set();
  let renderAll = true;
  let renderTimer = null;
  let lastChange = null;

  // -- formatting (same as sipproxy/web/render.py) -------------------------

  function monotonic() {
    return performance.now() / 1000;
  }

  function pad2(n) {
    return n < 10 ? "0" + n : String(n);
  }

  function duration(seconds) {
    seconds = Math.max(0, Math.floor(seconds));
    const hours = Math.floor(seconds / 3600);
    const minutes = Math.floor((seconds % 3600) / 60);
    const secs = seconds % 60;
    if (hours) return hours + " h " + pad2(minutes) + " min " + pad2(secs) + " s";
    if (minutes) return minutes + " min " + pad2(secs) + " s";
    return secs + " s";
  }

  function utc(iso) {
    return iso ? iso.replace("T", " ").replace("Z", " UTC") : "";
  }

  function instanceText(b) {
    if (!b.instance) return "";
    return b.reg_id === null || b.reg_id === undefined ? b.instance : b.instance + " · reg-id " + b.reg_id;
  }

  const FIELDS = {
    contact: (b) => b.contact,
    instance: instanceText,
    q: (b) => String(b.q),
    call_id: (b) => b.call_id,
    cseq: (b) => String(b.cseq),
    user_agent: (b) => b.user_agent,
    source: (b) => b.source,
    flow: (b) => (b.flow ? "flow " + b.flow : ""),
    registered_at: (b) => utc(b.registered_at),
    refreshed_at: (b) => utc(b.refreshed_at),
    path: (b) => b.path.join("\n"),
  };

  function remaining(record) {
    return Math.max(0, Math.ceil(record.deadline - monotonic() - 1e-6));
  }

  // -- the model ---------------------------------------------------------

  function put(b) {
    let contacts = model.get(b.aor);
    if (!contacts) {
      contacts = new Map();
      model.set(b.aor, contacts);
    }
    contacts.set(b.contact, { b: b, deadline: monotonic() + b.expires_in });
    dirty.add(b.aor);
  }

  function drop(b) {
    const contacts = model.get(b.aor);
    if (contacts && contacts.delete(b.contact) && contacts.size === 0) model.delete(b.aor);
    dirty.add(b.aor);
  }

  function replaceAll(bindings) {
    model.clear();
    bindings.forEach(put);
    dirty.clear();
    renderAll = true;
    schedule();
  }

  function applyEvent(event) {
    if (event.kind === "added" || event.kind === "refreshed") put(event.binding);
    else drop(event.binding);
    lastChange = new Date();
    schedule();
  }

  // -- rendering ---------------------------------------------------------

  function schedule() {
    if (renderTimer === null) renderTimer = setTimeout(render, RENDER_DELAY_MS);
  }

  function compareText(a, b) {
    return a < b ? -1 : a > b ? 1 : 0;
  }

  function lookupOrder(x, y) {
    // As LocationStore.lookup: highest q first, then most recently refreshed, then contact.
    return y.b.q - x.b.q || compareText(y.b.refreshed_at, x.b.refreshed_at) || compareText(x.b.contact, y.b.contact);
  }

  function render() {
    renderTimer = null;
    if (dirty.size > MAX_GROUP_UPDATES) renderAll = true;
    if (renderAll) {
      renderAll = false;
      table.querySelectorAll("tbody.aor-group").forEach((tbody) => tbody.remove());
      groups.clear();
      Array.from(model.keys()).sort(compareText).forEach(renderGroup);
    } else {
      dirty.forEach(renderGroup);
    }
    dirty.clear();
    renderTotals();
    applyFilter();
    tick();
  }

  function renderGroup(aor) {
    const old = groups.get(aor);
    const contacts = model.get(aor);
    if (!contacts) {
      if (old) old.tbody.remove();
      groups.delete(aor);
      return;
    }
    const group = buildGroup(aor, contacts);
    if (old) {
      old.tbody.replaceWith(group.tbody);
    } else {
      table.insertBefore(group.tbody, nextGroupAfter(aor));
    }
    groups.set(aor, group);
  }

  function nextGroupAfter(aor) {
    let next = null;
    groups.forEach((group, other) => {
      if (other > aor && (next === null || other < next.aor)) next = { aor: other, tbody: group.tbody };
    });
    return next ? next.tbody : emptyBody;
  }

  function buildGroup(aor, contacts) {
    const tbody = aorTemplate.content.firstElementChild.cloneNode(true);
    tbody.dataset.aor = aor;
    tbody.querySelector('[data-field="aor"]').textContent = aor;
    const history = tbody.querySelector('[data-field="history"]');
    if (history) history.setAttribute("href", "history?aor=" + encodeURIComponent(aor));
    tbody.querySelector('[data-field="aor-count"]').textContent =
      contacts.size + (contacts.size === 1 ? " contact" : " contacts");
    const removeAll = tbody.querySelector(".remove-aor");
    if (removeAll) removeAll.addEventListener("click", () => removeBindings(aor, null, contacts.size));
    const rows = Array.from(contacts.values())
      .sort(lookupOrder)
      .map((record) => buildRow(record));
    rows.forEach((row) => tbody.appendChild(row.tr));
    return { tbody: tbody, rows: rows, search: aor.toLowerCase() };
  }

  function buildRow(record) {
    const b = record.b;
    const tr = rowTemplate.content.firstElementChild.cloneNode(true);
    tr.dataset.contact = b.contact;
    Object.keys(FIELDS).forEach((field) => {
      const cell = tr.querySelector('[data-field="' + field + '"]');
      if (cell) cell.textContent = FIELDS[field](b);
    });
    const cell = tr.querySelector('[data-field="expires"]');
    cell.title = "expires " + utc(b.expires_at);
    const remove = tr.querySelector(".remove-contact");
    if (remove) remove.addEventListener("click", () => removeBindings(b.aor, b.contact, 1));
    const search = [b.contact, b.user_agent].join("\n").toLowerCase();
    return { tr: tr, record: record, cell: cell, search: search };
  }

  function plural(n, word) {
    return n === 1 ? word : word + "s";
  }

  function renderTotals() {
    let total = 0;
    model.forEach((contacts) => (total += contacts.size));
    document.getElementById("aor-total").textContent = String(model.size);
    document.getElementById("aor-word").textContent = plural(model.size, "AOR");
    document.getElementById("binding-total").textContent = String(total);
    document.getElementById("binding-word").textContent = plural(total, "binding");
    emptyBody.hidden = model.size !== 0;
  }

  function tick() {
    groups.forEach((group) => {
      group.rows.forEach((row) => {
        const left = remaining(row.record);
        const text = duration(left);
        if (row.cell.textContent !== text) row.cell.textContent = text;
        row.cell.dataset.expiresIn = String(left);
        row.tr.classList.toggle("soon", left > 0 && left <= SOON_S);
        row.tr.classList.toggle("gone", left === 0);
      });
    });
  }

  // -- filter ------------------------------------------------------------

  function applyFilter() {
    const query = filterInput.value.trim().toLowerCase();
    let shownRows = 0;
    let total = 0;
    groups.forEach((group) => {
      const aorMatches = group.search.includes(query);
      let visible = 0;
      group.rows.forEach((row) => {
        const show = aorMatches || row.search.includes(query);
        row.tr.hidden = !show;
        if (show) visible += 1;
      });
      group.tbody.hidden = visible === 0;
      shownRows += visible;
      total += group.rows.length;
    });
    const shown = document.getElementById("shown");
    shown.hidden = query === "";
    shown.textContent = query === "" ? "" : "(" + shownRows + " shown)";
    noMatchBody.hidden = query === "" || shownRows !== 0 || total === 0;
  }

  // -- connection --------------------------------------------------------

  let source = null;
  let pollTimer = null;
  let polling = false;

  function setStatus(state, text) {
    statusBox.dataset.state = state;
    const when = lastChange ? " · last change " + lastChange.toISOString().slice(11, 19) + " UTC" : "";
    statusText.textContent = text + when;
  }

  function connect() {
    if (!("EventSource" in window)) {
      startPolling();
      return;
    }
    setStatus("connecting", "connecting…");
    source = new EventSource("api/events");
    source.addEventListener("snapshot", (event) => {
      stopPolling();
      replaceAll(JSON.parse(event.data).bindings);
      setStatus("live", "live");
    });
    source.addEventListener("binding", (event) => {
      applyEvent(JSON.parse(event.data));
      setStatus("live", "live");
    });
    source.addEventListener("error", () => {
      // The browser reconnects by itself unless the stream is CLOSED; poll meanwhile.
      startPolling();
      if (source.readyState === EventSource.CLOSED) {
        source = null;
        setTimeout(connect, SSE_RETRY_MS);
      }
    });
  }

  function startPolling() {
    if (pollTimer !== null) return;
    pollTimer = setInterval(poll, POLL_MS);
    poll();
  }

  function stopPolling() {
    if (pollTimer === null) return;
    clearInterval(pollTimer);
    pollTimer = null;
  }

  async function poll() {
    if (polling) return;
    polling = true;
    try {
      const response = await fetch("api/bindings", { cache: "no-store" });
      if (!response.ok) throw new Error("HTTP " + response.status);
      const data = await response.json();
      if (pollTimer === null && source !== null && source.readyState === EventSource.OPEN) return;
      replaceAll(data.bindings);
      setStatus("polling", "polling every second");
    } catch (error) {
      setStatus("offline", "server unreachable, retrying");
    } finally {
      polling = false;
    }
  }

  // -- removal -----------------------------------------------------------

  let messageTimer = null;

  function showMessage(text, isError) {
    messageBox.textContent = text;
    messageBox.classList.toggle("error", Boolean(isError));
    clearTimeout(messageTimer);
    messageTimer = setTimeout(() => (messageBox.textContent = ""), MESSAGE_MS);
  }

  async function removeBindings(aor, contact, count) {
    const what = contact === null ? "all " + count + " " + plural(count, "binding") + " of " + aor : contact + " of " + aor;
    if (!window.confirm("Remove " + what + "?\n\nThe phone registers again at its next refresh.")) return;
    let url = "api/bindings/" + encodeURIComponent(aor);
    if (contact !== null) url += "?contact=" + encodeURIComponent(contact);
    try {
      const response = await fetch(url, { method: "DELETE", credentials: "same-origin", cache: "no-store" });
      const data = await response.json().catch(() => ({}));
      if (response.ok) {
        showMessage("Removed " + data.removed + " " + plural(data.removed, "binding") + " of " + aor + ".", false);
        if (pollTimer !== null) poll();
      } else {
        showMessage("Not removed: " + (data.error || "HTTP " + response.status), true);
      }
    } catch (error) {
      showMessage("Not removed: " + error, true);
    }
  }

  // -- start -------------------------------------------------------------

  filterInput.addEventListener("input", applyFilter);
  document.addEventListener("keydown", (event) => {
    if (event.key === "/" && document.activeElement !== filterInput) {
      event.preventDefault();
      filterInput.focus();
    } else if (event.key === "Escape" && document.activeElement === filterInput) {
      filterInput.value = "";
      applyFilter();
    }
  });
  if (!canRemove) body.classList.add("read-only");
  setInterval(tick, 1000);
  connect();
})();
