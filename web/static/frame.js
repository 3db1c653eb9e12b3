// The streamed HTML of a job (/jobs/<id>/frame), brought back when it stops short of its end.
//
// It runs inside the stream's own document, so any page that embeds the stream in an
// <iframe> gets it. A stopping server ends the stream with a line saying so; a cut connection
// (a web process killed, a proxy's reset) ends nothing, and Chromium leaves the document
// loading, growing no more. A stream sends a value or a heartbeat at least every
// JOBCAST_HEARTBEAT seconds (data-heartbeat), so one that has not grown for two of them is
// taken as cut. Either way, once the stream answers again (a HEAD of it that is not a 5xx),
// the document is loaded again: every value, then the live ones. The HEADs are spaced by a
// full-jitter wait that grows while the server stays away, so a restart's viewers do not all
// come back at once. (A refresh in the goodbye, for a browser without scripts, met a server
// not yet up and left the browser's error page for good.)
(function () {
  "use strict";
  var me = document.currentScript;
  var STALLED = 2 * (parseFloat(me.getAttribute("data-heartbeat")) || 15) * 1000 + 1000;
  var attempt = 0;
  var grew = Date.now();  // when the document last grew
  var leaving = false;

  function ended() { return document.querySelector("p.end") !== null; }

  function wait() {
    var span = Math.min(30000, 1000 * Math.pow(2, attempt));
    attempt += 1;
    return 500 + Math.floor(Math.random() * span);
  }

  // How many asks found no server yet, on the document (<html data-away>): it can be seen.
  function away() {
    document.documentElement.setAttribute("data-away", String(attempt));
    ask();
  }

  function comeBack() {
    if (leaving || ended()) { return; }
    leaving = true;
    ask();
  }

  // Once the stream answers (anything but a 5xx: a 404 too, which the reload then shows).
  function ask() {
    setTimeout(function () {
      fetch(location.href, { method: "HEAD", cache: "no-store" }).then(function (r) {
        if (r.status >= 500) { away(); } else { location.reload(); }
      }, away);
    }, wait());
  }

  new MutationObserver(function () { grew = Date.now(); })
    .observe(document, { childList: true, subtree: true, characterData: true });
  window.addEventListener("load", comeBack);  // the stream ended: with the job, or not
  setInterval(function () {
    if (document.readyState !== "complete" && Date.now() - grew > STALLED) { comeBack(); }
  }, 1000);
})();
