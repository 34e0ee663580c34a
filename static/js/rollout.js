/* The endpoint page's rollout strip (templates/dashboard/_rollout_strip.html), live: while the plan
 * waits, runs or is paused, read it from the rollouts API every few seconds (the session cookie
 * signs the GET) and reload the page when its state or step changes, so the strip, the entities'
 * shares and the buttons follow it; the gate readings are updated in place in between. */
(function () {
  "use strict";

  const strip = document.getElementById("rollout");
  const url = strip && strip.dataset.rolloutApi;
  if (!url || !["PENDING_APPROVAL", "RUNNING", "PAUSED"].includes(strip.dataset.rolloutState)) return;
  const status = strip.querySelector("[data-rollout-status]");

  async function poll() {
    try {
      const response = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
      if (!response.ok) return;
      const plan = await response.json();
      if (plan.state !== strip.dataset.rolloutState || String(plan.current_step) !== strip.dataset.rolloutStep) {
        window.location.reload();
        return;
      }
      const readings = plan.readings;
      if (status && readings) {
        status.textContent =
          `Now: ${readings.status} after ${readings.elapsed_seconds} s; new version ` +
          `${readings.new_version.requests} requests (4xx ${readings.new_version.rate_4xx}, ` +
          `p99 ${readings.new_version.p99_ms ?? "–"} ms), current ${readings.current_version.requests} requests ` +
          `(4xx ${readings.current_version.rate_4xx}, p99 ${readings.current_version.p99_ms ?? "–"} ms).`;
      }
    } catch (_) {
      /* the next poll tries again */
    }
  }

  window.setInterval(poll, 3000);
})();
