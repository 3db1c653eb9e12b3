// When the server sets JOBCAST_TOKEN, creating a job needs "Authorization: Bearer <token>".
// This wraps fetch for POST /api/jobs (start a job) and POST /api/jobs/<id>/cancel (stop one):
// it sends the token kept in this tab, and on a 401 asks for it once, keeps it, and retries.
// The token lives in sessionStorage: it is gone when the tab closes, and on "Log out". Pages
// need no other change.
(function () {
  "use strict";
  var KEY = "jobcast.token";
  var plainFetch = window.fetch.bind(window);

  // Earlier versions kept the token in localStorage, for ever: forget it.
  try { localStorage.removeItem(KEY); } catch (e) { /* storage disabled */ }

  function stored() {
    try { return sessionStorage.getItem(KEY); } catch (e) { return null; }
  }

  function store(token) {
    try {
      if (token) { sessionStorage.setItem(KEY, token); } else { sessionStorage.removeItem(KEY); }
    } catch (e) { /* storage disabled: ask again next time */ }
  }

  // The token form (login.js) keeps what is typed; "Log out" forgets it before the server
  // clears the session cookie.
  window.jobcastToken = { store: store };
  document.addEventListener("submit", function (event) {
    if (event.target && event.target.id === "logout") { store(null); }
  });

  function isCreate(input, init) {
    var url = typeof input === "string" ? input : input.url;
    var method = (init && init.method) || (typeof input !== "string" && input.method) || "GET";
    // Creating and cancelling jobs, under any prefix (init_app) and for any job id RQ allows.
    var path = new URL(url, location.href).pathname;
    return method.toUpperCase() === "POST" &&
      /\/api\/jobs(\/[A-Za-z0-9_-]{1,128}\/cancel)?$/.test(path);
  }

  function withToken(init, token) {
    var copy = Object.assign({}, init || {});
    var headers = new Headers(copy.headers || {});
    if (token) { headers.set("Authorization", "Bearer " + token); }
    copy.headers = headers;
    return copy;
  }

  window.fetch = function (input, init) {
    if (!isCreate(input, init)) { return plainFetch(input, init); }
    return plainFetch(input, withToken(init, stored())).then(function (response) {
      if (response.status !== 401) { return response; }
      var token = window.prompt("This Jobcast server needs an access token to start or stop jobs:");
      if (!token) { return response; }
      store(token);
      return plainFetch(input, withToken(init, token)).then(function (retried) {
        if (retried.status === 401) { store(null); }
        return retried;
      });
    });
  };
})();
