// When the server sets JOBCAST_TOKEN, creating a job needs "Authorization: Bearer <token>".
// This wraps fetch for POST /api/jobs (start a job) and POST /api/jobs/<id>/cancel (stop one):
// it sends the token kept in this tab, and on a 401 (none) or a 403 "bad_token" (a wrong one,
// which it forgets at once) asks for it once (in a dialog whose field hides what is typed),
// keeps it, and retries. The token lives in sessionStorage: it is gone when the tab closes,
// and on "Log out". Pages need no other change.
(function () {
  "use strict";
  var KEY = "jobcast.token";
  var PENDING = KEY + ".typed";   // typed in the token form, not yet known to be right
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

  // The token form (login.js) keeps what is typed as pending: the page after it is another
  // than the form only when the server took it (a wrong one shows the form again), and only
  // then is it kept; a typo is never sent with every start, each a failed authentication.
  // "Log out" forgets it before the server clears the session cookie.
  function typed(token) {
    try {
      if (token) { sessionStorage.setItem(PENDING, token); } else { sessionStorage.removeItem(PENDING); }
    } catch (e) { /* storage disabled */ }
  }
  var pending = null;
  try { pending = sessionStorage.getItem(PENDING); } catch (e) { /* storage disabled */ }
  if (pending !== null) {
    typed(null);
    // (Once the page is parsed: this script runs in its head, before any form exists.)
    document.addEventListener("DOMContentLoaded", function () {
      if (!document.getElementById("login")) { store(pending); }
    });
  }
  window.jobcastToken = { store: store, typed: typed };
  document.addEventListener("submit", function (event) {
    if (event.target && event.target.id === "logout") { store(null); }
  });

  function isCreate(input, init) {
    var url = typeof input === "string" ? input : input.url;
    var method = (init && init.method) || (typeof input !== "string" && input.method) || "GET";
    // Creating and cancelling jobs, under any prefix (init_app) and for any job id RQ allows,
    // on this page's own origin only: a page of a host app that fetches another site's
    // /api/jobs must not hand that site the token.
    var target = new URL(url, location.href);
    return target.origin === location.origin && method.toUpperCase() === "POST" &&
      /\/api\/jobs(\/[A-Za-z0-9_-]{1,128}\/cancel)?$/.test(target.pathname);
  }

  function withToken(init, token) {
    var copy = Object.assign({}, init || {});
    var headers = new Headers(copy.headers || {});
    if (token) { headers.set("Authorization", "Bearer " + token); }
    copy.headers = headers;
    return copy;
  }

  // The token is missing (401) or not the server's (403 with reason "bad_token").
  function refused(response) {
    if (response.status === 401) { return Promise.resolve(true); }
    if (response.status !== 403) { return Promise.resolve(false); }
    return response.clone().json().then(function (body) {
      return !!body && body.reason === "bad_token";
    }, function () { return false; });
  }

  window.fetch = function (input, init) {
    if (!isCreate(input, init)) { return plainFetch(input, init); }
    return plainFetch(input, withToken(init, stored())).then(function (response) {
      return refused(response).then(function (needed) {
        if (!needed) { return response; }
        store(null);  // (a wrong one, kept, would be sent again, and count towards a lockout)
        return ask().then(function (token) {
          if (!token) { return response; }
          store(token);
          return plainFetch(input, withToken(init, token)).then(function (retried) {
            return refused(retried).then(function (wrong) {
              if (wrong) { store(null); }
              return retried;
            });
          });
        });
      });
    });
  };

  // The token, asked for in a modal dialog with a password field (window.prompt would show it
  // to anyone looking at the screen); "" when the person cancels.
  function ask() {
    return new Promise(function (resolve) {
      var dialog = document.createElement("dialog");
      dialog.className = "token-dialog";
      var form = dialog.appendChild(document.createElement("form"));
      form.method = "dialog";
      var label = form.appendChild(document.createElement("label"));
      label.textContent = "This Jobcast server needs an access token to start or stop jobs:";
      var field = label.appendChild(document.createElement("input"));
      field.type = "password";
      field.name = "token";
      field.autocomplete = "current-password";
      field.required = true;
      var buttons = form.appendChild(document.createElement("p"));
      var ok = buttons.appendChild(document.createElement("button"));
      ok.value = "ok";
      ok.textContent = "Continue";
      var cancel = buttons.appendChild(document.createElement("button"));
      cancel.value = "cancel";
      cancel.formNoValidate = true;
      cancel.textContent = "Cancel";
      dialog.addEventListener("close", function () {
        var token = dialog.returnValue === "ok" ? field.value.trim() : "";
        dialog.remove();
        resolve(token);
      });
      document.body.appendChild(dialog);
      dialog.showModal();
      field.focus();
    });
  }
})();
