/* lmcache-server dashboard: polls dashboard/data every second, dashboard/fleet every two when the
 * node has peers, and draws plain SVG charts over a rolling window kept here in the browser.
 * No dependencies. Everything shown is written with textContent (salts and reasons are data). */
"use strict";

(function () {
  const POLL_MS = 1000;
  const FLEET_MS = 2000;
  const WINDOW_S = 300;
  const REQUEST_TIMEOUT_MS = 5000;
  const SVG = "http://www.w3.org/2000/svg";
  const COLORS = ["var(--s1)", "var(--s2)", "var(--s3)", "var(--s4)"];

  const state = { polls: 0, fleetPolls: 0, lastUpdate: null, prev: null, history: [], fleetBusy: false,
                  errorsSeen: new Map(), lastFleet: null };
  window.lmcacheDashboard = state;  // read by the browser tests and handy in the console

  // -- formatting ---------------------------------------------------------------------------

  const $ = (id) => document.getElementById(id);

  function fmtBytes(n) {
    if (n === null || n === undefined || !isFinite(n)) return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (Math.abs(n) >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i === 0 ? n.toFixed(0) : n.toFixed(n < 10 ? 2 : 1)) + " " + units[i];
  }
  function fmtNum(n, digits) {
    if (n === null || n === undefined || !isFinite(n)) return "–";
    return Number(n).toLocaleString("en-US", { maximumFractionDigits: digits === undefined ? 0 : digits });
  }
  function fmtPct(x) { return (x === null || x === undefined || !isFinite(x)) ? "–" : (x * 100).toFixed(1) + "\u00a0%"; }
  function fmtMs(x) { return (x === null || x === undefined) ? "–" : (x < 1 ? x.toFixed(3) : x.toFixed(2)) + " ms"; }
  function fmtDuration(s) {
    if (s === null || s === undefined || !isFinite(s)) return "–";
    s = Math.floor(s);
    const d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60);
    if (d) return d + "d " + h + "h";
    if (h) return h + "h " + m + "m";
    if (m) return m + "m " + (s % 60) + "s";
    return s + "s";
  }

  /** Set an element's text and the raw number the tests compare (data-value). */
  function show(id, value, text) {
    const el = $(id);
    el.dataset.value = value === null || value === undefined ? "" : String(value);
    el.textContent = text;
  }

  function row(tbody, cells) {
    const tr = document.createElement("tr");
    for (const c of cells) {
      const td = document.createElement("td");
      if (c !== null && typeof c === "object") {
        if (c.node) td.appendChild(c.node); else td.textContent = c.text;
        if (c.cls) td.className = c.cls;
        if (c.value !== undefined) td.dataset.value = String(c.value);
      } else {
        td.textContent = c;
      }
      tr.appendChild(td);
    }
    tbody.appendChild(tr);
    return tr;
  }

  function fillTable(tableId, items, cellsOf) {
    const tbody = $(tableId).tBodies[0];
    tbody.replaceChildren();
    for (const item of items) row(tbody, cellsOf(item));
  }

  // -- charts -------------------------------------------------------------------------------

  class Chart {
    /** series: [{key, label}]; unit formats the axis maximum and the legend values. */
    constructor(id, series, unit, fixedMax) {
      this.svg = $(id);
      this.series = series;
      this.unit = unit;
      this.fixedMax = fixedMax;
      this.points = series.map(() => []);
    }
    push(t, values) {
      this.series.forEach((s, i) => {
        const v = values[s.key];
        if (v !== null && v !== undefined && isFinite(v)) this.points[i].push([t, v]);
        const cutoff = t - WINDOW_S;
        while (this.points[i].length && this.points[i][0][0] < cutoff) this.points[i].shift();
      });
    }
    draw(now) {
      const W = 320, H = 110, L = 34, R = 4, T = 14, B = 12;
      const svg = this.svg;
      svg.replaceChildren();
      let max = this.fixedMax || 0;
      if (!this.fixedMax) for (const pts of this.points) for (const p of pts) max = Math.max(max, p[1]);
      if (max <= 0) max = 1;
      // the x axis spans what the window holds so far: half a minute at least, five at most
      let first = now;
      for (const pts of this.points) if (pts.length) first = Math.min(first, pts[0][0]);
      const span = Math.min(WINDOW_S, Math.max(30, now - first));
      const x = (t) => L + (W - L - R) * (1 - (now - t) / span);
      const y = (v) => T + (H - T - B) * (1 - v / max);
      const el = (name, attrs, text) => {
        const e = document.createElementNS(SVG, name);
        for (const k in attrs) e.setAttribute(k, attrs[k]);
        if (text !== undefined) e.textContent = text;
        svg.appendChild(e);
        return e;
      };
      for (const f of [0, 0.5, 1]) {
        el("line", { class: "grid", x1: L, x2: W - R, y1: y(max * f), y2: y(max * f) });
        el("text", { class: "axis", x: L - 3, y: y(max * f) + 3, "text-anchor": "end" }, this.unit(max * f));
      }
      el("text", { class: "axis", x: L, y: H - 1 }, span >= 120 ? "-" + Math.round(span / 60) + " min" : "-" + Math.round(span) + " s");
      el("text", { class: "axis", x: W - R, y: H - 1, "text-anchor": "end" }, "now");
      let total = 0, lx = L;
      this.series.forEach((s, i) => {
        const pts = this.points[i];
        total += pts.length;
        if (pts.length) {
          el("polyline", { class: "series", stroke: COLORS[i % COLORS.length], "data-series": s.key,
                           points: pts.map((p) => x(p[0]).toFixed(1) + "," + y(p[1]).toFixed(1)).join(" ") });
        }
        const last = pts.length ? this.unit(pts[pts.length - 1][1]) : "–";
        const label = el("text", { class: "legend", x: lx, y: 9, fill: COLORS[i % COLORS.length] },
                         s.label + " " + last);
        lx += Math.max(60, label.getComputedTextLength() + 10);
      });
      svg.dataset.points = String(total);
    }
  }

  const short = (v) => (v === 0 ? "0" : v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v >= 1 ? v.toFixed(2)
                        : Number(v.toPrecision(2)).toString());
  const gb = short;
  const pct = (v) => (v < 0.1 && v > 0 ? (v * 100).toFixed(1) : (v * 100).toFixed(0)) + "%";
  const per = short;
  const ms = short;
  const charts = {
    l1: new Chart("chart-l1", [{ key: "usage", label: "L1 used" }], pct),
    hits: new Chart("chart-hits", [{ key: "l1", label: "L1 hit" }, { key: "l2", label: "L2 hit" },
                                   { key: "miss", label: "miss" }], pct, 1),
    latency: new Chart("chart-latency", [{ key: "p50", label: "LOOKUP p50 ms" }, { key: "p99", label: "p99 ms" }], ms),
    gbps: new Chart("chart-gbps", [{ key: "store", label: "STORE GB/s" }, { key: "retrieve", label: "RETRIEVE GB/s" }], gb),
    ops: new Chart("chart-ops", [{ key: "store", label: "STORE/s" }, { key: "retrieve", label: "RETRIEVE/s" },
                                 { key: "lookup", label: "LOOKUP/s" }], per),
  };

  // -- one snapshot -------------------------------------------------------------------------

  const ops = (d, op) => (d.traffic.requests_total[op] || 0);
  const hitTokens = (d, tier) => (d.lookups.hit_tokens_total[tier] || 0);

  function ratios(requested, l1, l2) {
    if (!(requested > 0)) return { l1: null, l2: null, miss: null };
    return { l1: l1 / requested, l2: l2 / requested, miss: Math.max(0, 1 - (l1 + l2) / requested) };
  }

  function setState(name, text) {
    const badge = $("state");
    badge.dataset.state = name;
    badge.textContent = text;
  }

  function banner(text) {
    const b = $("banner");
    b.hidden = !text;
    b.textContent = text || "";
  }

  function render(d) {
    const prev = state.prev;
    const t = d.time;
    setState(d.healthy ? "live" : "unhealthy", d.healthy ? "live" : "unhealthy");
    banner(d.metrics_enabled ? "" : "metrics are disabled on this node (--disable-metrics): counters stay at zero");
    $("node").textContent = d.node;
    $("version").textContent = d.version;
    show("uptime", d.uptime_seconds, fmtDuration(d.uptime_seconds));
    $("updated").textContent = new Date(t * 1000).toLocaleTimeString();

    // L1
    const ratio = d.l1.capacity_bytes ? d.l1.used_bytes / d.l1.capacity_bytes : 0;
    show("l1-used", d.l1.used_bytes, fmtBytes(d.l1.used_bytes));
    show("l1-capacity", d.l1.capacity_bytes, fmtBytes(d.l1.capacity_bytes));
    show("l1-ratio", ratio, fmtPct(ratio));
    show("l1-objects", d.l1.object_count, fmtNum(d.l1.object_count));
    show("l1-evicted", d.l1.evicted_objects_total, fmtNum(d.l1.evicted_objects_total));
    const bar = $("l1-bar");
    bar.style.width = Math.min(100, ratio * 100).toFixed(1) + "%";
    bar.classList.toggle("high", ratio >= 0.9);

    // rates from the previous snapshot (skipped after a counter reset or a clock step)
    let rates = null;
    if (prev && t > prev.time) {
      const dt = t - prev.time;
      const delta = (a, b) => (a >= b ? (a - b) / dt : null);
      rates = {
        evict: delta(d.l1.evicted_objects_total, prev.l1.evicted_objects_total),
        storeGB: delta(d.traffic.store_bytes_total, prev.traffic.store_bytes_total),
        retrieveGB: delta(d.traffic.retrieve_bytes_total, prev.traffic.retrieve_bytes_total),
        storeOps: delta(ops(d, "store"), ops(prev, "store")),
        retrieveOps: delta(ops(d, "retrieve"), ops(prev, "retrieve")),
        lookupOps: delta(ops(d, "lookup"), ops(prev, "lookup")),
      };
      for (const k of ["storeGB", "retrieveGB"]) if (rates[k] !== null) rates[k] /= 1e9;
    }
    const r = (k) => (rates ? rates[k] : null);
    show("l1-evictions-rate", r("evict"), fmtNum(r("evict"), 1));
    show("store-gbps", r("storeGB"), fmtNum(r("storeGB"), 3));
    show("retrieve-gbps", r("retrieveGB"), fmtNum(r("retrieveGB"), 3));
    show("store-ops-rate", r("storeOps"), fmtNum(r("storeOps"), 1));
    show("retrieve-ops-rate", r("retrieveOps"), fmtNum(r("retrieveOps"), 1));
    show("lookup-ops-rate", r("lookupOps"), fmtNum(r("lookupOps"), 1));
    show("store-ops", ops(d, "store"), fmtNum(ops(d, "store")));
    show("retrieve-ops", ops(d, "retrieve"), fmtNum(ops(d, "retrieve")));
    show("lookup-ops", ops(d, "lookup"), fmtNum(ops(d, "lookup")));

    // lookups: since start, and over the window (oldest kept snapshot to now)
    const lk = d.lookups;
    const all = ratios(lk.requested_tokens_total, hitTokens(d, "l1"), hitTokens(d, "l2"));
    show("hit-l1", all.l1, fmtPct(all.l1));
    show("hit-l2", all.l2, fmtPct(all.l2));
    show("hit-miss", all.miss, fmtPct(all.miss));
    state.history.push(d);
    while (state.history.length && state.history[0].time < t - WINDOW_S) state.history.shift();
    const old = state.history[0];
    const win = old.lookups.requested_tokens_total <= lk.requested_tokens_total
      ? ratios(lk.requested_tokens_total - old.lookups.requested_tokens_total,
               hitTokens(d, "l1") - hitTokens(old, "l1"), hitTokens(d, "l2") - hitTokens(old, "l2"))
      : ratios(0, 0, 0);
    show("hit5-l1", win.l1, fmtPct(win.l1));
    show("hit5-l2", win.l2, fmtPct(win.l2));
    show("hit5-miss", win.miss, fmtPct(win.miss));
    show("lat-p50", lk.latency_p50_ms, fmtMs(lk.latency_p50_ms));
    show("lat-p99", lk.latency_p99_ms, fmtMs(lk.latency_p99_ms));
    show("lat-samples", lk.latency_samples, fmtNum(lk.latency_samples));
    show("lookups-total", lk.requests_total, fmtNum(lk.requests_total));
    let step = ratios(0, 0, 0);
    if (prev && prev.lookups.requested_tokens_total <= lk.requested_tokens_total) {
      step = ratios(lk.requested_tokens_total - prev.lookups.requested_tokens_total,
                    hitTokens(d, "l1") - hitTokens(prev, "l1"), hitTokens(d, "l2") - hitTokens(prev, "l2"));
    }

    // charts
    charts.l1.push(t, { usage: ratio });
    charts.hits.push(t, step);
    charts.latency.push(t, { p50: lk.latency_p50_ms, p99: lk.latency_p99_ms });
    charts.gbps.push(t, { store: r("storeGB"), retrieve: r("retrieveGB") });
    charts.ops.push(t, { store: r("storeOps"), retrieve: r("retrieveOps"), lookup: r("lookupOps") });
    for (const k in charts) charts[k].draw(t);

    // L2
    const adapters = d.l2.adapters;
    $("l2-none").hidden = adapters.length > 0;
    $("l2-table").hidden = adapters.length === 0;
    fillTable("l2-table", adapters, (a) => {
      const failures = Object.values(a.failures).reduce((x, y) => x + y, 0);
      return [a.name, { text: a.healthy ? "healthy" : "unhealthy", cls: a.healthy ? "ok" : "bad" },
              { text: a.breaker === null ? "–" : a.breaker, cls: a.breaker && a.breaker !== "closed" ? "bad" : "" },
              { text: fmtBytes(a.used_bytes), value: a.used_bytes },
              a.capacity_bytes ? fmtBytes(a.capacity_bytes) : "unlimited", { text: fmtNum(failures), value: failures }];
    });
    show("l2-queue", d.l2.store_queue_objects, fmtNum(d.l2.store_queue_objects));
    show("l2-dropped", d.l2.store_dropped_objects_total, fmtNum(d.l2.store_dropped_objects_total));

    // workers
    show("workers-registered", d.workers.registered, fmtNum(d.workers.registered));
    show("workers-engine-driven", d.workers.engine_driven, fmtNum(d.workers.engine_driven));
    show("workers-connections", d.workers.connections, fmtNum(d.workers.connections));
    show("sessions-active", d.workers.active_sessions, fmtNum(d.workers.active_sessions));
    show("prefetch-jobs", d.workers.active_prefetch_jobs, fmtNum(d.workers.active_prefetch_jobs));

    // quotas
    $("quotas-none").hidden = d.quotas.length > 0;
    $("quota-table").hidden = d.quotas.length === 0;
    fillTable("quota-table", d.quotas, (q) => {
      const gauge = document.createElement("span");
      gauge.className = "quota-bar";
      const fill = document.createElement("span");
      const f = q.limit_bytes ? q.used_bytes / q.limit_bytes : (q.limit_bytes === 0 && q.used_bytes ? 1 : 0);
      fill.style.width = Math.min(100, f * 100).toFixed(0) + "%";
      if (q.limit_bytes !== null && q.used_bytes > q.limit_bytes) fill.className = "over";
      gauge.appendChild(fill);
      return [{ text: q.cache_salt, cls: "reason" }, { text: fmtBytes(q.used_bytes), value: q.used_bytes },
              q.limit_bytes === null ? "none" : fmtBytes(q.limit_bytes), { node: gauge }];
    });

    // periodic threads
    fillTable("thread-table", d.threads, (th) => {
      const ok = th.running && th.active;
      return [th.name, th.level,
              { text: !th.running ? "stopped" : th.active ? "active" : "stalled", cls: ok ? "ok" : "bad" },
              th.last_run_ago === null ? "never" : fmtDuration(th.last_run_ago) + " ago",
              { text: fmtNum(th.total_runs) + " / " + fmtNum(th.failed_runs) + (th.last_error ? " (" + th.last_error + ")" : ""),
                cls: th.failed_runs ? "warn reason" : "reason" }];
    });

    // errors, with what is new since the previous poll
    $("errors-none").hidden = d.errors.length > 0;
    $("error-table").hidden = d.errors.length === 0;
    const seen = new Map();
    fillTable("error-table", d.errors, (e) => {
      const key = e.source + "\u0000" + e.reason;
      seen.set(key, e.count);
      const before = state.errorsSeen.has(key) ? state.errorsSeen.get(key) : (prev ? 0 : e.count);
      const fresh = Math.max(0, e.count - before);
      return [e.source, { text: e.reason, cls: "reason" }, { text: fmtNum(e.count), value: e.count },
              { text: fresh ? "+" + fmtNum(fresh) : "", cls: fresh ? "bad" : "" }];
    });
    state.errorsSeen = seen;

    // plugins
    $("plugins-loaded").textContent = d.plugins.loaded.join(", ");
    $("plugins-failed").hidden = d.plugins.failed.length === 0;
    $("plugins-failed").textContent = "failed to load: " + d.plugins.failed.join(", ");

    $("card-fleet").hidden = d.peers.length === 0;
    state.prev = d;
  }

  // -- fleet --------------------------------------------------------------------------------

  function renderFleet(f) {
    fillTable("fleet-table", f.nodes, (n) => {
      const name = n.url === "" ? (n.name || "this node") + " (this node)" : (n.name ? n.name + " · " : "") + n.url;
      const stateText = n.state === "up" ? (n.healthy ? "up" : "up, unhealthy") : n.state + (n.error ? ": " + n.error : "");
      return [{ text: name, cls: "reason" },
              { text: stateText, cls: n.state === "up" && n.healthy ? "ok" : n.state === "starting" ? "warn" : "bad" },
              n.state === "up" ? fmtBytes(n.l1_used_bytes) + " / " + fmtBytes(n.l1_capacity_bytes) : "–",
              n.state === "up" ? fmtBytes(n.l2_used_bytes) : "–",
              { text: fmtPct(n.hit_rate), value: n.hit_rate === null ? "" : n.hit_rate },
              n.state === "up" ? fmtBytes(n.store_bytes_total) : "–",
              n.state === "up" ? fmtNum(n.workers) : "–", n.state === "up" ? fmtNum(n.active_sessions) : "–",
              n.latency_ms === null ? "–" : fmtNum(n.latency_ms, 1) + " ms"];
    });
    const rows = $("fleet-table").tBodies[0].rows;
    f.nodes.forEach((n, i) => { rows[i].dataset.state = n.state; rows[i].dataset.url = n.url; });
    const tot = f.totals;
    $("fleet-up").textContent = tot.up + " of " + tot.nodes + " up";
    $("fleet-up").dataset.value = String(tot.up);
    $("fleet-l1").textContent = fmtBytes(tot.l1_used_bytes) + " / " + fmtBytes(tot.l1_capacity_bytes);
    $("fleet-l2").textContent = fmtBytes(tot.l2_used_bytes);
    show("fleet-hit", tot.hit_rate, fmtPct(tot.hit_rate));
    $("fleet-stored").textContent = fmtBytes(tot.store_bytes_total);
    $("fleet-workers").textContent = fmtNum(tot.workers);
    $("fleet-sessions").textContent = fmtNum(tot.active_sessions);
  }

  // -- polling ------------------------------------------------------------------------------

  async function getJSON(url) {
    const ctl = new AbortController();
    const timer = setTimeout(() => ctl.abort(), REQUEST_TIMEOUT_MS);
    try {
      const resp = await fetch(url, { cache: "no-store", signal: ctl.signal });
      let body = null;
      try { body = await resp.json(); } catch (e) { body = null; }
      return { status: resp.status, body: body };
    } finally {
      clearTimeout(timer);
    }
  }

  async function poll() {
    try {
      const { status, body } = await getJSON("dashboard/data");
      if (status === 200 && body) {
        render(body);
        state.lastUpdate = Date.now();
      } else if (status === 503) {
        setState("starting", "starting");
        banner("The engine is starting (or stopping): no data yet. This page updates by itself.");
      } else {
        setState("unreachable", "error " + status);
        banner("dashboard/data answered HTTP " + status);
      }
    } catch (e) {
      setState("unreachable", "unreachable");
      banner("The server does not answer; retrying every second.");
    }
    state.polls++;
    setTimeout(poll, POLL_MS);
  }

  async function pollFleet() {
    if (state.prev && state.prev.peers.length > 0 && !state.fleetBusy) {
      state.fleetBusy = true;
      try {
        const { status, body } = await getJSON("dashboard/fleet");
        if (status === 200 && body) { renderFleet(body); state.lastFleet = Date.now(); }
      } catch (e) {
        /* the node itself is unreachable: the main poll says so */
      } finally {
        state.fleetBusy = false;
        state.fleetPolls++;
      }
    }
    setTimeout(pollFleet, FLEET_MS);
  }

  poll();
  pollFleet();
})();
