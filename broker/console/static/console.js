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
function localTimes(root) {
  (root || document).querySelectorAll("time[data-local]").forEach((el) => {
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

// --- the auditor's and admin's pages ---------------------------------------------------
// [data-refresh="N"]: fetch this page again every N seconds and swap the element in,
// until the fresh copy no longer asks for it (an offboarding that completed).
function watch(el) {
  const seconds = Math.max(1, Number(el.getAttribute("data-refresh")) || 2);
  setTimeout(async () => {
    let next = el;
    try {
      const response = await fetch(window.location.href, { credentials: "same-origin" });
      if (response.redirected || !response.ok) { window.location.reload(); return; }
      const doc = new DOMParser().parseFromString(await response.text(), "text/html");
      const fresh = doc.getElementById(el.id);
      if (fresh) {
        const adopted = document.importNode(fresh, true);
        el.replaceWith(adopted);
        localTimes(adopted);
        next = adopted;
      }
    } catch (_) { /* the network blinked: try again */ }
    if (next.hasAttribute("data-refresh")) watch(next);
  }, seconds * 1000);
}

// form[data-busy]: say what is happening while a slow answer is prepared.
function busy(form) {
  form.addEventListener("submit", () => {
    form.setAttribute("aria-busy", "true");
    const button = form.querySelector("button[type=submit]");
    if (button) { button.textContent = form.getAttribute("data-busy"); button.classList.add("busy"); }
  });
}

// form[data-download] / a[data-download]: fetch the file, saying "preparing" while the
// server builds it and how much has arrived after, then save it. Without this script the
// form simply downloads.
function filename(response) {
  const match = /filename="([^"]+)"/.exec(response.headers.get("Content-Disposition") || "");
  return match ? match[1] : "download";
}
async function download(url, status, control) {
  const say = (text) => { if (status) status.textContent = text; };
  if (control) control.disabled = true;
  say("Preparing the package on the server… (it verifies the ledger and reads the period's rows)");
  try {
    const response = await fetch(url, { credentials: "same-origin" });
    if (!response.ok || !(response.headers.get("Content-Type") || "").startsWith("application/zip")) {
      const doc = new DOMParser().parseFromString(await response.text(), "text/html");
      const error = doc.querySelector(".error");
      say(error ? error.textContent : "The package could not be made (HTTP " + response.status + ").");
      return;
    }
    const total = Number(response.headers.get("Content-Length")) || 0;
    const reader = response.body.getReader();
    const chunks = [];
    let received = 0;
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      chunks.push(value);
      received += value.length;
      say("Downloading… " + Math.round(received / 1024) + " KiB" + (total ? " of " + Math.round(total / 1024) + " KiB" : ""));
    }
    const link = document.createElement("a");
    link.href = URL.createObjectURL(new Blob(chunks, { type: "application/zip" }));
    link.download = filename(response);
    document.body.appendChild(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 60000);
    say("Saved " + link.download + " (" + Math.round(received / 1024) + " KiB).");
  } catch (_) {
    say("The download failed: try again.");
  } finally {
    if (control) control.disabled = false;
  }
}
function downloads(root) {
  root.querySelectorAll("form[data-download]").forEach((form) => {
    form.addEventListener("submit", (event) => {
      if (!window.fetch || !window.ReadableStream) return;
      event.preventDefault();
      const query = new URLSearchParams(new FormData(form)).toString();
      download(form.action + "?" + query, form.querySelector("[data-progress]"), form.querySelector("button[type=submit]"));
    });
  });
  root.querySelectorAll("a[data-download]").forEach((link) => {
    link.addEventListener("click", (event) => {
      if (!window.fetch || !window.ReadableStream) return;
      event.preventDefault();
      let status = link.parentElement.querySelector("[data-progress]");
      if (!status) {
        status = document.createElement("span");
        status.setAttribute("role", "status");
        status.setAttribute("data-progress", "");
        status.className = "progress muted";
        link.after(" ", status);
      }
      download(link.href, status, null);
    });
  });
}

// A GET form leaves its blank fields out of the URL (the server ignores them anyway).
function tidy(form) {
  form.addEventListener("submit", () => {
    const blank = [...form.elements].filter((el) => el.name && el.value === "" && !el.disabled);
    blank.forEach((el) => { el.disabled = true; });
    setTimeout(() => blank.forEach((el) => { el.disabled = false; }), 0);
  });
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("form[method=get]:not([data-download])").forEach(tidy);
  document.querySelectorAll("[data-refresh][id]").forEach(watch);
  document.querySelectorAll("form[data-busy]").forEach(busy);
  downloads(document);
});
