// hubhook's web page: the one script. It refreshes the list (the element with
// data-refresh, every that many seconds) in place while the tab is visible; without it
// the page works the same, only without the live refresh.
"use strict";
(function () {
  const live = document.querySelector("[data-refresh]");
  if (!live || !window.fetch || !window.DOMParser) return;
  const every = Math.max(2, Number(live.dataset.refresh) || 5) * 1000;
  let busy = false;
  async function refresh() {
    // One refresh at a time: a slow answer is not joined by more.
    if (busy || document.visibilityState !== "visible") return;
    busy = true;
    try {
      const answer = await fetch(location.href, { credentials: "same-origin", redirect: "manual" });
      if (!answer.ok) return;
      const page = new DOMParser().parseFromString(await answer.text(), "text/html");
      const fresh = page.querySelector("[data-refresh]");
      if (fresh) live.replaceChildren(...fresh.childNodes);
    } catch (_) {
      // Offline or restarting: the next tick tries again.
    } finally {
      busy = false;
    }
  }
  setInterval(refresh, every);
})();
