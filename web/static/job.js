// The live job page. It watches the job through jobcast.js (one stream per browser, shared
// by its tabs) and shows the latest value, a chart, progress, status, elapsed time, watchers
// and the log.
//
// Keeping up: events only update a model; the DOM and the canvas are redrawn at most once a
// frame. The log is virtualised (only the rows in view exist in the DOM) and the chart is
// downsampled (chart.js), so a job of 100k values does not freeze the tab.
//
// Never a gap, never a duplicate: jobcast.js hands each entry over once, in seq order, and
// resumes from the last one across reconnections (with a backoff, showing "reconnecting…").
// Nothing is polled: the status, worker and progress come from the entries; the watchers
// count from the job's status, which jobcast.js reads every 15 s for all of a browser's tabs.
//
// Long jobs open at the tail: the first connection asks for the last WINDOW values only
// (tail), the chart loads the worker's downsampled history in one request, and the log
// offers "Load earlier values". A log the server has trimmed is said so, never hidden.
//
// The Output panel shows what the job printed (`log` entries), virtualised like the log:
// stderr and warnings marked, ANSI colours as classes, every other control sequence dropped.
(function () {
  "use strict";
  var root = document.getElementById("job");
  var $ = function (id) { return document.getElementById(id); };
  var el = {
    connection: $("connection"), latest: $("latest"), end: $("end"), status: $("status"),
    worker: $("worker"), elapsed: $("elapsed"), viewers: $("viewers"), progress: $("progress"),
    progressText: $("progress-text"), chart: $("chart"), logView: $("log-view"),
    logSpacer: $("log-spacer"), log: $("log"), logCount: $("log-count"), logJump: $("log-jump"),
    events: $("events"), stop: $("stop"), notice: $("notice"), logEarlier: $("log-earlier"),
    outputView: $("output-view"), outputSpacer: $("output-spacer"), output: $("output-lines"),
    outputJump: $("output-jump"), outputCount: $("output-count"), outputNote: $("output-note")
  };
  var TERMINAL = { finished: true, failed: true, cancelled: true };
  var FULL = 10000;                 // a job with more values than this opens at its tail,
  var WINDOW = 2000;                // with this many values; earlier ones on request,
  var EARLIER = 2000;               // this many at a time
  var LOG_CAP = 200000;             // values kept for the log; older ones are dropped in blocks,
  var LOG_CHARS = 1 << 25;          // and so are they past this many characters (a value may be 64 KiB)
  var numberFormat = new Intl.NumberFormat("en");

  function countChars(texts) { return texts.reduce(function (sum, t) { return sum + t.length; }, 0); }

  function withQuery(url, query) { return url + (url.indexOf("?") < 0 ? "?" : "&") + query; }

  function num(text) { return text === "" || text === undefined ? null : parseFloat(text); }

  var state = {
    id: root.dataset.id,
    status: root.dataset.status,
    n: num(root.dataset.n),
    createdAt: num(root.dataset.created),
    startedAt: num(root.dataset.started),
    endedAt: num(root.dataset.ended),
    worker: null, attempt: 0, reason: null,
    lastSeq: 0,                     // seq of the last entry applied
    lastIndex: -1,                  // i of the last value
    values: 0,                      // values received
    texts: [], indices: [],         // the log model (the last LOG_CAP values)
    chars: 0,                       // the characters of its texts
    dropped: 0,                     // values dropped from the front of the log model
    ended: false,
    connection: "connecting",
    trimmed: 0,                     // values the server's log no longer had for this page
    viewers: null,
    oldestSeq: null,                // seq of the first value in the log model (to load earlier)
    resets: 0,                      // times the log was reset under the page (a failover)
    notice: ""
  };

  var chart = new window.JobcastChart(el.chart);
  chart.total = state.n;

  // ---- the stream ------------------------------------------------------------------------

  var watch = null;
  var CONNECTION_TEXT = { connecting: "connecting…", live: "live", reconnecting: "reconnecting…",
                          ended: "stream ended" };

  function setConnection(name) {
    if (state.connection === name) { return; }
    state.connection = name;
    el.connection.dataset.state = name;
    el.connection.textContent = CONNECTION_TEXT[name];
  }

  // Watch the job: the whole log, or the last WINDOW values of a long job. A view link's
  // signature (private mode) rides in the page's stream URL: the watch carries it.
  function connect() {
    var sig = new URL(root.dataset.events, location.href).searchParams.get("sig");
    watch = window.Jobcast.watch(state.id, {
      sig: sig,
      tail: num(root.dataset.values) > FULL ? WINDOW : null,
      onEvent: receive,
      onTail: tailStart,
      onTrimmed: trimmed,
      onState: function (s) { if (!state.ended) { setConnection(s); } },
      onStatus: status,
      onEnd: ended,
      // Redis failed over and lost what came after `after`: drop what the log no longer has.
      onReset: reset
    });
  }

  // The stream starts at the tail: `skipped` values came before it. Resume from its start,
  // and draw the skipped part of the chart from the worker's snapshot.
  var chartPending = null;          // values received while the snapshot loads: [i, j] pairs
  var chartUpto = -1;               // the snapshot holds every value up to this index
  function tailStart(t) {
    if (state.lastSeq === 0 && t.after > 0) { state.lastSeq = t.after; }
    if (t.skipped > 0) {
      // The stream starts at the tail: the output printed before it is in the download.
      outputNote("Output before the last " + numberFormat.format(t.tail) + " values is not shown here");
      state.skipped = t.skipped;
      el.logEarlier.hidden = false;
      if (chartPending === null) { loadChart(); }
    }
  }

  function loadChart() {
    chartPending = [];
    // Given up on after 20 s (a server that never answers): the values waiting meanwhile are
    // drawn, and no more are held for it.
    var ctl = typeof AbortController === "function" ? new AbortController() : null;
    var giveUp = ctl ? setTimeout(function () { ctl.abort(); }, 20000) : null;
    fetch(root.dataset.chartUrl, { cache: "no-store", signal: ctl ? ctl.signal : undefined }).then(function (r) {
      if (!r.ok) { throw new Error("HTTP " + r.status); }
      return r.json();
    }).then(function (snap) {
      if (snap.upto >= 0) { chart.load(snap); chartUpto = snap.upto; }
      chartPending.forEach(function (p) { if (p[0] > chartUpto) { chart.add(p[0], p[1]); } });
    }).catch(function () {
      chartPending.forEach(function (p) { chart.add(p[0], p[1]); });
    }).then(function () { clearTimeout(giveUp); chartPending = false; schedule(); });
  }

  // The server's log no longer has entries this page would have shown: say how many values.
  function trimmed(t) {
    if (t.first_seq - 1 > state.lastSeq) {
      state.trimmed += t.first_seq - 1 - state.lastSeq;
      state.lastSeq = t.first_seq - 1;
    }
    var have = Math.max(state.lastIndex + 1, state.skipped || 0);
    var lost = t.first_value === null || t.first_value === undefined ? 0 : t.first_value - have;
    if (lost <= 0) { return; }
    showNotice(have === 0 ? numberFormat.format(lost) + " earlier values are no longer kept" :
               "values #" + numberFormat.format(have) + " to #" + numberFormat.format(t.first_value - 1) +
               " are no longer kept (" + numberFormat.format(lost) + ")");
    // The worker's chart snapshot still has them: the chart covers the whole job.
    if (chartPending === null) { loadChart(); }
  }

  // The job's log was reset (a Redis failover lost entries it had): forget every entry after
  // `r.after` (the values from `r.values` on, the lines printed, the history), tell the
  // person, and go on from there (jobcast.js resumes after `r.after`).
  function reset(r) {
    state.resets += 1;
    var keep = 0;
    while (keep < state.indices.length && state.indices[keep] < r.values) { keep += 1; }
    var replaced = state.lastIndex + 1 - r.values;
    state.texts.splice(keep);
    state.indices.splice(keep);
    state.chars = countChars(state.texts);
    state.lastIndex = Math.min(state.lastIndex, r.values - 1);
    state.values = Math.min(state.values, keep + state.dropped);
    if (state.texts.length === 0) { state.oldestSeq = null; }
    chart.truncate(r.values);
    // The snapshot's values from r.values on are void too: the new ones are drawn as they
    // come, and none held for the snapshot is.
    chartUpto = Math.min(chartUpto, r.values - 1);
    if (chartPending) { chartPending = chartPending.filter(function (p) { return p[0] < r.values; }); }
    state.lastSeq = Math.min(state.lastSeq, r.after);
    forgetRows(el.log, "i");        // a new value may come with an index a row still shows
    log.shifted(0);
    truncateOutput(r.after);
    truncateEvents(r.after);
    showNotice("The job's log was reset after a Redis failover: " + (replaced > 0
      ? "values from #" + numberFormat.format(r.values) + " on were replaced"
      : "it goes on from value #" + numberFormat.format(r.values)));
    schedule();
  }

  function showNotice(text) {
    state.notice = text;
    el.notice.textContent = text;
    el.notice.hidden = false;
  }

  // An entry, once and in seq order (jobcast.js sees to both).
  function receive(e) {
    state.lastSeq = e.seq;
    apply(e);
  }

  function apply(e) {
    switch (e.kind) {
      case "queued":
        state.status = "queued";
        if (e.n !== undefined && e.n !== null) { state.n = e.n; chart.total = e.n; }
        if (state.createdAt === null) { state.createdAt = e.ts; }
        break;
      case "started":
        state.status = "running";
        state.worker = e.worker;
        state.attempt = e.attempt;
        // Elapsed time counts from the first attempt's start.
        state.startedAt = state.startedAt === null ? e.ts : Math.min(state.startedAt, e.ts);
        break;
      case "value":
        state.status = "running";
        if (e.n !== undefined && e.n !== null) { state.n = e.n; chart.total = e.n; }  // emit(v, total=n)
        state.values += 1;
        state.lastIndex = e.i;
        if (state.texts.length === 0) { state.oldestSeq = e.seq; }
        state.texts.push(e.v);
        state.indices.push(e.i);
        state.chars += e.v.length;
        if (state.texts.length > LOG_CAP + LOG_CAP / 10 || state.chars > LOG_CHARS + LOG_CHARS / 10) {
          var drop = Math.max(0, state.texts.length - LOG_CAP), chars = state.chars;
          for (var k = 0; k < drop; k++) { chars -= state.texts[k].length; }
          while (chars > LOG_CHARS && drop < state.texts.length - 1) { chars -= state.texts[drop].length; drop += 1; }
          state.chars = chars;
          state.texts.splice(0, drop);
          state.indices.splice(0, drop);
          state.dropped += drop;
          state.oldestSeq = null;       // the model no longer starts where the server's log does
          el.logEarlier.hidden = true;
          log.shifted(drop);
        }
        if (chartPending) { chartPending.push([e.i, e.j]); } else if (e.i > chartUpto) { chart.add(e.i, e.j); }
        break;
      case "log":
        addOutput(e);
        break;
      case "retrying":
        state.status = "retrying";
        state.reason = e.reason;
        break;
      case "finished":
      case "failed":
      case "cancelled":
        state.status = e.kind;
        state.reason = e.kind === "cancelled" ? "by " + e.by : (e.reason || null);
        state.endedAt = e.ts;
        finish();
        break;
    }
    if (e.kind !== "value" && e.kind !== "log") { addEvent(e); }
    schedule();
  }

  var stopPressed = false;           // the Stop button was pressed, and had the focus
  function finish() {
    state.ended = true;
    var focused = document.activeElement;
    el.stop.hidden = true;
    if (stopPressed && (focused === el.stop || focused === document.body || !focused)) {
      // The focus was on the button now hidden: it goes to what says how the job ended,
      // not to the page's body.
      el.end.tabIndex = -1;
      el.end.focus();
    }
    setConnection("ended");
  }

  // The stream ended without a terminal entry: the job is gone (expired), had ended before
  // this page's position, or this page may not read it. The status says which.
  function ended(e) {
    if (TERMINAL[e.kind]) { return; }   // applied as an entry already
    setConnection("ended");
    if (e.kind === "refused") { showNotice("The stream was refused: " + (e.message || "HTTP " + e.status)); }
    fetchStatus().then(function (job) {
      if (TERMINAL[job.status]) { endAs(job); } else if (e.kind === "missing") { showNotice("This job's log is no longer kept"); }
    }).catch(function () {
      if (e.kind === "missing") { showNotice("This job's log is no longer kept"); }
    });
  }

  // The job's status (GET /api/jobs/<id>).
  function fetchStatus() {
    return fetch(root.dataset.statusUrl, { cache: "no-store" }).then(function (r) {
      if (!r.ok) { throw new Error("HTTP " + r.status); }
      return r.json();
    }).then(function (job) { status(job); return job; });
  }

  // End as the status says (its log had no terminal entry to show).
  function endAs(job) {
    if (state.ended) { return; }
    state.status = job.status; state.reason = job.reason; state.endedAt = job.ended_at;
    finish();
    schedule();
  }

  // ---- the job's status: watchers (read by jobcast.js every 15 s), and what the page lacks ---

  function status(job) {
    state.viewers = job.viewers;
    if (!state.worker && job.worker) { state.worker = job.worker; }
    if (state.startedAt === null && job.started_at) { state.startedAt = job.started_at; }
    if (state.n === null && job.progress && job.progress.n !== null) { state.n = job.progress.n; chart.total = state.n; }
    if (!state.ended && TERMINAL[job.status] && job.last_seq <= state.lastSeq) {
      // Everything logged has been shown, yet no terminal entry came (an expired log).
      endAs(job);
    }
    schedule();
  }

  // ---- the virtualised log ---------------------------------------------------------------

  function cells(li) {            // a row of the log: the value's index, then its text
    li.appendChild(document.createElement("span")).className = "i";
    li.appendChild(document.createElement("span")).className = "v";
    return li;
  }

  var log = new window.JobcastVirtualList({
    view: el.logView, spacer: el.logSpacer, list: el.log, jump: el.logJump,
    count: function () { return state.texts.length; },
    make: function () { return cells(document.createElement("li")); },
    fill: function (row, k, total) {
      var i = state.indices[k];
      if (row.dataset.i !== String(i)) {
        row.dataset.i = String(i);
        row.firstChild.textContent = String(i);
        row.lastChild.textContent = state.texts[k];   // textContent: values are data, never markup
        row.title = state.texts[k].length > 40 ? state.texts[k].slice(0, 2000) : "";
      }
      row.setAttribute("aria-posinset", String(k + 1 + state.dropped));
      row.setAttribute("aria-setsize", String(total + state.dropped));
    }
  });

  // ---- the output panel: what the job printed ----------------------------------------------

  var OUTPUT_CAP = 10000;           // lines kept; older ones are left to the download
  var output = { lines: [], dropped: 0, attempt: null, count: 0 };

  function addOutput(e) {
    if (output.attempt !== null && e.attempt !== output.attempt) {
      output.lines.push({ sep: true, text: "attempt " + e.attempt });
    }
    output.attempt = e.attempt;
    var last = output.lines[output.lines.length - 1];
    if (last && !last.sep && last.partial && last.stream === e.stream &&
        (e.redraw || (!e.partial && e.text === "" && !e.cut))) {
      // A progress bar's next frame (after a "\r") takes the place of the line it redraws;
      // the bare newline that ends a partial line ends it, not a blank row of its own.
      if (e.redraw) { output.lines[output.lines.length - 1] = e; } else { last.partial = false; }
      forgetRows(el.output, "k");
      outputList.shifted(0);
      return;
    }
    output.count += 1;
    output.lines.push(e);
    if (output.lines.length > OUTPUT_CAP + OUTPUT_CAP / 10) {
      var drop = output.lines.length - OUTPUT_CAP;
      output.lines.splice(0, drop);
      output.dropped += drop;
      outputNote(numberFormat.format(output.dropped) + " earlier lines are only in the download");
      outputList.shifted(drop);
    }
  }

  // Forget the output lines after seq `after` (and a separator left with no line after it).
  function truncateOutput(after) {
    var keep = output.lines.length, removed = 0;
    while (keep > 0 && (output.lines[keep - 1].sep || output.lines[keep - 1].seq > after)) {
      keep -= 1;
      if (!output.lines[keep].sep) { removed += 1; }
    }
    if (keep === output.lines.length) { return; }
    output.lines.splice(keep);
    output.count -= removed;
    output.attempt = keep > 0 ? output.lines[keep - 1].attempt : null;
    forgetRows(el.output, "k");     // the lines that come next take the voided ones' places
    outputList.shifted(0);
  }

  // The rows of a virtualised list skip a refill when their key says they show the right
  // model row: after a reset, rows at the same keys may show voided entries.
  function forgetRows(list, key) {
    Array.prototype.forEach.call(list.children, function (row) { delete row.dataset[key]; });
  }

  function outputNote(text) {
    el.outputNote.hidden = false;
    el.outputNote.firstChild.textContent = text + " ";
  }

  // ANSI colour codes (SGR) become classes; every other escape sequence or control character
  // is dropped. Text only ever goes in through textContent: output is data, never markup.
  var ESCAPES = /\x1b\[([0-9;]*)m|\x1b\[[0-9;?]*[ -\/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-_]?|[\x00-\x08\x0b-\x1f\x7f]/g;

  function sgr(style, codes) {
    (codes === "" ? ["0"] : codes.split(";")).forEach(function (c) {
      var n = parseInt(c || "0", 10);
      if (n === 0) { style.fg = style.bg = null; style.bold = false; }
      else if (n === 1) { style.bold = true; }
      else if (n === 22) { style.bold = false; }
      else if (n >= 30 && n <= 37) { style.fg = n - 30; }
      else if (n >= 90 && n <= 97) { style.fg = n - 90 + 8; }
      else if (n === 39) { style.fg = null; }
      else if (n >= 40 && n <= 47) { style.bg = n - 40; }
      else if (n === 49) { style.bg = null; }
    });
  }

  function styled(parent, text) {
    var style = { fg: null, bg: null, bold: false }, at = 0, m;
    function piece(s) {
      if (!s) { return; }
      var span = parent.appendChild(document.createElement("span"));
      var names = [];
      if (style.fg !== null) { names.push("ansi-fg-" + style.fg); }
      if (style.bg !== null) { names.push("ansi-bg-" + style.bg); }
      if (style.bold) { names.push("ansi-bold"); }
      span.className = names.join(" ");
      span.textContent = s;
    }
    ESCAPES.lastIndex = 0;
    while ((m = ESCAPES.exec(text)) !== null) {
      piece(text.slice(at, m.index));
      if (m[1] !== undefined) { sgr(style, m[1]); }
      at = ESCAPES.lastIndex;
    }
    piece(text.slice(at));
  }

  function fillOutput(row, k) {
    var e = output.lines[k], key = String(k + output.dropped);
    if (row.dataset.k === key) { return; }
    row.dataset.k = key;
    row.textContent = "";
    row.className = e.sep ? "sep" : "";
    row.dataset.stream = e.sep ? "" : e.stream;
    row.toggleAttribute("data-warn", !e.sep && e.stream === "logging" && ["WARNING", "ERROR", "CRITICAL"].indexOf(e.level) >= 0);
    if (e.sep) { row.textContent = "── " + e.text + " ──"; return; }
    if (e.stream === "stderr") {
      // Said, not only shown in red: a screen reader reads it, and colour is not enough.
      row.appendChild(document.createElement("span")).className = "visually-hidden";
      row.lastChild.textContent = "stderr: ";
    }
    if (e.stream === "logging") {
      row.appendChild(document.createElement("span")).className = "level";
      row.lastChild.textContent = e.level + " " + e.logger;
    }
    var text = row.appendChild(document.createElement("span"));
    text.className = "t";
    styled(text, e.text);
    var notes = [];
    if (e.cut) { notes.push("cut: " + numberFormat.format(e.cut) + " bytes"); }
    if (e.partial) { notes.push("continues"); }
    if (notes.length) {
      row.appendChild(document.createElement("span")).className = "note";
      row.lastChild.textContent = "[" + notes.join(", ") + "]";
    }
    row.title = e.text.length > 60 ? e.text.slice(0, 2000) : "";
  }

  var outputList = new window.JobcastVirtualList({
    view: el.outputView, spacer: el.outputSpacer, list: el.output, jump: el.outputJump,
    count: function () { return output.lines.length; },
    make: function () { return document.createElement("li"); },
    fill: fillOutput
  });

  // ---- lifecycle history -----------------------------------------------------------------

  function clock(ts) { return new Date(ts * 1000).toLocaleTimeString(); }
  function addEvent(e) {
    var text = {
      queued: "queued",
      started: "started on " + e.worker + (e.attempt > 1 ? " (attempt " + e.attempt + ")" : ""),
      retrying: "retrying: " + e.reason,
      cancelled: "cancelled by " + e.by,
      finished: "finished",
      failed: "failed: " + e.reason
    }[e.kind];
    if (!text) { return; }
    var li = document.createElement("li");
    li.dataset.kind = e.kind;
    li.dataset.seq = String(e.seq);
    var time = li.appendChild(document.createElement("time"));
    time.dateTime = new Date(e.ts * 1000).toISOString();
    time.textContent = clock(e.ts);
    li.appendChild(document.createTextNode(" " + text));
    el.events.appendChild(li);
    if (el.events.children.length > 50) { el.events.removeChild(el.events.firstChild); }
  }

  // Forget the history after seq `after` (a reset).
  function truncateEvents(after) {
    while (el.events.lastChild && parseInt(el.events.lastChild.dataset.seq, 10) > after) {
      el.events.removeChild(el.events.lastChild);
    }
  }

  // ---- drawing, at most once a frame -----------------------------------------------------

  var pending = false;
  function schedule() {
    if (pending) { return; }
    pending = true;
    // requestAnimationFrame does not run in a hidden tab; the timeout keeps the model fresh.
    var done = false;
    function run() { if (done) { return; } done = true; pending = false; draw(); }
    requestAnimationFrame(run);
    setTimeout(run, 250);
  }

  var lastDescribed = 0;
  function draw() {
    if (state.texts.length) {
      var latest = state.texts[state.texts.length - 1];
      el.latest.textContent = latest.length > 300 ? latest.slice(0, 300) + "…" : latest;
    }
    el.latest.classList.toggle("long", el.latest.textContent.length > 24);
    var statusText = state.status === "retrying" ? "retrying" : state.status;
    if (el.status.textContent !== statusText) {
      el.status.textContent = statusText;
      el.status.dataset.status = state.status;
      root.dataset.status = state.status;
    }
    el.worker.textContent = state.worker ? state.worker + (state.attempt > 1 ? " (attempt " + state.attempt + ")" : "") : (el.worker.textContent || "—");
    var done = state.lastIndex + 1;
    if (state.n !== null) {
      el.progress.max = Math.max(1, state.n);
      el.progress.value = state.status === "finished" ? el.progress.max : Math.min(done, state.n);
      var pct = state.n > 0 ? Math.floor(100 * Math.min(done, state.n) / state.n) : 100;
      el.progressText.textContent = numberFormat.format(done) + " of " + numberFormat.format(state.n) + " (" + pct + "%)";
    } else {
      if (state.ended) { el.progress.max = 1; el.progress.value = 1; }
      el.progressText.textContent = numberFormat.format(done) + " values";
    }
    if (state.ended) {
      el.end.textContent = state.status === "failed" ? "Failed: " + (state.reason || "unknown reason")
        : state.status === "cancelled" ? "Cancelled" : "Done";
      el.end.dataset.status = state.status;
    } else if (state.status === "retrying") {
      el.end.textContent = "Retrying: " + (state.reason || "");
      el.end.dataset.status = "retrying";
    } else if (el.end.dataset.status === "retrying") {
      el.end.textContent = ""; delete el.end.dataset.status;
    }
    if (state.viewers !== null) { el.viewers.textContent = numberFormat.format(state.viewers); }
    el.logCount.textContent = "(" + numberFormat.format(state.skipped ? state.lastIndex + 1 : state.values) + ")";
    tick();
    chart.draw();
    var now = Date.now();
    if (state.ended || now - lastDescribed > 3000) {
      lastDescribed = now;
      el.chart.setAttribute("aria-label", chart.describe());
    }
    log.render();
    el.outputCount.textContent = output.count ? "(" + numberFormat.format(output.count) + " lines)" : "";
    outputList.render();
  }

  function duration(seconds) {
    seconds = Math.max(0, Math.floor(seconds));
    var h = Math.floor(seconds / 3600), m = Math.floor(seconds / 60) % 60, s = seconds % 60;
    var mm = (h && m < 10 ? "0" : "") + m, ss = (s < 10 ? "0" : "") + s;
    return (h ? h + ":" : "") + mm + ":" + ss;
  }

  function tick() {
    var now = Date.now() / 1000;
    if (state.startedAt !== null) {
      el.elapsed.textContent = duration((state.endedAt || now) - state.startedAt);
    } else if (state.createdAt !== null) {
      el.elapsed.textContent = state.ended ? "—" : "waiting " + duration(now - state.createdAt);
    }
  }

  // For tests and the curious: a snapshot of what the page holds.
  window.jobcastPage = function () {
    var w = watch ? watch.stats() : { opens: 0, reconnects: 0, duplicates: 0, gaps: 0 };
    return {
      lastSeq: state.lastSeq, status: state.status, ended: state.ended, connection: state.connection,
      values: state.texts.slice(), indices: state.indices.slice(), dropped: state.dropped,
      opens: w.opens, reconnects: w.reconnects, duplicates: w.duplicates,
      gaps: w.gaps, trimmed: state.trimmed, n: state.n, skipped: state.skipped || 0,
      resets: state.resets, epoch: w.epoch || null,
      notice: state.notice, chartPoints: chart.series.points,
      output: output.lines.map(function (e) { return e.sep ? "── " + e.text + " ──" : e.text; }),
      outputDropped: output.dropped, outputFollowing: outputList.following()
    };
  };

  // ---- stop the job ----------------------------------------------------------------------

  el.stop.addEventListener("click", function () {
    if (state.ended || !window.confirm("Stop this job? It cannot be resumed.")) { return; }
    stopPressed = true;
    el.stop.disabled = true;
    // token.js adds the access token (asking for it once) when the server needs one.
    fetch(root.dataset.cancelUrl, { method: "POST" }).then(function (r) {
      return r.json().then(function (body) {
        if (r.ok || r.status === 409) { return; }      // the stream brings the ending
        stopPressed = false;
        el.stop.disabled = false;
        showNotice("Could not stop the job: " + (body.message || "HTTP " + r.status));
      });
    }).catch(function () {
      stopPressed = false;
      el.stop.disabled = false;
      showNotice("Could not stop the job: the server did not answer");
    });
  });

  // ---- load earlier values into the log ----------------------------------------------------

  el.logEarlier.addEventListener("click", function () {
    if (state.oldestSeq === null) { return; }
    el.logEarlier.disabled = true;
    fetch(withQuery(root.dataset.valuesUrl, "limit=" + EARLIER + "&before=" + state.oldestSeq), { cache: "no-store" })
      .then(function (r) {
        if (!r.ok) { throw new Error("HTTP " + r.status); }
        return r.json();
      }).then(function (page) {
        var got = page.values;
        if (got.length) {
          state.texts = got.map(function (e) { return e.v; }).concat(state.texts);
          state.indices = got.map(function (e) { return e.i; }).concat(state.indices);
          state.chars = countChars(state.texts);
          state.oldestSeq = got[0].seq;
          log.prepended(got.length);
        }
        var first = state.indices.length ? state.indices[0] : 0;
        if (first > 0 && (got.length === 0 || page.first_value === null || first <= page.first_value)) {
          // Nothing older is kept on the server.
          showNotice(numberFormat.format(first) + " earlier values are no longer kept");
          el.logEarlier.hidden = true;
        } else {
          el.logEarlier.hidden = first === 0;
        }
        el.logEarlier.disabled = false;
        schedule();
      }).catch(function () { el.logEarlier.disabled = false; });
  });

  setInterval(function () { if (!state.ended) { tick(); } }, 1000);
  window.addEventListener("resize", schedule);
  connect();
  draw();
})();
