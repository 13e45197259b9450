// jit-broker console: copy buttons and expiry countdowns. No inline script anywhere.
"use strict";
function remaining(iso) {
  const seconds = Math.max(0, Math.round((Date.parse(iso) - Date.now()) / 1000));
  const m = Math.floor(seconds / 60), s = seconds % 60;
  return seconds === 0 ? "expired" : (m > 0 ? m + " min " : "") + s + " s left";
}
function tick() {
  document.querySelectorAll("[data-countdown]").forEach((el) => {
    const iso = el.getAttribute("data-countdown");
    el.textContent = new Date(iso).toLocaleString() + " (" + remaining(iso) + ")";
  });
}
// Times in the viewer's time zone; the UTC time stays in the title (shown on hover).
function localTimes() {
  document.querySelectorAll("time[data-local]").forEach((el) => {
    const at = new Date(el.getAttribute("datetime"));
    if (!Number.isNaN(at.getTime())) { el.textContent = at.toLocaleString(); }
  });
}
document.addEventListener("DOMContentLoaded", () => {
  localTimes();
  tick();
  setInterval(tick, 1000);
  document.querySelectorAll("[data-copy]").forEach((button) => {
    button.addEventListener("click", async () => {
      const target = document.getElementById(button.getAttribute("data-copy"));
      if (target && navigator.clipboard) {
        await navigator.clipboard.writeText(target.textContent);
        button.textContent = "Copied";
      }
    });
  });
});
// Shown once: leaving the page must not keep the credential in the back/forward cache.
window.addEventListener("pagehide", () => {
  document.querySelectorAll(".credential code").forEach((el) => { el.textContent = ""; });
});
