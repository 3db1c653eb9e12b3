// The original page, fed from the queue: read the text stream incrementally, one value per
// line; show the latest value and the list of all values, then "Done" (or the failure).
// A reconnect resumes after the values shown (?start=<count>&epoch=<Jobcast-Epoch>); when Redis
// lost values the page had (a failover), the answer says so in Jobcast-Reset: the page drops
// them and says so.
(function () {
  "use strict";
  var script = document.currentScript;
  var streamUrl = script.dataset.stream;
  var statusUrl = script.dataset.status;
  var latest = document.getElementById("latest");
  var output = document.getElementById("output");
  var count = 0;      // values received so far: a reconnect resumes from here (?start=)
  var epoch = null;   // the epoch of the log's incarnation they belong to (Jobcast-Epoch)
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

  // Jobcast-Reset: "epoch=E; after=22; values=20; reason=lost": keep the first `values` values.
  function reset(header) {
    var values = parseInt((/values=(\d+)/.exec(header) || [0, "0"])[1], 10);
    while (output.children.length > values) { output.removeChild(output.lastChild); }
    count = Math.min(count, values);
    var note = document.createElement("p");
    note.className = "note";
    note.textContent = "The job's log was reset after a Redis failover: values from #" + values +
      " on were replaced.";
    output.parentNode.insertBefore(note, output);
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
    var query = "start=" + count + (epoch ? "&epoch=" + encodeURIComponent(epoch) : "");
    fetch(streamUrl + (streamUrl.indexOf("?") < 0 ? "?" : "&") + query).then(function (response) {
      if (response.status === 404) { latest.textContent = "This job is gone"; return; }
      if (!response.ok) { throw new Error("HTTP " + response.status); }
      if (response.headers.get("Jobcast-Reset")) { reset(response.headers.get("Jobcast-Reset")); }
      epoch = response.headers.get("Jobcast-Epoch") || epoch;
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
