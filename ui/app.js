// chorus console — plain JavaScript, no build step, no outside requests.
//
// The admin token lives in sessionStorage (this tab only, gone when it
// closes) and leaves only as the Authorization header of fetches to this
// server; it is never put in a URL. Pages are chosen by the URL's fragment
// (#/runs, #/run/ID, #/dlq, ...), which the browser never sends. Every value
// from the server is written with textContent, never parsed as HTML.
"use strict";

(function () {
  const TOKEN_KEY = "chorus.admin_token";
  const LIVE_MS = 2000;
  const PAGE_SIZE = 50;
  const $ = (id) => document.getElementById(id);

  let timer = null; // the current page's live refresh
  let generation = 0; // bumped on each page change: late answers of the last page are dropped

  // ---- small DOM helpers ---------------------------------------------------------

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children) {
      if (c === undefined || c === null || c === false) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  function say(text, isError) {
    const s = $("status");
    s.textContent = text || "";
    s.classList.toggle("error", !!isError);
  }

  function badge(value) {
    return el("span", { class: "badge " + String(value || "").replace(/[^a-z_]/g, ""), text: value || "—" });
  }

  function pad(n, w) { return String(n).padStart(w || 2, "0"); }

  // A time from the server (unix seconds, or a string) in local time.
  function fmtTime(t) {
    if (t === undefined || t === null || t === "") return "—";
    if (typeof t === "string") {
      if (!/^\d+(\.\d+)?$/.test(t)) return t;
      t = Number(t);
    }
    const d = new Date(t * 1000);
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
      `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
  }

  function seconds(t) {
    if (typeof t === "number") return t;
    if (typeof t === "string" && /^\d+(\.\d+)?$/.test(t)) return Number(t);
    if (typeof t === "string") { const ms = Date.parse(t); return isNaN(ms) ? null : ms / 1000; }
    return null;
  }

  function fmtDuration(s) {
    if (typeof s !== "number" || !isFinite(s)) return "—";
    if (s < 1) return `${Math.round(s * 1000)} ms`;
    if (s < 120) return `${s.toFixed(2)} s`;
    return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
  }

  function fmtValue(v) {
    if (v === undefined || v === null) return "—";
    if (typeof v === "object") return JSON.stringify(v);
    return String(v);
  }

  function pretty(v) {
    return v === undefined ? "—" : JSON.stringify(v, null, 2);
  }

  function emptyRow(tbody, cols, text) {
    tbody.replaceChildren(el("tr", {}, el("td", { class: "empty", colspan: cols, text })));
  }

  // ---- the API -------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, body) {
      const detail = body && typeof body === "object" ? (body.detail || body.title) : body;
      super(`${status}${detail ? ": " + detail : ""}`);
      this.status = status;
      this.body = body;
    }
  }

  function token() { return sessionStorage.getItem(TOKEN_KEY); }

  async function request(method, path, body, tok) {
    const headers = { Authorization: "Bearer " + tok, Accept: "application/json" };
    const opts = { method, headers, cache: "no-store", credentials: "omit", referrerPolicy: "no-referrer" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(body);
    }
    const r = await fetch(path, opts);
    const text = await r.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (e) { data = text; }
    if (!r.ok) throw new ApiError(r.status, data);
    return data;
  }

  // A request with the signed-in token; a 401 signs out (the token changed).
  async function api(method, path, body) {
    const tok = token();
    if (!tok) {
      signOut("Sign in to continue.");
      throw new ApiError(401, "not signed in");
    }
    try {
      return await request(method, path, body, tok);
    } catch (e) {
      if (e.status === 401) signOut("The server refused the token: sign in again.");
      throw e;
    }
  }

  // ---- signing in and out ------------------------------------------------------------

  async function signIn(ev) {
    ev.preventDefault();
    const input = $("token");
    const err = $("signin-error");
    const tok = input.value.trim();
    err.textContent = "";
    if (!tok) {
      err.textContent = "Enter the admin token.";
      input.focus();
      return;
    }
    try {
      await request("GET", "/admin/breakers", undefined, tok); // any admin read checks the token
    } catch (e) {
      err.textContent = e.status === 401 ? "The server refused this token."
        : e.status === 403 ? "The server's admin endpoints are off: set admin_token in its config file."
          : `The server did not answer as expected (${e.message}).`;
      input.select();
      input.focus();
      return;
    }
    sessionStorage.setItem(TOKEN_KEY, tok);
    input.value = "";
    say("Signed in.");
    if (!location.hash || location.hash === "#" || location.hash === "#/signin") location.hash = "#/runs";
    else render();
  }

  function signOut(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    stopLive();
    generation++;
    // nothing the last page showed stays in the document
    for (const tb of document.querySelectorAll("table.grid tbody")) tb.replaceChildren();
    for (const id of ["timeline", "run-facts", "run-actions"]) $(id).replaceChildren();
    delete $("run-actions").dataset.for;
    $("run-input").textContent = "";
    $("run-outcome").textContent = "";
    showSignIn();
    say(message || "Signed out.");
  }

  function showSignIn() {
    for (const p of document.querySelectorAll(".page")) p.hidden = true;
    $("nav").hidden = true;
    $("signout").hidden = true;
    $("signin").hidden = false;
    $("token").focus();
  }

  // ---- routing ------------------------------------------------------------------------

  function parseHash() {
    const h = location.hash.replace(/^#\/?/, "");
    const [path, query] = h.split("?");
    const parts = path.split("/").map(decodeURIComponent);
    return { page: parts[0] || "runs", arg: parts[1], params: new URLSearchParams(query || "") };
  }

  function stopLive() {
    if (timer) clearInterval(timer);
    timer = null;
  }

  function live(fn) {
    stopLive();
    timer = setInterval(fn, LIVE_MS);
  }

  const PAGES = { runs: showRuns, run: showRun, dlq: showDlq, outbox: showOutbox, breakers: showBreakers,
    schedules: showSchedules };

  function render() {
    stopLive();
    generation++;
    if (!token()) {
      showSignIn();
      return;
    }
    const { page, arg, params } = parseHash();
    const show = PAGES[page] || showRuns;
    const id = PAGES[page] ? page : "runs";
    $("signin").hidden = true;
    $("nav").hidden = false;
    $("signout").hidden = false;
    for (const p of document.querySelectorAll(".page")) p.hidden = p.id !== "page-" + id;
    for (const a of document.querySelectorAll("#nav a")) {
      const here = a.dataset.page === (id === "run" ? "runs" : id);
      if (here) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
    }
    show(arg, params, generation);
  }

  // A loader run now and, when live, every LIVE_MS; errors are said, not thrown.
  function load(fn, gen, isLive) {
    const once = async () => {
      try {
        await fn(gen);
      } catch (e) {
        if (gen === generation && e.status !== 401) say(`Could not load: ${e.message}`, true);
      }
    };
    once();
    if (isLive) live(once);
  }

  // ---- runs ---------------------------------------------------------------------------

  let runsCursor = null;

  function runsQuery(params, cursor, limit) {
    const q = new URLSearchParams();
    for (const name of ["workflow", "status", "key"]) {
      const v = params.get(name);
      if (v) q.set(name, v);
    }
    const since = Number(params.get("since"));
    if (since > 0) q.set("since", String(Math.floor(Date.now() / 1000 - since)));
    q.set("limit", String(limit || PAGE_SIZE));
    if (cursor) q.set("cursor", cursor);
    return "/admin/runs?" + q.toString();
  }

  function runRow(r) {
    const started = seconds(r.started_at);
    const finished = seconds(r.finished_at);
    const took = started !== null && finished !== null ? finished - started : null;
    return el("tr", { "data-run": r.id },
      el("td", { class: "mono" }, el("a", { href: "#/run/" + encodeURIComponent(r.id), text: r.id })),
      el("td", { text: r.workflow || "—" }),
      el("td", {}, badge(r.status)),
      el("td", { text: fmtTime(r.started_at) }),
      el("td", { text: r.status === "running" ? "running" : fmtDuration(took) }),
      el("td", { class: "wrap mono", text: r.key || "" }),
      el("td", { text: r.error_kind || "" }));
  }

  function showRuns(_, params, gen) {
    const form = $("runs-filter");
    form.workflow.value = params.get("workflow") || "";
    form.status.value = params.get("status") || "";
    form.since.value = params.get("since") || "";
    form.key.value = params.get("key") || "";
    form.live.checked = params.get("live") !== "0";
    const tbody = $("runs-table").querySelector("tbody");
    let shown = 0;
    const fetchPage = async (g, append) => {
      // a live refresh reads again as many runs as are shown
      const limit = append ? PAGE_SIZE : Math.min(1000, Math.max(PAGE_SIZE, shown));
      let data;
      try {
        data = await api("GET", runsQuery(params, append ? runsCursor : null, limit));
      } catch (e) {
        if (e.status === 404) {
          $("runs-note").textContent = "This server has no runs listing (GET /admin/runs); open a run by its id.";
          emptyRow(tbody, 7, "No listing available.");
          stopLive();
          return;
        }
        throw e;
      }
      if (g !== generation) return;
      const focused = document.activeElement && document.activeElement.closest("tr[data-run]");
      const focusId = focused && focused.dataset.run;
      const rows = (data.runs || []).map(runRow);
      if (append) tbody.append(...rows);
      else if (rows.length) tbody.replaceChildren(...rows);
      else emptyRow(tbody, 7, "No runs match these filters.");
      shown = append ? shown + rows.length : rows.length;
      runsCursor = data.next_cursor || null;
      $("runs-more").hidden = !runsCursor;
      $("runs-note").textContent = `${shown} run${shown === 1 ? "" : "s"} shown` +
        (form.live.checked ? " · updating live" : "") + ` · read ${new Date().toLocaleTimeString()}`;
      if (focusId) {
        const again = tbody.querySelector(`tr[data-run="${CSS.escape(focusId)}"] a`);
        if (again) again.focus();
      }
    };
    $("runs-more").onclick = () => load((g) => fetchPage(g, true), generation, false);
    load((g) => fetchPage(g, false), gen, form.live.checked);
  }

  function applyFilters(ev) {
    ev.preventDefault();
    const form = $("runs-filter");
    const q = new URLSearchParams();
    for (const name of ["workflow", "status", "since", "key"]) {
      const v = form[name].value.trim();
      if (v) q.set(name, v);
    }
    if (!form.live.checked) q.set("live", "0");
    const hash = "#/runs" + (q.toString() ? "?" + q.toString() : "");
    if (location.hash === hash) render(); else location.hash = hash;
  }

  function openRun(ev) {
    ev.preventDefault();
    const id = $("run-id").value.trim();
    if (id) location.hash = "#/run/" + encodeURIComponent(id);
  }

  // ---- one run ------------------------------------------------------------------------

  function fact(dl, name, value) {
    if (value === undefined || value === null || value === "") return;
    dl.append(el("dt", { text: name }), el("dd", {}, value));
  }

  const FINISHED_REDRIVABLE = { failed: true, timed_out: true, cancelled: true };

  function showRun(id, _, gen) {
    $("run-title").textContent = "Run " + (id || "");
    $("timeline").replaceChildren();
    $("run-facts").replaceChildren();
    $("run-actions").replaceChildren();
    delete $("run-actions").dataset.for;
    const fetchRun = async (g) => {
      let rec;
      try {
        rec = await api("GET", "/runs/" + encodeURIComponent(id));
      } catch (e) {
        if (e.status === 404 && g === generation) {
          stopLive();
          $("run-facts").replaceChildren();
          $("timeline").replaceChildren(el("li", { class: "empty", text: `No run with id ${id}.` }));
          say(`No run with id ${id}.`, true);
          return;
        }
        throw e;
      }
      if (g !== generation) return;
      renderRun(rec);
      const pending = (rec.enqueued || []).some((e) => e.state === "pending");
      if (rec.status !== "running" && !pending) stopLive();
    };
    load(fetchRun, gen, true);
  }

  function renderRun(rec) {
    $("run-title").textContent = `Run of ${rec.workflow || "?"}`;
    const dl = $("run-facts");
    dl.replaceChildren();
    fact(dl, "Id", el("span", { class: "mono", text: rec.id }));
    fact(dl, "Status", badge(rec.status));
    fact(dl, "Started", fmtTime(rec.started));
    fact(dl, "Finished", rec.finished ? fmtTime(rec.finished) : "—");
    fact(dl, "Duration", rec.duration !== undefined ? fmtDuration(rec.duration) : "—");
    fact(dl, "Trace id", rec.trace_id && el("span", { class: "mono", text: rec.trace_id }));
    fact(dl, "Version", rec.version && el("span", { class: "mono", text: String(rec.version) }));
    fact(dl, "Key", rec.key);
    if (rec.parent) {
      fact(dl, "Parent run", el("a", { href: "#/run/" + encodeURIComponent(rec.parent), class: "mono",
        text: rec.parent }));
    }
    if (rec.error) fact(dl, "Error", `${rec.error.kind || "error"}: ${rec.error.message || fmtValue(rec.error)}`);
    if (rec.cancel) fact(dl, "Cancelled", `${fmtTime(rec.cancel.at)} via ${rec.cancel.via || "?"}`);
    if (rec.timeline_dropped) fact(dl, "Timeline", `${rec.timeline_dropped} entries not kept`);
    renderActions(rec);
    renderTimeline(rec);
    $("run-input").textContent = pretty(rec.input);
    if (rec.error) {
      $("run-outcome-title").textContent = "Error";
      $("run-outcome").textContent = pretty(rec.error);
    } else {
      $("run-outcome-title").textContent = "Result";
      $("run-outcome").textContent = rec.status === "running" ? "(running)" : pretty(rec.result);
    }
    renderEnqueued(rec.enqueued || []);
  }

  function renderActions(rec) {
    const box = $("run-actions");
    if (box.dataset.for === rec.id + rec.status) return; // unchanged: keep focus where it is
    box.dataset.for = rec.id + rec.status;
    box.replaceChildren();
    if (FINISHED_REDRIVABLE[rec.status]) {
      box.append(el("button", { type: "button", class: "quiet", id: "redrive", text: "Redrive this run",
        onclick: () => act("POST", `/admin/runs/${encodeURIComponent(rec.id)}/redrive`,
          `Redrive run ${rec.id}? It runs again from its journal.`, "Redrive started.", render) }));
    }
    if (rec.status === "running") {
      box.append(el("button", { type: "button", class: "danger", id: "cancel", text: "Cancel this run",
        onclick: () => act("DELETE", `/runs/${encodeURIComponent(rec.id)}`, `Cancel run ${rec.id}?`,
          "Cancel requested.", render) }));
    }
  }

  // What one timeline entry is: { kind, label, link, segments: [[from, to, class]], mark }.
  function describe(e, index, all) {
    if (e.kind === "resumed") {
      return { kind: "resumed", label: `after a restart (${e.replayed || 0} effects replayed)`, mark: e.at };
    }
    if (e.kind === "lock") {
      const waited = e.waited || 0;
      const segs = [[e.start, e.start + waited, "wait"]];
      if (typeof e.held === "number") segs.push([e.start + waited, e.start + waited + e.held, "hold"]);
      return { kind: "lock", label: `${e.lock} (waited ${fmtDuration(waited)}` +
        (typeof e.held === "number" ? `, held ${fmtDuration(e.held)})` : ", still held)"), segments: segs };
    }
    if (e.url) {
      const same = all.filter((o, i) => i < index && o.url === e.url && o.method === e.method).length;
      const retried = all.some((o, i) => i > index && o.url === e.url && o.method === e.method);
      const ok = typeof e.status === "number" && e.status >= 200 && e.status < 400;
      const cls = !ok && retried ? "warn" : ok ? (retried ? "warn" : "ok")
        : typeof e.status === "number" && e.status < 500 ? "warn" : "bad";
      const outcome = typeof e.status === "number" ? e.status : (e.status || "no answer");
      return { kind: "http", label: `${e.method || "GET"} ${e.url} → ${outcome}` +
        (same ? ` (attempt ${same + 1})` : ""), segments: [[e.start, e.start + (e.duration || 0), cls]] };
    }
    if (e.step) {
      return { kind: "step", label: `${e.step} (${e.status || "running"})`,
        segments: [[e.start, e.start + (e.duration || 0), e.status === "error" ? "bad" : "plain"]] };
    }
    if (e.kind === "child") {
      return { kind: "child", label: `${e.workflow || "run"} → ${e.status || "running"}` +
        (e.error_kind ? ` (${e.error_kind})` : ""),
        link: e.run_id && "#/run/" + encodeURIComponent(e.run_id),
        segments: [[e.start, e.start + (e.duration || 0),
          e.status === "succeeded" ? "ok" : e.status && e.status !== "running" ? "bad" : "plain"]] };
    }
    if (e.kind === "sleep") {
      return { kind: "sleep", label: (e.poll ? `before poll ${e.poll}, ` : "") + `for ${fmtDuration(e.duration)}`,
        segments: [[e.start, e.start + (e.duration || 0), "wait"]] };
    }
    if (e.kind === "event") {
      const what = `${e.event || "event"}${e.key ? "/" + e.key : ""}`;
      return { kind: "event", label: `${what} (${e.outcome || (e.waited !== undefined ? "came" : "waiting")})`,
        segments: [[e.start, e.start + (e.waited || e.duration || 0), e.outcome === "timeout" ? "bad" : "wait"]] };
    }
    const d = e.duration || e.waited || 0;
    return { kind: e.kind || "effect", label: fmtValue(e), segments: typeof e.start === "number"
      ? [[e.start, e.start + d, "plain"]] : [] };
  }

  function renderTimeline(rec) {
    const list = $("timeline");
    const entries = rec.timeline || [];
    if (!entries.length) {
      list.replaceChildren(el("li", { class: "empty", text: "This run made no calls, waits or steps." }));
      return;
    }
    const items = entries.map((e, i) => describe(e, i, entries));
    let t0 = typeof rec.started === "number" ? rec.started : Infinity;
    let t1 = typeof rec.finished === "number" ? rec.finished : Date.now() / 1000;
    for (const it of items) {
      for (const [a, b] of it.segments || []) { t0 = Math.min(t0, a); t1 = Math.max(t1, b); }
      if (typeof it.mark === "number") { t0 = Math.min(t0, it.mark); t1 = Math.max(t1, it.mark); }
    }
    if (!isFinite(t0)) t0 = t1;
    const span = Math.max(t1 - t0, 0.001);
    const pct = (t) => `${(((t - t0) / span) * 100).toFixed(3)}%`;
    const rows = items.map((it) => {
      const lane = el("div", { class: "lane", "aria-hidden": "true" });
      let when;
      if (typeof it.mark === "number") {
        const tick = el("span", { class: "tick" });
        tick.style.left = pct(it.mark);
        lane.append(tick);
        when = `at +${fmtDuration(it.mark - t0)}`;
      } else if (it.segments && it.segments.length) {
        const from = it.segments[0][0];
        const to = it.segments[it.segments.length - 1][1];
        for (const [a, b, cls] of it.segments) {
          const bar = el("span", { class: "bar " + cls });
          bar.style.left = pct(a);
          bar.style.width = `${Math.max(((b - a) / span) * 100, 0.2).toFixed(3)}%`;
          lane.append(bar);
        }
        when = `+${fmtDuration(from - t0)}, ${fmtDuration(to - from)}`;
        const tag = el("span", { class: "when", text: fmtDuration(to - from) });
        const right = (to - t0) / span;
        if (right < 0.8) tag.style.left = `calc(${pct(to)} + 4px)`;
        else tag.style.right = `calc(${(100 - ((from - t0) / span) * 100).toFixed(3)}% + 4px)`;
        lane.append(tag);
      }
      const label = it.link ? el("a", { href: it.link, text: it.label }) : el("span", { text: it.label });
      const what = el("div", { class: "what", title: it.label },
        el("span", { class: "kind", text: it.kind }), " ", label,
        when ? el("span", { class: "sr", text: ` — ${when}` }) : null);
      return el("li", { class: it.kind === "resumed" ? "mark" : "", "data-kind": it.kind }, what, lane);
    });
    list.replaceChildren(...rows);
  }

  function renderEnqueued(entries) {
    const tbody = $("enqueued").querySelector("tbody");
    if (!entries.length) {
      emptyRow(tbody, 8, "This run enqueued nothing.");
      return;
    }
    tbody.replaceChildren(...entries.map((e) => el("tr", {},
      el("td", { class: "mono", text: e.id }),
      el("td", { text: e.kind || "" }),
      el("td", { class: "wrap", text: e.target || "" }),
      el("td", {}, badge(e.state)),
      el("td", { text: fmtValue(e.attempts) }),
      el("td", { class: "wrap", text: entryError(e.last_error), title: e.last_error ? fmtValue(e.last_error) : null }),
      el("td", { text: fmtTime(e.created) }),
      el("td", { text: e.settled ? fmtTime(e.settled) : "—" }))));
  }

  // ---- actions -------------------------------------------------------------------------

  async function act(method, path, question, done, after) {
    if (question && !window.confirm(question)) return;
    try {
      await api(method, path);
      say(done);
    } catch (e) {
      if (e.status !== 401) say(`Failed: ${e.message}`, true);
    }
    if (after) after();
  }

  // ---- DLQ and outbox --------------------------------------------------------------------

  // What an outbox or DLQ entry delivers (as chorus.deliveries names it).
  function entryTarget(e) {
    if (e.kind === "workflow") return "workflow " + e.workflow;
    if (e.kind === "chain") return `${e.name} (${(e.steps || []).length} calls)`;
    if (e.request) return `${e.request.method} ${e.request.url}`;
    if (e.run_id && e.url) return `webhook ${e.url}`;
    return fmtValue(e.target || e.kind);
  }

  // An entry's last error in one line: its message (and status), not the body.
  function entryError(err) {
    if (!err) return "";
    if (typeof err !== "object") return String(err);
    const msg = err.message || err.kind || JSON.stringify(err);
    return err.kind && err.message ? `${err.kind}: ${msg}` : msg;
  }

  function runLink(id) {
    return id ? el("a", { href: "#/run/" + encodeURIComponent(id), class: "mono", text: id }) : "—";
  }

  // The cells an outbox entry and a DLQ entry both show: id, kind, target,
  // the run that made it; and its last error.
  function entryCells(e) {
    return [
      el("td", { class: "mono", text: e.id }),
      el("td", { text: e.kind || "" }),
      el("td", { class: "wrap", text: entryTarget(e) }),
      el("td", {}, runLink(e.from_run)),
    ];
  }

  function errorCell(e) {
    return el("td", { class: "wrap", text: entryError(e.last_error), title: e.last_error ? fmtValue(e.last_error) : null });
  }

  function showDlq(_, __, gen) {
    const tbody = $("dlq-table").querySelector("tbody");
    const fetchDlq = async (g) => {
      const data = await api("GET", "/admin/dlq");
      if (g !== generation) return;
      const entries = data.entries || [];
      $("dlq-depth").textContent = `${data.depth ?? entries.length} entr${(data.depth ?? entries.length) === 1
        ? "y" : "ies"} in the DLQ.`;
      if (!entries.length) {
        emptyRow(tbody, 8, "The DLQ is empty.");
        return;
      }
      tbody.replaceChildren(...entries.map((e) => el("tr", { "data-entry": e.id },
        ...entryCells(e),
        el("td", { text: fmtValue(e.attempts) }),
        errorCell(e),
        el("td", { text: fmtTime(e.failed_at) }),
        el("td", { class: "nowrap" },
          el("button", { type: "button", class: "quiet replay", "aria-label": `Replay entry ${e.id}`, text: "Replay",
            onclick: () => act("POST", `/admin/dlq/${encodeURIComponent(e.id)}/replay`, null,
              `Entry ${e.id} is back in the outbox.`, () => load(fetchDlq, generation, false)) }),
          el("button", { type: "button", class: "danger drop", "aria-label": `Drop entry ${e.id}`, text: "Drop",
            onclick: () => act("DELETE", `/admin/dlq/${encodeURIComponent(e.id)}`,
              `Drop entry ${e.id} for good?`, `Entry ${e.id} dropped.`,
              () => load(fetchDlq, generation, false)) })))));
    };
    load(fetchDlq, gen, false);
  }

  function showOutbox(_, __, gen) {
    const tbody = $("outbox-table").querySelector("tbody");
    load(async (g) => {
      const data = await api("GET", "/admin/outbox");
      if (g !== generation) return;
      const entries = data.entries || [];
      $("outbox-depth").textContent = `${data.depth ?? entries.length} entries waiting · updating live`;
      if (!entries.length) {
        emptyRow(tbody, 7, "The outbox is empty.");
        return;
      }
      tbody.replaceChildren(...entries.map((e) => el("tr", { "data-entry": e.id },
        ...entryCells(e),
        el("td", { text: `${fmtValue(e.attempts)}${e.max_attempts ? " of " + e.max_attempts : ""}` }),
        errorCell(e),
        el("td", { text: fmtTime(e.due) }))));
    }, gen, true);
  }

  // ---- breakers and schedules --------------------------------------------------------------

  function showBreakers(_, __, gen) {
    const tbody = $("breakers-table").querySelector("tbody");
    load(async (g) => {
      const data = await api("GET", "/admin/breakers");
      if (g !== generation) return;
      const names = Object.keys(data.breakers || {}).sort();
      if (!names.length) {
        emptyRow(tbody, 2, "No breaker has been used yet.");
        return;
      }
      tbody.replaceChildren(...names.map((n) => {
        const v = data.breakers[n];
        const st = typeof v === "object" && v ? v.state : v;
        return el("tr", {}, el("td", { text: n }), el("td", {}, badge(String(st))));
      }));
    }, gen, true);
  }

  function showSchedules(_, __, gen) {
    const table = $("schedules-table");
    load(async (g) => {
      const data = await api("GET", "/admin/schedules");
      if (g !== generation) return;
      const list = data.schedules || [];
      if (!list.length) {
        table.querySelector("thead tr").replaceChildren(el("th", { scope: "col", text: "Schedules" }));
        emptyRow(table.querySelector("tbody"), 1, "No loaded workflow has a schedule.");
        return;
      }
      // the fields GET /admin/schedules gives, in this order; any other after them
      const known = ["workflow", "cron", "every", "catch_up", "overlap", "next_slot_time", "last_run", "last_skipped"];
      const keys = new Set(list.flatMap(Object.keys));
      keys.delete("next_slot"); // next_slot_time says the same, readably
      const cols = known.filter((k) => keys.has(k)).concat([...keys].filter((k) => !known.includes(k)));
      const cell = (c, v) => {
        if (c === "last_run" && v && typeof v === "object") {
          return el("td", {}, runLink(v.id), " ", badge(v.status), v.slot_time ? ` (slot ${v.slot_time})` : "");
        }
        if (c === "every" && typeof v === "number") return el("td", { text: fmtDuration(v) });
        return el("td", { class: "wrap", text: fmtValue(v) });
      };
      table.querySelector("thead tr").replaceChildren(...cols.map((c) =>
        el("th", { scope: "col", text: c.replace(/_/g, " ") })));
      table.querySelector("tbody").replaceChildren(...list.map((s) =>
        el("tr", { "data-workflow": s.workflow }, ...cols.map((c) => cell(c, s[c])))));
    }, gen, true);
  }

  // ---- start ---------------------------------------------------------------------------

  document.addEventListener("DOMContentLoaded", () => {
    $("signin-form").addEventListener("submit", signIn);
    $("signout").addEventListener("click", () => {
      signOut("Signed out.");
      history.replaceState(null, "", location.pathname);
    });
    $("runs-filter").addEventListener("submit", applyFilters);
    $("open-run").addEventListener("submit", openRun);
    // the skip link moves focus; it must not change the fragment, which names the page
    document.querySelector(".skip").addEventListener("click", (ev) => {
      ev.preventDefault();
      $("main").focus();
    });
    let lastPage = parseHash().page;
    window.addEventListener("hashchange", () => {
      say(""); // what the last page said is about the last page
      render();
      // a new page: focus its heading, so a screen reader and the Tab key start there
      const page = parseHash().page;
      if (page !== lastPage) {
        const h = document.querySelector(".page:not([hidden]) h1");
        if (h) { h.setAttribute("tabindex", "-1"); h.focus({ preventScroll: true }); }
      }
      lastPage = page;
    });
    render();
  });
})();
