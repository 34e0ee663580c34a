/* The endpoint page, on top of the server-rendered HTML: Chart.js charts from the metric-series
 * API, live logs from the log-lines API, the query playground (the gateway, with the session
 * cookie and the CSRF header) and grant changes through the permissions API. */
(function () {
  "use strict";

  const page = JSON.parse(document.getElementById("endpoint-data").textContent);
  const csrfToken = JSON.parse(document.body.getAttribute("hx-headers") || "{}")["X-CSRFToken"] || "";
  const COLOURS = ["#3b63d9", "#e07b39", "#2a9d8f", "#b5489d", "#8a6d1d", "#5c6578"];
  const DASHED = [5, 4];

  async function errorText(response) {
    try {
      const body = await response.json();
      return body.message || body.error_code || response.statusText;
    } catch (_) {
      return response.status + " " + response.statusText;
    }
  }

  /* --- charts -------------------------------------------------------------------------------- */

  // Each chart: which series, drawn how. One line per served entity and series.
  const CHARTS = [
    { id: "chart-latency", series: [["p50_ms", "p50", DASHED], ["p99_ms", "p99", []]], unit: " ms" },
    { id: "chart-requests", series: [["request_rate", "requests/s", []]], unit: "/s" },
    { id: "chart-errors", series: [["error_4xx_rate", "4xx/s", DASHED], ["error_5xx_rate", "5xx/s", []]], unit: "/s" },
    { id: "chart-cpu", series: [["cpu_pct", "CPU", []]], unit: " %", max: 100 },
    { id: "chart-mem", series: [["mem_pct", "memory", []]], unit: " %", max: 100 },
    { id: "chart-replicas", series: [["replicas", "replicas", []]], unit: "", stepped: true },
    // Shadows only (traffic_config.shadow): their canvases are on the page when there are some.
    { id: "chart-agreement", series: [["agreement_rate", "agreement", []]], unit: "", max: 1, shadows: true },
    { id: "chart-shadow-dropped", series: [["shadow_dropped_rate", "dropped/s", []]], unit: "/s", shadows: true },
  ];
  const METRICS = CHARTS.flatMap((c) => c.series.map((s) => s[0])).join(",");
  const chartStatus = document.getElementById("chart-status");
  const charts = {};
  let rangeSeconds = 3600;
  let loading = null;

  function timeLabel(ms, withDate) {
    const d = new Date(ms);
    const hm = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    return withDate ? d.toLocaleDateString([], { month: "short", day: "numeric" }) + " " + hm : hm;
  }

  function drawChart(spec, datasets, start, end) {
    const withDate = end - start > 86400 * 1000;
    const existing = charts[spec.id];
    if (existing) {
      existing.data.datasets = datasets;
      existing.options.scales.x.min = start;
      existing.options.scales.x.max = end;
      existing.options.scales.x.ticks.callback = (v) => timeLabel(v, withDate);
      existing.update("none");
      return;
    }
    const canvas = document.getElementById(spec.id);
    charts[spec.id] = new window.Chart(canvas, {
      type: "line",
      data: { datasets: datasets },
      options: {
        animation: false,
        responsive: true,
        maintainAspectRatio: false,
        interaction: { mode: "nearest", axis: "x", intersect: false },
        elements: { point: { radius: 0, hitRadius: 6 }, line: { borderWidth: 1.8, tension: 0.15 } },
        scales: {
          x: { type: "linear", min: start, max: end, ticks: { maxTicksLimit: 6, callback: (v) => timeLabel(v, withDate) } },
          y: { beginAtZero: true, suggestedMax: spec.max, ticks: { maxTicksLimit: 5 } },
        },
        plugins: {
          legend: { display: true, position: "bottom", labels: { boxWidth: 12, boxHeight: 2 } },
          tooltip: {
            callbacks: {
              title: (items) => (items.length ? new Date(items[0].parsed.x).toLocaleString() : ""),
              label: (item) => item.dataset.label + ": " + (item.parsed.y == null ? "–" : +item.parsed.y.toFixed(3) + spec.unit),
            },
          },
        },
      },
    });
  }

  async function loadCharts() {
    if (!window.Chart) {
      chartStatus.textContent = "The chart library did not load.";
      return;
    }
    const end = Date.now();
    const start = end - rangeSeconds * 1000;
    const entities = page.entities.length ? page.entities : [""];
    const mine = (loading = {});
    chartStatus.textContent = "Loading…";
    let answers;
    try {
      answers = await Promise.all(
        entities.map(async (name) => {
          const params = new URLSearchParams({ metrics: METRICS, start: String(start), end: String(end) });
          if (name) params.set("served_model", name);
          const response = await fetch(page.seriesUrl + "?" + params, { headers: { Accept: "application/json" } });
          if (!response.ok) throw new Error(await errorText(response));
          return [name, await response.json()];
        })
      );
    } catch (err) {
      if (mine === loading) chartStatus.textContent = "Could not load the metrics: " + err.message;
      return;
    }
    if (mine !== loading) return; // a newer range was picked meanwhile
    let points = 0;
    let resolution = 0;
    for (const spec of CHARTS) {
      if (!document.getElementById(spec.id)) continue;
      const datasets = [];
      answers.forEach(([name, body], i) => {
        if (spec.shadows && !(page.shadows || []).includes(name)) return;
        resolution = body.resolution;
        for (const [metric, label, dash] of spec.series) {
          const data = (body.series[metric] || []).map(([t, v]) => ({ x: t, y: v }));
          points += data.filter((p) => p.y != null).length;
          datasets.push({
            label: (name || "endpoint") + (spec.series.length > 1 || entities.length > 1 ? " " + label : ""),
            data: data,
            borderColor: COLOURS[i % COLOURS.length],
            backgroundColor: COLOURS[i % COLOURS.length],
            borderDash: dash,
            // A few points (a young endpoint, a long range) are dots, or they would not show.
            pointRadius: data.length < 40 ? 2 : 0,
            stepped: spec.stepped || false,
            spanGaps: false,
          });
        }
      });
      drawChart(spec, datasets, start, end);
    }
    chartStatus.textContent = points
      ? "Updated " + new Date().toLocaleTimeString() + " · one point per " + answers[0][1].step + " s (stored every " + resolution + " s)"
      : "No metrics in this range yet: they appear after the first polls and queries.";
  }

  document.querySelectorAll("[data-range]").forEach((button) => {
    button.addEventListener("click", () => {
      rangeSeconds = Number(button.dataset.range);
      document.querySelectorAll("[data-range]").forEach((b) => b.setAttribute("aria-pressed", String(b === button)));
      loadCharts();
    });
  });
  // Short ranges move while you watch: refresh them every 30 s while the tab is visible.
  setInterval(() => {
    if (!document.hidden && rangeSeconds <= 6 * 3600) loadCharts();
  }, 30000);

  /* --- logs ---------------------------------------------------------------------------------- */

  const logBox = document.getElementById("log-lines");
  const logForm = document.getElementById("logs-form");
  const logStatus = document.getElementById("logs-status");
  const follow = document.getElementById("logs-follow");
  const MAX_LINES = 2000;
  let lastTs = null;
  let seenAtLast = new Set();
  let logRequest = 0;

  function logQuery() {
    const params = new URLSearchParams({ kind: logForm.logs_kind.value });
    if (logForm.logs_model.value) params.set("served_model", logForm.logs_model.value);
    if (logForm.logs_q.value.trim()) params.set("q", logForm.logs_q.value.trim());
    return params;
  }

  const lineKey = (l) => [l.ts, l.served_model_name, l.replica, l.message].join("|");

  function lineElement(l) {
    const row = document.createElement("span");
    row.className = "lvl-" + (l.level || "");
    const ts = document.createElement("span");
    ts.className = "ts";
    ts.textContent = new Date(l.ts).toISOString().replace("T", " ").slice(0, 19);
    const who = document.createElement("span");
    who.className = "who";
    who.textContent = "[" + l.served_model_name + (l.replica != null ? " #" + l.replica : "") + "]";
    row.append(ts, " ", who, " " + (l.level ? l.level + " " : "") + l.message + "\n");
    return row;
  }

  function remember(lines) {
    for (const l of lines) {
      if (lastTs === null || l.ts > lastTs) {
        lastTs = l.ts;
        seenAtLast = new Set();
      }
      if (l.ts === lastTs) seenAtLast.add(lineKey(l));
    }
  }

  async function loadLogs() {
    const mine = ++logRequest;
    const params = logQuery();
    params.set("limit", "200");
    params.set("order", "desc");
    logStatus.textContent = "Loading…";
    const response = await fetch(page.logsUrl + "?" + params);
    if (mine !== logRequest) return;
    if (!response.ok) {
      logStatus.textContent = "Could not read the logs: " + (await errorText(response));
      return;
    }
    const lines = (await response.json()).lines.reverse();
    lastTs = null;
    seenAtLast = new Set();
    remember(lines);
    logBox.replaceChildren(...lines.map(lineElement));
    if (!lines.length) logBox.textContent = "No " + params.get("kind") + " log lines" + (params.get("q") ? " containing “" + params.get("q") + "”" : "") + " yet.";
    logBox.dataset.count = String(lines.length);
    logBox.scrollTop = logBox.scrollHeight;
    logStatus.textContent = lines.length + " line" + (lines.length === 1 ? "" : "s") + (follow.checked ? " · following" : "");
  }

  async function followLogs() {
    if (!follow.checked || document.hidden) return;
    const mine = logRequest;
    const params = logQuery();
    params.set("order", "asc");
    params.set("limit", "500");
    if (lastTs !== null) params.set("since", String(lastTs));
    const response = await fetch(page.logsUrl + "?" + params);
    if (mine !== logRequest || !response.ok) return;
    const fresh = (await response.json()).lines.filter((l) => !(l.ts === lastTs && seenAtLast.has(lineKey(l))));
    if (!fresh.length) return;
    const atBottom = logBox.scrollHeight - logBox.scrollTop - logBox.clientHeight < 40;
    if (Number(logBox.dataset.count || 0) === 0) logBox.replaceChildren();
    remember(fresh);
    logBox.append(...fresh.map(lineElement));
    while (logBox.childElementCount > MAX_LINES) logBox.firstElementChild.remove();
    logBox.dataset.count = String(logBox.childElementCount);
    if (atBottom) logBox.scrollTop = logBox.scrollHeight;
    logStatus.textContent = logBox.childElementCount + " lines · following";
  }

  let filterTimer = null;
  logForm.addEventListener("submit", (event) => {
    event.preventDefault();
    loadLogs();
  });
  logForm.logs_kind.addEventListener("change", loadLogs);
  logForm.logs_model.addEventListener("change", loadLogs);
  logForm.logs_q.addEventListener("input", () => {
    clearTimeout(filterTimer);
    filterTimer = setTimeout(loadLogs, 300);
  });
  follow.disabled = false;
  follow.addEventListener("change", () => {
    logStatus.textContent = follow.checked ? "Following…" : "";
    followLogs();
  });
  setInterval(followLogs, 2000);

  /* --- playground ---------------------------------------------------------------------------- */

  const queryForm = document.getElementById("query-form");
  if (queryForm) {
    const target = document.getElementById("query-target");
    const body = document.getElementById("query-body");
    const send = queryForm.querySelector("button[type=submit]");
    const result = document.getElementById("query-result");
    send.disabled = false;
    target.addEventListener("change", () => {
      const example = page.examples[target.value] || page.examples[page.entities[page.entities.length - 1]];
      if (example) body.value = example;
    });
    queryForm.addEventListener("submit", async (event) => {
      event.preventDefault();
      const status = document.getElementById("query-status");
      const output = document.getElementById("query-response");
      try {
        JSON.parse(body.value);
      } catch (err) {
        result.hidden = false;
        status.textContent = "not sent";
        status.className = "status-bad";
        output.textContent = "The body is not valid JSON: " + err.message;
        return;
      }
      const url = target.value
        ? "/serving-endpoints/" + encodeURIComponent(page.name) + "/served-models/" + encodeURIComponent(target.value) + "/invocations"
        : page.invocationsUrl;
      send.disabled = true;
      const started = performance.now();
      try {
        const response = await fetch(url, {
          method: "POST",
          credentials: "same-origin",
          headers: { "Content-Type": "application/json", "X-CSRFToken": csrfToken },
          body: body.value,
        });
        const text = await response.text();
        const elapsed = performance.now() - started;
        result.hidden = false;
        status.textContent = response.status + (response.ok ? " OK" : " " + response.statusText);
        status.className = response.ok ? "status-ok" : "status-bad";
        document.getElementById("query-served").textContent = response.headers.get("served-model-name") || "–";
        document.getElementById("query-latency").textContent = elapsed.toFixed(1) + " ms";
        try {
          output.textContent = JSON.stringify(JSON.parse(text), null, 2);
        } catch (_) {
          output.textContent = text;
        }
      } catch (err) {
        result.hidden = false;
        status.textContent = "failed";
        status.className = "status-bad";
        output.textContent = String(err);
      } finally {
        send.disabled = false;
      }
    });
  }

  /* --- permissions --------------------------------------------------------------------------- */

  async function refreshPermissions() {
    const response = await fetch(page.permissionsFragment);
    if (response.ok) document.getElementById("permissions").outerHTML = await response.text();
    else window.location.reload(); // e.g. you removed your own access
  }

  async function changeGrants(method, acl) {
    const response = await fetch(page.permissionsApi, {
      method: method,
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRFToken": csrfToken },
      body: JSON.stringify({ access_control_list: acl }),
    });
    if (!response.ok) throw new Error(await errorText(response));
  }

  const principal = (kind, name) => (kind === "group" ? { group_name: name } : { user_name: name });

  document.addEventListener("submit", async (event) => {
    const form = event.target.closest("[data-grant-form]");
    if (!form) return;
    event.preventDefault();
    const entry = { ...principal(form.kind.value, form.principal.value.trim()), permission_level: form.level.value };
    try {
      await changeGrants("PATCH", [entry]);
      await refreshPermissions();
    } catch (err) {
      document.querySelector("[data-grant-error]").textContent = err.message;
    }
  });

  document.addEventListener("click", async (event) => {
    const button = event.target.closest("[data-remove-grant]");
    if (!button) return;
    const { kind, principal: name } = button.dataset;
    if (button.dataset.self && !window.confirm("Remove your own grant? You may lose access to this endpoint.")) return;
    try {
      // The API replaces the whole list (PUT): read it, drop this grant, write the rest back.
      const response = await fetch(page.permissionsApi);
      if (!response.ok) throw new Error(await errorText(response));
      const acl = (await response.json()).access_control_list
        .filter((e) => !e.all_permissions[0].inherited)
        .filter((e) => !(kind === "group" ? e.group_name === name : e.user_name === name))
        .map((e) => ({
          ...principal(e.group_name ? "group" : "user", e.group_name || e.user_name),
          permission_level: e.all_permissions[0].permission_level,
        }));
      await changeGrants("PUT", acl);
      await refreshPermissions();
    } catch (err) {
      document.querySelector("[data-grant-error]").textContent = err.message;
    }
  });

  loadCharts();
  loadLogs(); // the same tail the server rendered, now with the cursor that "follow" continues from
})();
