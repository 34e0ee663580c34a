/* The AI-gateway page (templates/dashboard/ai_gateway.html), on top of the server-rendered HTML:
 *
 * - usage charts (Chart.js) and the per-user table, from the usage API with the session cookie:
 *   /api/2.0/modelfleet/serving-endpoints/<name>/usage?group_by=minute|user&start&end (the API
 *   shows managers everyone's use and everyone else their own); refreshed every 30 s while the
 *   tab is visible;
 * - rate-limit rows added and removed without a round trip; the user/group box is disabled for
 *   "everyone together", to which it does not apply.
 *
 * Without this file the settings form still works (its buttons re-render it on the server).
 */
(function () {
  "use strict";

  const data = JSON.parse(document.getElementById("ai-gateway-data").textContent);
  const COLOURS = ["#2f5bd3", "#c2410c", "#0f766e", "#7e22ce", "#a16207", "#be185d"];
  const REFRESH_MS = 30000;

  /* --- usage ---------------------------------------------------------------------------------- */

  const status = document.getElementById("usage-status");
  const userRows = document.getElementById("usage-user-rows");
  const rangeButtons = Array.from(document.querySelectorAll("[data-range]"));
  const charts = {};
  let rangeSeconds = 86400;
  let loading = null;

  // Bars per range: one per minute for an hour, then wider buckets, so a chart has 60–100 bars.
  function bucketSeconds(range) {
    if (range <= 3600) return 60;
    if (range <= 6 * 3600) return 300;
    if (range <= 86400) return 900;
    return 7200;
  }

  function timeLabel(ms, withDate) {
    const d = new Date(ms);
    const hm = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    return withDate ? d.toLocaleDateString([], { month: "short", day: "numeric" }) + " " + hm : hm;
  }

  function draw(id, type, labels, datasets, options) {
    const existing = charts[id];
    if (existing) {
      existing.data.labels = labels;
      existing.data.datasets = datasets;
      existing.update("none");
      return;
    }
    charts[id] = new window.Chart(document.getElementById(id), {
      type: type,
      data: { labels: labels, datasets: datasets },
      options: Object.assign(
        {
          animation: false,
          responsive: true,
          maintainAspectRatio: false,
          interaction: { mode: "index", intersect: false },
          plugins: { legend: { display: datasets.length > 1, position: "bottom", labels: { boxWidth: 12 } } },
        },
        options
      ),
    });
  }

  async function fetchUsage(groupBy, start, end) {
    const params = new URLSearchParams({ group_by: groupBy, start: String(start), end: String(end) });
    const response = await fetch(data.usageUrl + "?" + params, { headers: { Accept: "application/json" } });
    if (!response.ok) {
      let message = response.status + " " + response.statusText;
      try {
        message = (await response.json()).message || message;
      } catch (err) {
        /* not JSON: keep the status line */
      }
      throw new Error(message);
    }
    return response.json();
  }

  function fillUserTable(rows) {
    if (!rows.length) {
      const cell = document.createElement("td");
      cell.colSpan = 4;
      cell.className = "muted";
      cell.textContent = "No usage in this range.";
      userRows.replaceChildren(document.createElement("tr"));
      userRows.firstElementChild.append(cell);
      return;
    }
    userRows.replaceChildren(
      ...rows.map((row) => {
        const tr = document.createElement("tr");
        const name = document.createElement("th");
        name.scope = "row";
        name.textContent = row.user;
        tr.append(name);
        for (const value of [row.requests, row.input_tokens, row.output_tokens]) {
          const td = document.createElement("td");
          td.className = "num";
          td.textContent = value.toLocaleString();
          tr.append(td);
        }
        return tr;
      })
    );
  }

  async function loadUsage() {
    if (!window.Chart) {
      status.textContent = "The chart library did not load.";
      return;
    }
    const step = bucketSeconds(rangeSeconds) * 1000;
    const end = Math.ceil(Date.now() / step) * step; // bucket edges on the clock
    const start = end - Math.ceil((rangeSeconds * 1000) / step) * step;
    const mine = (loading = {});
    status.textContent = "Loading…";
    let minutes, users;
    try {
      [minutes, users] = await Promise.all([fetchUsage("minute", start, end), fetchUsage("user", start, end)]);
    } catch (err) {
      if (mine === loading) status.textContent = "Could not load the usage: " + err.message;
      return;
    }
    if (mine !== loading) return; // a newer range was picked meanwhile

    // 1. Per-minute rows into buckets (every bucket of the range, empty ones as 0).
    const count = Math.round((end - start) / step);
    const requests = new Array(count).fill(0);
    const input = new Array(count).fill(0);
    const output = new Array(count).fill(0);
    for (const row of minutes.usage) {
      const i = Math.floor((row.minute - start) / step);
      if (i < 0 || i >= count) continue;
      requests[i] += row.requests;
      input[i] += row.input_tokens;
      output[i] += row.output_tokens;
    }
    const withDate = end - start > 86400 * 1000;
    const labels = requests.map((_, i) => timeLabel(start + i * step, withDate));
    const timeAxes = {
      x: { stacked: true, ticks: { maxTicksLimit: 8, autoSkip: true, maxRotation: 0 } },
      y: { stacked: true, beginAtZero: true, ticks: { maxTicksLimit: 5, precision: 0 } },
    };
    draw("usage-requests", "bar", labels, [{ label: "requests", data: requests, backgroundColor: COLOURS[0] }], {
      scales: timeAxes,
    });
    draw(
      "usage-tokens",
      "bar",
      labels,
      [
        { label: "input tokens", data: input, backgroundColor: COLOURS[0] },
        { label: "output tokens", data: output, backgroundColor: COLOURS[1] },
      ],
      { scales: timeAxes }
    );

    // 2. Per user: a horizontal bar each (input + output tokens), and the table.
    const people = users.usage.slice().sort((a, b) => b.input_tokens + b.output_tokens - (a.input_tokens + a.output_tokens));
    draw(
      "usage-users",
      "bar",
      people.map((row) => row.user),
      [
        { label: "input tokens", data: people.map((row) => row.input_tokens), backgroundColor: COLOURS[2] },
        { label: "output tokens", data: people.map((row) => row.output_tokens), backgroundColor: COLOURS[3] },
      ],
      {
        indexAxis: "y",
        interaction: { mode: "index", axis: "y", intersect: false },
        scales: { x: { stacked: true, beginAtZero: true, ticks: { precision: 0 } }, y: { stacked: true } },
      }
    );
    fillUserTable(people);

    const totals = minutes.totals;
    status.textContent = totals.requests
      ? `${totals.requests.toLocaleString()} requests, ${totals.input_tokens.toLocaleString()} input and ` +
        `${totals.output_tokens.toLocaleString()} output tokens in this range · one bar per ${step / 60000} min · updated ` +
        new Date().toLocaleTimeString()
      : "No usage in this range yet.";
  }

  for (const button of rangeButtons) {
    button.disabled = false;
    button.addEventListener("click", () => {
      rangeSeconds = parseInt(button.dataset.range, 10);
      for (const other of rangeButtons) other.setAttribute("aria-pressed", String(other === button));
      loadUsage();
    });
  }
  setInterval(() => {
    if (!document.hidden) loadUsage();
  }, REFRESH_MS);
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) loadUsage();
  });
  loadUsage();

  /* --- rate-limit rows ------------------------------------------------------------------------ */

  const form = document.querySelector("form[data-ai-gateway-form]");
  if (!form) return; // not a manager: no settings form
  const rows = form.querySelector("[data-limit-rows]");
  const totalForms = form.querySelector("input[name='limits-TOTAL_FORMS']");
  const template = document.getElementById("limit-row-template");
  const addButton = form.querySelector("[data-add-limit]");

  function enhanceRow(row) {
    const key = row.querySelector("select[name$='-key']");
    const principal = row.querySelector("input[name$='-principal']");
    const sync = () => {
      principal.disabled = key.value === "endpoint";
      if (principal.disabled) principal.value = "";
    };
    key.addEventListener("change", sync);
    if (!principal.value) sync();

    // Removing: the DELETE box is ticked and the row hidden (it is still sent, marked deleted).
    const box = row.querySelector("input[name$='-DELETE']");
    const cell = box.closest("td");
    box.hidden = true;
    cell.querySelector(`label[for="${box.id}"]`).hidden = true;
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "secondary small danger";
    remove.textContent = "Remove";
    remove.setAttribute("aria-label", "Remove this rate limit");
    remove.addEventListener("click", () => {
      box.checked = true;
      row.hidden = true;
      addButton.focus();
    });
    box.after(remove);
    if (box.checked) row.hidden = true;
  }

  addButton.type = "button";
  addButton.addEventListener("click", () => {
    const index = parseInt(totalForms.value, 10);
    const holder = document.createElement("tbody");
    holder.innerHTML = template.innerHTML.replaceAll("__prefix__", String(index)).trim();
    const row = holder.firstElementChild;
    const placeholder = rows.querySelector("[data-no-limits]");
    if (placeholder) placeholder.remove();
    rows.append(row);
    totalForms.value = String(index + 1);
    enhanceRow(row);
    row.querySelector("input").focus();
  });
  for (const row of rows.querySelectorAll("[data-limit-row]")) enhanceRow(row);
})();
