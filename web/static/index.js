// Home page: show the chosen task's fields, start jobs through the JSON API, and keep the
// job list fresh.
(function () {
  "use strict";
  var form = document.getElementById("start");
  var select = document.getElementById("task");
  var error = document.getElementById("form-error");

  function fieldsets() { return form.querySelectorAll("fieldset.params"); }
  function showTask() {
    fieldsets().forEach(function (fs) {
      var on = fs.dataset.task === select.value;
      fs.hidden = !on;
      fs.disabled = !on;
    });
  }
  select.addEventListener("change", showTask);
  showTask();

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    error.textContent = "";
    var params = {};
    form.querySelectorAll("fieldset.params[data-task='" + select.value + "'] input").forEach(function (input) {
      params[input.name] = input.step === "1" ? parseInt(input.value, 10) : parseFloat(input.value);
    });
    fetch(form.action, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ task: select.value, params: params })
    }).then(function (r) {
      return r.json().then(function (body) {
        if (r.status === 201) { window.location = body.urls.page; }
        else { error.textContent = (body.field ? body.field + ": " : "") + body.message; }
      });
    }).catch(function (e) { error.textContent = String(e); });
  });

  var tbody = document.querySelector("#jobs tbody");
  function cell(row, text) {
    var td = document.createElement("td");
    td.textContent = text;
    row.appendChild(td);
    return td;
  }
  function refresh() {
    fetch("/api/jobs?limit=50").then(function (r) { return r.json(); }).then(function (body) {
      var rows = document.createDocumentFragment();
      body.jobs.forEach(function (job) {
        var tr = document.createElement("tr");
        tr.dataset.status = job.status;
        var link = document.createElement("a");
        link.href = job.urls ? job.urls.page : "/jobs/" + job.id;
        link.textContent = job.id.slice(0, 8);
        cell(tr, "").appendChild(link);
        cell(tr, job.task);
        cell(tr, job.status).className = "status";
        cell(tr, job.progress.i + (job.progress.n === null ? "" : " / " + job.progress.n));
        cell(tr, job.worker || "");
        rows.appendChild(tr);
      });
      if (body.jobs.length) { tbody.replaceChildren(rows); }
    }).catch(function () { /* the next refresh tries again */ });
  }
  setInterval(refresh, 2000);
})();
