// The original page, fed from the queue: read the text stream incrementally, one value per
// line; show the latest value and the list of all values, then "Done" (or the failure).
// Each line is the value whose index follows the last one's: the stream says where its values
// begin (Jobcast-First-Value, when not at the index asked for), so the page knows every
// value's index, and a reconnect resumes after the last one shown
// (?start=<next index>&epoch=<Jobcast-Epoch>). Values the server's log no longer keeps
// (Jobcast-Values-Lost: a capped log) are said, never hidden. When Redis lost values the page
// had (a failover), the answer says so in Jobcast-Reset: the page drops them, by index, and
// says so. A refusal (a bad or expired link, a session that ended) is said, and not retried;
// anything else is retried after a full-jitter wait, or the server's Retry-After.
(function () {
  "use strict";
  var script = document.currentScript;
  var streamUrl = script.dataset.stream;
  var statusUrl = script.dataset.status;
  var latest = document.getElementById("latest");
  var output = document.getElementById("output");
  var numberFormat = new Intl.NumberFormat("en");
  var next = 0;       // index of the next value the stream sends: a reconnect resumes there (?start=)
  var epoch = null;   // the epoch of the log's incarnation they belong to (Jobcast-Epoch)
  var lost = 0;       // values this page asked for that the log no longer kept
  var lostNote = null;
  var retries = 0;
  var SHOWN = 10000;  // values the list keeps; earlier ones leave it in blocks (the DOM of a
                      // job of a million values would hold a million items)
  var hidden = 0, hiddenNote = null;
  var notBefore = 0;  // Date.now() before which no retry starts (a 429 or 503's Retry-After)
  var ended = -1;     // `next` when the status last said the job had ended (see finish)
  var status = document.getElementById("status");

  function show(value) {
    latest.textContent = value;
    var item = document.createElement("li");
    item.textContent = value;     // textContent, never innerHTML: values are data
    item.dataset.i = String(next);
    output.appendChild(item);
    next += 1;
    if (output.children.length > SHOWN + SHOWN / 10) {
      var drop = output.children.length - SHOWN;
      for (var k = 0; k < drop; k++) { output.removeChild(output.firstChild); }
      hidden += drop;
      hiddenNote = hiddenNote || note("");
      hiddenNote.textContent = numberFormat.format(hidden) +
        " earlier values are not shown here (the raw text stream has every one)";
    }
  }

  function note(text) {
    var p = document.createElement("p");
    p.className = "note";
    p.textContent = text;
    output.parentNode.insertBefore(p, output);
    return p;
  }

  // The end (or why the page stopped), said where it shows and to screen readers, which are
  // not told each value.
  function end(text) {
    latest.textContent = text;
    status.textContent = text;
  }

  // The stream ended: the job is over, or the server closed it (a restart). Ask which. A job
  // that has ended with values this page has not had (its stream was closed by a restart as
  // the last of them reached the web) is read once more from where the page stands.
  function finish() {
    fetch(statusUrl).then(function (r) { return r.json(); }).then(function (job) {
      var over = { finished: "Done", failed: "Failed: " + (job.reason || ""),
                   cancelled: "Cancelled" }[job.status];
      if (over === undefined) { retry(); return; }
      if (job.progress && job.progress.i > next && ended !== next) {
        ended = next;   // once per position: a log that no longer keeps them cannot loop
        read();
        return;
      }
      end(over);
    }, retry);
  }

  // Jobcast-Reset: "epoch=E; after=22; values=20; reason=lost": the values from index
  // `values` on are void (the page may hold fewer: a capped log starts later), and the stream
  // goes on from there.
  function reset(header) {
    var values = parseInt((/values=(\d+)/.exec(header) || [0, "0"])[1], 10);
    while (output.lastChild && parseInt(output.lastChild.dataset.i, 10) >= values) {
      output.removeChild(output.lastChild);
    }
    next = values;
    note("The job's log was reset after a Redis failover: values from #" + values +
         " on were replaced.");
  }

  // Where this answer's values begin, and how many of those asked for are gone (as the job
  // page words it). One note, counting all of them: a later reconnect may find more gone.
  function placed(response) {
    var first = response.headers.get("Jobcast-First-Value");
    if (first !== null && /^\d+$/.test(first)) { next = parseInt(first, 10); }
    var gone = parseInt(response.headers.get("Jobcast-Values-Lost") || "0", 10);
    if (gone > 0) {
      lost += gone;
      lostNote = lostNote || note("");
      lostNote.textContent = numberFormat.format(lost) + " earlier values are no longer kept";
    }
  }

  // Resume after the values already shown: after a full-jitter wait (every page of a restarted
  // server must not come back at the same instant), and not before the server's Retry-After.
  function retry() {
    retries += 1;
    latest.textContent = "reconnecting…";
    var wait = Math.random() * Math.min(10000, 500 * Math.pow(2, retries));
    setTimeout(read, Math.max(wait, notBefore - Date.now()));
  }

  // The server refused the stream: say why (its JSON message), and stop.
  function refused(response) {
    return response.json().catch(function () { return {}; }).then(function (body) {
      end("Stopped: " + (body.message || "HTTP " + response.status));
    });
  }

  function read() {
    var buffered = "";
    var decoder = new TextDecoder();
    // streamUrl may carry a view link's ?sig=: add to its query.
    var query = "start=" + next + (epoch ? "&epoch=" + encodeURIComponent(epoch) : "");
    fetch(streamUrl + (streamUrl.indexOf("?") < 0 ? "?" : "&") + query).then(function (response) {
      if (response.status === 404) { end("This job is gone"); return; }
      if ([400, 401, 403, 414].indexOf(response.status) >= 0) { return refused(response); }
      if (!response.ok) {
        var after = parseFloat(response.headers.get("Retry-After"));
        if (after > 0) { notBefore = Date.now() + 1000 * after + Math.random() * 1000; }
        throw new Error("HTTP " + response.status);
      }
      // The reset first: the other headers describe the stream as it goes on after it.
      if (response.headers.get("Jobcast-Reset")) { reset(response.headers.get("Jobcast-Reset")); }
      placed(response);
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
