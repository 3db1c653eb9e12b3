// The iframe page: bring the streamed HTML back when it stops short of its end.
//
// The stream is a document of its own, loaded once. When a server stops, it writes a line
// saying so and a refresh (web/frames.py); a refresh that comes while no server answers yet
// shows the browser's error page, and a cut connection shows nothing at all. So once the
// iframe's document has loaded without the job's end line and without a refresh to come, it
// is loaded again (every value again, then the live ones), after a full-jitter wait that
// grows while the server stays away.
//
// A connection cut without its last chunk (a web process killed, a proxy's reset) never ends
// the document: Chromium leaves it loading, and no load event comes. A stream sends a value
// or a heartbeat at least every JOBCAST_HEARTBEAT seconds, so a document still loading that
// has not grown for two of them is taken as cut, and loaded again the same way.
(function () {
  "use strict";
  var frame = document.getElementById("frame");
  var heartbeat = (parseFloat(frame.getAttribute("data-heartbeat")) || 15) * 1000;
  var STALLED = 2 * heartbeat + 1000;
  var attempt = 0;
  var timer = null;
  var watched = null;     // the document whose growth is watched
  var observer = null;
  var grew = Date.now();  // when it last grew

  function wait() {
    var span = Math.min(30000, 1000 * Math.pow(2, attempt));
    attempt += 1;
    return 500 + Math.floor(Math.random() * span);
  }

  function again() {
    clearTimeout(timer);
    timer = setTimeout(function () {
      timer = null;
      grew = Date.now();  // the new document gets its own time to begin
      frame.src = frame.src;
    }, wait());
  }

  frame.addEventListener("load", function () {
    clearTimeout(timer);
    timer = null;
    var doc = null;
    try { doc = frame.contentDocument; } catch (e) { doc = null; }  // an error page is not ours
    if (doc && doc.contentType !== "text/html") { return; }            // refused, or no such job
    if (doc && doc.querySelector("p.end")) { attempt = 0; return; }     // the job has ended
    if (doc && doc.querySelector("meta[http-equiv=refresh]")) { return; }  // it comes back itself
    if (doc && doc.querySelector("p")) { attempt = 0; }                // it was streaming
    again();
  });

  setInterval(function () {
    var doc = null;
    try { doc = frame.contentDocument; } catch (e) { doc = null; }
    if (!doc || doc.readyState === "complete" || timer !== null) { return; }
    if (doc !== watched) {
      if (observer) { observer.disconnect(); }
      watched = doc;
      grew = Date.now();
      observer = new MutationObserver(function () { grew = Date.now(); });
      observer.observe(doc, { childList: true, subtree: true, characterData: true });
      return;
    }
    if (Date.now() - grew > STALLED) {
      if (doc.querySelector("p")) { attempt = 0; }  // it was streaming
      again();
    }
  }, 1000);
})();
