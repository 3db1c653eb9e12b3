// The original page, fed from the queue: read the text stream incrementally, one value per
// line; show the latest value and the list of all values, then "Done" (or the failure).
(function () {
  "use strict";
  var script = document.currentScript;
  var streamUrl = script.dataset.stream;
  var statusUrl = script.dataset.status;
  var latest = document.getElementById("latest");
  var output = document.getElementById("output");
  var count = 0;      // values received so far: a reconnect resumes from here (?start=)
  var retries = 0;

  function show(value) {
    latest.textContent = value;
    var item = document.createElement("li");
    item.textContent = value;     // textContent, never innerHTML: values are data
    output.appendChild(item);
    count += 1;
  }

  // The stream ended: the job is over, or the server closed it (a restart). Ask which.
  function finish() {
    fetch(statusUrl).then(function (r) { return r.json(); }).then(function (job) {
      if (job.status === "finished") { latest.textContent = "Done"; }
      else if (job.status === "failed") { latest.textContent = "Failed: " + (job.reason || ""); }
      else if (job.status === "cancelled") { latest.textContent = "Cancelled"; }
      else { retry(); }
    }, retry);
  }

  function retry() {
    // Resume after the values already shown.
    retries += 1;
    latest.textContent = "reconnecting…";
    setTimeout(read, Math.min(5000, 250 * Math.pow(2, retries)));
  }

  function read() {
    var buffered = "";
    var decoder = new TextDecoder();
    // streamUrl may carry a view link's ?sig=: add to its query.
    fetch(streamUrl + (streamUrl.indexOf("?") < 0 ? "?" : "&") + "start=" + count).then(function (response) {
      if (!response.ok) { throw new Error("HTTP " + response.status); }
      var reader = response.body.getReader();
      function pump() {
        return reader.read().then(function (chunk) {
          if (chunk.done) { finish(); return; }
          retries = 0;
          buffered += decoder.decode(chunk.value, { stream: true });
          var lines = buffered.split("\n");
          buffered = lines.pop();        // an incomplete last line waits for more bytes
          lines.forEach(show);
          return pump();
        });
      }
      return pump();
    }).catch(retry);
  }
  read();
})();
