// The live part of the Recent calls page, and the call-flow ladder.
//
// The list comes rendered from the server; api/call-events adds each call as
// it finishes (api/calls is polled every 2 s when the stream is unavailable).
// Clicking a call fetches api/ladder and draws one column per party and one
// arrow per message; clicking an arrow shows the message text. Everything a
// peer sent is put in the page with textContent only, never parsed as HTML.
"use strict";

(function () {
  const POLL_MS = 2000;
  const COLUMN = 230;
  const LEFT = 80;
  const TOP = 64;
  const ROW = 30;
  const SVG = "http://www.w3.org/2000/svg";

  const rows = document.getElementById("call-rows");
  const emptyBody = document.getElementById("empty");
  const template = document.getElementById("row-template");
  const filterInput = document.getElementById("filter");
  const statusBox = document.getElementById("status");
  const statusText = document.getElementById("status-text");
  const total = document.getElementById("call-total");
  const word = document.getElementById("call-word");
  const panel = document.getElementById("ladder-panel");
  const ladderBox = document.getElementById("ladder");
  const ladderTitle = document.getElementById("ladder-title");
  const ladderLine = document.getElementById("ladder-line");
  const messageText = document.getElementById("message-text");

  const calls = new Map(); // Call-ID -> call as in api/calls
  let selected = null;
  let source = null;
  let pollTimer = null;

  function setStatus(state, text) {
    statusBox.dataset.state = state;
    statusText.textContent = text;
  }

  function searchText(call) {
    const parts = [call.call_id, call.caller, call.callee];
    for (const record of call.records || []) {
      for (const b of record.branches || []) parts.push(b.target, b.aor || "");
    }
    return parts.join("\n").toLowerCase();
  }

  function fill(tr, call) {
    const set = (name, text) => (tr.querySelector('[data-field="' + name + '"]').textContent = text);
    tr.dataset.callId = call.call_id;
    set("started_at", (call.started_at || "").replace("T", " ").replace("Z", ""));
    set("method", call.method || "");
    set("caller", call.caller || "");
    set("callee", call.callee || "");
    const status = tr.querySelector('[data-field="status"]');
    status.textContent = call.status ? call.status + " " + (call.reason || "") : "in progress";
    status.dataset.status = call.status || "";
    set("setup", call.setup !== undefined ? call.setup + " s" : "");
    set("branches", String((call.branches || []).length));
    set("why", call.why || "");
    set("call_id", call.call_id);
  }

  function rowOf(callId) {
    for (const tr of rows.rows) if (tr.dataset.callId === callId) return tr;
    return null;
  }

  function upsert(call) {
    calls.set(call.call_id, call);
    let tr = rowOf(call.call_id);
    if (tr === null) {
      tr = template.content.firstElementChild.cloneNode(true);
      rows.insertBefore(tr, rows.firstChild);
    }
    fill(tr, call);
    applyFilter();
    if (selected === call.call_id) showLadder(call.call_id);
  }

  function replaceAll(list) {
    calls.clear();
    rows.replaceChildren();
    for (const call of list.slice().reverse()) upsert(call);
    applyFilter();
  }

  function applyFilter() {
    const needle = filterInput.value.trim().toLowerCase();
    let shown = 0;
    for (const tr of rows.rows) {
      const call = calls.get(tr.dataset.callId);
      const match = !needle || (call ? searchText(call) : tr.textContent.toLowerCase()).includes(needle);
      tr.hidden = !match;
      if (match) shown += 1;
    }
    total.textContent = String(shown);
    word.textContent = shown === 1 ? "call" : "calls";
    emptyBody.hidden = shown > 0;
  }

  // -- the ladder ------------------------------------------------------------

  function el(name, attributes, text) {
    const node = document.createElementNS(SVG, name);
    for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, String(value));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function shorten(uri) {
    // A URI's parameters make the column too wide; the full text is in the column's title.
    const bare = uri.split(";")[0];
    return bare.length > 30 ? bare.slice(0, 29) + "…" : bare;
  }

  function draw(ladder) {
    const parties = ladder.parties;
    const width = LEFT + COLUMN * Math.max(parties.length, 2);
    const height = TOP + ROW * (ladder.messages.length + 1);
    const svg = el("svg", { width: width, height: height, viewBox: "0 0 " + width + " " + height, role: "img" });
    const x = (i) => LEFT + COLUMN * i + COLUMN / 2;
    parties.forEach((party, i) => {
      const head = el("g", { class: "head" });
      head.appendChild(el("title", {}, [party.role, party.name, party.address].filter(Boolean).join("\n")));
      head.appendChild(el("text", { x: x(i), y: 14, "text-anchor": "middle", class: "party" }, party.role));
      head.appendChild(el("text", { x: x(i), y: 28, "text-anchor": "middle", class: "name" }, shorten(party.name)));
      head.appendChild(el("text", { x: x(i), y: 42, "text-anchor": "middle", class: "address" }, party.address));
      svg.appendChild(head);
      svg.appendChild(el("line", { x1: x(i), y1: 48, x2: x(i), y2: height, class: "lifeline" }));
    });
    ladder.messages.forEach((message, i) => {
      const y = TOP + ROW * (i + 1) - 8;
      const x1 = x(message.from);
      const x2 = x(message.to);
      const dir = x2 > x1 ? 1 : -1;
      const group = el("g", { class: "arrow" + (message.retransmission ? " retransmission" : ""), tabindex: 0 });
      group.dataset.index = String(i);
      group.appendChild(el("title", {}, message.label + (message.retransmission ? " (retransmission)" : "")));
      group.appendChild(el("line", { x1: x1, y1: y, x2: x2 - dir * 7, y2: y }));
      group.appendChild(el("line", { x1: x1, y1: y, x2: x2, y2: y, class: "hit" }));
      group.appendChild(el("polygon", { points: [x2, y, x2 - dir * 8, y - 4, x2 - dir * 8, y + 4].join(" ") }));
      const label = message.label + (message.retransmission ? "  ↻ retransmission" : "");
      group.appendChild(el("text", { x: (x1 + x2) / 2, y: y - 5, "text-anchor": "middle", class: "label" }, label));
      svg.appendChild(el("text", { x: 4, y: y + 4, class: "time" }, "+" + message.time.toFixed(3) + " s"));
      group.addEventListener("click", () => showMessage(ladder, i, group));
      group.addEventListener("keydown", (event) => {
        if (event.key === "Enter") showMessage(ladder, i, group);
      });
      svg.appendChild(group);
    });
    ladderBox.replaceChildren(svg);
  }

  function showMessage(ladder, i, group) {
    for (const other of ladderBox.querySelectorAll(".arrow.selected")) other.classList.remove("selected");
    group.classList.add("selected");
    messageText.textContent = ladder.messages[i].text;
    messageText.hidden = false;
  }

  async function showLadder(callId) {
    selected = callId;
    for (const tr of rows.rows) tr.classList.toggle("selected", tr.dataset.callId === callId);
    try {
      const response = await fetch("api/ladder?call_id=" + encodeURIComponent(callId), { cache: "no-store" });
      const data = await response.json();
      if (selected !== callId) return;
      panel.hidden = false;
      ladderTitle.textContent = callId;
      if (!response.ok) {
        ladderLine.textContent = data.error || "HTTP " + response.status;
        ladderBox.replaceChildren();
        return;
      }
      const lines = (data.call.records || []).map((r) => r.line);
      if (data.ladder.dropped) lines.push(data.ladder.dropped + " later messages not kept (per-call limit)");
      if (!data.ladder.messages.length) lines.push("No messages kept for this call (--recent-calls-bytes 0, or over the budget).");
      ladderLine.textContent = lines.join("\n");
      messageText.hidden = true;
      draw(data.ladder);
    } catch (error) {
      ladderLine.textContent = "Could not load the call flow: " + error;
    }
  }

  rows.addEventListener("click", (event) => {
    const tr = event.target.closest("tr.call");
    if (tr) showLadder(tr.dataset.callId);
  });
  rows.addEventListener("keydown", (event) => {
    const tr = event.target.closest("tr.call");
    if (tr && event.key === "Enter") showLadder(tr.dataset.callId);
  });

  // -- routing explain -----------------------------------------------------------

  const routeForm = document.getElementById("route-form");
  const routeResult = document.getElementById("route-result");
  const routeSteps = document.getElementById("route-steps");

  function html(name, className, text) {
    const node = document.createElement(name);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  async function explain(event) {
    event.preventDefault();
    const query = new URLSearchParams({
      uri: document.getElementById("route-uri").value,
      from: document.getElementById("route-from").value,
      method: document.getElementById("route-method").value,
    });
    try {
      const response = await fetch("api/route?" + query, { cache: "no-store" });
      const data = await response.json();
      routeSteps.replaceChildren();
      if (!response.ok) {
        routeResult.textContent = data.error || "HTTP " + response.status;
        return;
      }
      routeResult.textContent = data.result;
      for (const step of data.steps) {
        const li = html("li");
        li.appendChild(html("span", "section", step.section));
        li.appendChild(html("strong", "", step.title));
        li.appendChild(html("span", "outcome", step.outcome));
        const details = html("ul");
        for (const line of step.details) details.appendChild(html("li", "", line));
        li.appendChild(details);
        routeSteps.appendChild(li);
      }
    } catch (error) {
      routeResult.textContent = "Could not explain: " + error;
    }
  }

  routeForm.addEventListener("submit", explain);

  // -- live updates ------------------------------------------------------------

  async function poll() {
    try {
      const response = await fetch("api/calls", { cache: "no-store" });
      if (!response.ok) throw new Error("HTTP " + response.status);
      const data = await response.json();
      replaceAll(data.calls);
      if (source === null || source.readyState !== EventSource.OPEN) setStatus("polling", "polling every 2 s");
    } catch (error) {
      setStatus("offline", "server unreachable, retrying");
    }
  }

  function connect() {
    source = new EventSource("api/call-events");
    source.addEventListener("open", () => {
      if (pollTimer !== null) clearInterval(pollTimer);
      pollTimer = null;
      setStatus("live", "live");
      poll(); // what finished while the stream was down
    });
    source.addEventListener("call", (event) => {
      upsert(JSON.parse(event.data));
      setStatus("live", "live");
    });
    source.addEventListener("error", () => {
      if (pollTimer === null) pollTimer = setInterval(poll, POLL_MS);
    });
  }

  filterInput.addEventListener("input", applyFilter);
  document.addEventListener("keydown", (event) => {
    if (event.key === "/" && document.activeElement !== filterInput) {
      event.preventDefault();
      filterInput.focus();
    }
  });
  if (document.body.dataset.enabled === "true") {
    poll();
    connect();
  } else {
    setStatus("offline", "recent calls are off");
  }
})();
