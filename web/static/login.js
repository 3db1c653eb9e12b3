// The token typed here also serves the start form (token.js sends it as a Bearer header when
// creating a job), so it is asked for once. The session cookie set by the server covers reads.
(function () {
  "use strict";
  var form = document.getElementById("login");
  if (!form) { return; }
  form.addEventListener("submit", function () {
    var token = document.getElementById("token").value;
    if (token) { localStorage.setItem("jobcast.token", token); }
  });
})();
