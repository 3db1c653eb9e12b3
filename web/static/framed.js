// The iframe page: bring the streamed HTML back when it stops short of its end.
//
// The stream brings itself back (its own script, static/frame.js), as it does in any page
// that embeds it. What it cannot mend is a document that is not its own: the browser's
// error page, should a load meet no server after all. So once the iframe holds a document
// without the stream's script, or one that ended without the job's end line and without a
// refresh to come (a stream of an older server, whose goodbye refreshed it), it is loaded
// again (every value again, then the live ones), after a full-jitter wait that grows while
// the server stays away. The same for such a document still loading that has not grown for
// two heartbeats (a cut connection: Chromium leaves it loading, and no load event comes).
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
    if (doc && doc.querySelector("script[data-heartbeat]")) { attempt = 0; return; }  // its own
    if (doc && doc.querySelector("p.end")) { attempt = 0; return; }     // the job has ended
    if (doc && doc.querySelector("meta[http-equiv=refresh]")) { return; }  // it comes back itself
    if (doc && doc.querySelector("p")) { attempt = 0; }                // it was streaming
    again();
  });

  setInterval(function () {
    var doc = null;
    try { doc = frame.contentDocument; } catch (e) { doc = null; }
    if (!doc || doc.readyState === "complete" || timer !== null) { return; }
    if (doc.querySelector("script[data-heartbeat]")) { return; }  // it brings itself back
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
