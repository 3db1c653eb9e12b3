// The iframe page: bring the streamed HTML back when it stops short of its end.
//
// The stream is a document of its own, loaded once. When a server stops, it writes a line
// saying so and a refresh (web/frames.py); a refresh that comes while no server answers yet
// shows the browser's error page, and a cut connection shows nothing at all. So once the
// iframe's document has loaded without the job's end line and without a refresh to come, it
// is loaded again (every value again, then the live ones), after a full-jitter wait that
// grows while the server stays away.
(function () {
  "use strict";
  var frame = document.getElementById("frame");
  var attempt = 0;
  var timer = null;

  function wait() {
    var span = Math.min(30000, 1000 * Math.pow(2, attempt));
    attempt += 1;
    return 500 + Math.floor(Math.random() * span);
  }

  frame.addEventListener("load", function () {
    clearTimeout(timer);
    var doc = null;
    try { doc = frame.contentDocument; } catch (e) { doc = null; }  // an error page is not ours
    if (doc && doc.contentType !== "text/html") { return; }            // refused, or no such job
    if (doc && doc.querySelector("p.end")) { attempt = 0; return; }     // the job has ended
    if (doc && doc.querySelector("meta[http-equiv=refresh]")) { return; }  // it comes back itself
    if (doc && doc.querySelector("p")) { attempt = 0; }                // it was streaming
    timer = setTimeout(function () { frame.src = frame.src; }, wait());
  });
})();
