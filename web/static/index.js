// Home page: show the chosen task's fields, start jobs through the JSON API, and keep the
// job list live (status, progress, age), updating rows in place so focus and reading order
// survive a refresh. The list comes from the stream (jobcast.js: a snapshot, then every
// creation and change of state of any job); nothing is polled.
(function () {
  "use strict";
  var form = document.getElementById("start");
  var select = document.getElementById("task");
  var taskDesc = document.getElementById("task-desc");
  var error = document.getElementById("form-error");

  function fieldsets() { return form.querySelectorAll("fieldset.params"); }
  function showTask() {
    fieldsets().forEach(function (fs) {
      var on = fs.dataset.task === select.value;
      fs.hidden = !on;
      fs.disabled = !on;
    });
    var option = select.options[select.selectedIndex];
    taskDesc.textContent = option ? option.dataset.description || "" : "";
  }
  select.addEventListener("change", showTask);
  showTask();

  function readValue(input) {
    switch (input.dataset.kind) {
      case "boolean": return input.checked;
      case "integer": return input.value.trim() === "" ? null : Number(input.value);
      case "number": return input.value.trim() === "" ? null : Number(input.value);
      default: return input.value;
    }
  }

  var submit = form.querySelector("button[type=submit]");

  // An input's own hint (its bounds), which a refusal's message joins and never replaces.
  function hintOf(input) {
    if (input.dataset.hint === undefined) { input.dataset.hint = input.getAttribute("aria-describedby") || ""; }
    return input.dataset.hint;
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    if (submit.disabled) { return; }  // one job per click, however quick the second
    submit.disabled = true;
    error.textContent = "";
    var params = {};
    var scope = form.querySelector("fieldset.params[data-task='" + CSS.escape(select.value) + "']");
    scope.querySelectorAll("[name]").forEach(function (input) {
      input.removeAttribute("aria-invalid");
      if (hintOf(input)) { input.setAttribute("aria-describedby", hintOf(input)); }
      else { input.removeAttribute("aria-describedby"); }
      var value = readValue(input);
      if (value !== null) { params[input.name] = value; }
    });
    fetch(form.action, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ task: select.value, params: params })
    }).then(function (r) {
      return r.json().then(function (body) {
        if (r.status === 201) { window.location = body.urls.page; return; }
        submit.disabled = false;
        var field = body.field && body.field.indexOf("params.") === 0 ? body.field.slice(7) : null;
        var input = field && scope.querySelector("[name='" + CSS.escape(field) + "']");
        var message = body.message || "";
        // (The server's message may name the field already: "params.n: Input should be …".)
        error.textContent = body.field && message.indexOf(body.field) !== 0 ? body.field + ": " + message : message;
        if (input) {
          input.setAttribute("aria-invalid", "true");
          // What is wrong with it, then its hint.
          input.setAttribute("aria-describedby", ("form-error " + hintOf(input)).trim());
          input.focus();
        }
      });
    }).catch(function (e) {
      submit.disabled = false;
      error.textContent = "Could not start the job: " + e;
    });
  });

  // ---- the live job list -----------------------------------------------------------------

  var tbody = document.querySelector("#jobs tbody");

  function age(ts) {
    if (!ts) { return ""; }
    var s = Math.max(0, Math.floor(Date.now() / 1000 - ts));
    if (s >= 86400) { return Math.floor(s / 86400) + " d"; }
    if (s >= 3600) { return Math.floor(s / 3600) + " h"; }
    if (s >= 60) { return Math.floor(s / 60) + " min"; }
    return s + " s";
  }

  function setText(node, text) { if (node.textContent !== text) { node.textContent = text; } }

  function makeRow(job) {
    var tr = document.createElement("tr");
    tr.dataset.id = job.id;
    ["link", "task", "status", "progress", "age", "worker"].forEach(function (name) {
      var td = tr.appendChild(document.createElement("td"));
      td.className = name === "link" ? "" : name;
    });
    var link = tr.cells[0].appendChild(document.createElement("a"));
    link.className = "mono";
    // Relative to the API's URL, so the link stays under the prefix Jobcast is mounted at.
    link.href = job.urls && job.urls.page ? job.urls.page
      : new URL("../jobs/" + encodeURIComponent(job.id), form.action).pathname;
    link.textContent = job.id.slice(0, 8);
    tr.cells[2].appendChild(document.createElement("span"));
    var bar = tr.cells[3].appendChild(document.createElement("progress"));
    bar.setAttribute("aria-hidden", "true");
    tr.cells[3].appendChild(document.createElement("span")).className = "num";
    tr.cells[4].appendChild(document.createElement("time"));
    return tr;
  }

  function updateRow(tr, job) {
    if (tr.dataset.status !== job.status) { tr.dataset.status = job.status; }
    setText(tr.cells[1], job.task || "");
    setText(tr.cells[2].firstChild, job.status);
    var bar = tr.cells[3].querySelector("progress");
    var n = job.progress.n;
    if (!bar) { bar = tr.cells[3].insertBefore(document.createElement("progress"), tr.cells[3].firstChild); bar.setAttribute("aria-hidden", "true"); }
    bar.hidden = !n;
    if (n) { bar.max = n; bar.value = Math.min(job.progress.i, n); }
    setText(tr.cells[3].querySelector(".num"), job.progress.i + (n === null ? "" : " / " + n));
    var time = tr.cells[4].querySelector("time");
    time.dataset.ts = job.created_at || "";
    if (job.created_at) { time.dateTime = new Date(job.created_at * 1000).toISOString(); }
    setText(time, age(job.created_at));
    setText(tr.cells[5], job.worker || "");
  }

  // The list is the server's once its first snapshot came; before it, the rows rendered
  // with the page stay.
  var snapshotted = false;
  function render(jobs) {
    if (!jobs.length && !snapshotted) { return; }
    var existing = {};
    Array.prototype.forEach.call(tbody.rows, function (tr) { if (tr.dataset.id) { existing[tr.dataset.id] = tr; } });
    var empty = tbody.querySelector("tr.empty");
    if (!jobs.length) {
      // No job any more (a Redis that came back empty): no stale rows either.
      Object.keys(existing).forEach(function (id) { existing[id].remove(); });
      if (!empty) {
        empty = tbody.appendChild(document.createElement("tr"));
        empty.className = "empty";
        var cell = empty.appendChild(document.createElement("td"));
        cell.colSpan = 6;
        cell.textContent = "No jobs yet. Start one with the form.";
      }
      return;
    }
    if (empty) { empty.remove(); }
    var keep = {};
    jobs.forEach(function (job, k) {
      var tr = existing[job.id] || makeRow(job);
      updateRow(tr, job);
      keep[job.id] = true;
      if (tbody.rows[k] !== tr) { tbody.insertBefore(tr, tbody.rows[k] || null); }
    });
    Object.keys(existing).forEach(function (id) { if (!keep[id]) { existing[id].remove(); } });
  }

  // Redraw at most once a frame (the timeout also runs in a hidden tab).
  var list = null, pending = false;
  function schedule() {
    if (pending) { return; }
    pending = true;
    var done = false;
    function run() { if (done) { return; } done = true; pending = false; render(list.jobs()); }
    requestAnimationFrame(run);
    setTimeout(run, 250);
  }
  // Say whether the list is live: a list that stopped or is reconnecting must not read
  // "Updated live." (a session that ended, a token changed, a server away).
  var note = document.getElementById("jobs-note");
  var STATES = { live: "Updated live.", connecting: "Connecting…",
                 reconnecting: "Reconnecting… the list may be out of date." };
  var ended = false;
  function stopped(e) {
    ended = true;
    note.textContent = "The list is no longer updated: " + (e.message || "refused") + ". ";
    if (e.status === 401 || e.status === 403) {
      var link = document.createElement("a");
      link.href = note.dataset.login;
      link.textContent = "Log in again";
      note.appendChild(link);
    }
  }
  list = window.Jobcast.list({
    limit: 50, onSnapshot: function () { snapshotted = true; schedule(); }, onChange: schedule,
    onEnd: stopped,
    onState: function (state) { if (!ended && STATES[state]) { setText(note, STATES[state]); } }
  });
  setInterval(function () {
    tbody.querySelectorAll("time[data-ts]").forEach(function (t) { setText(t, age(parseFloat(t.dataset.ts))); });
  }, 1000);
})();
