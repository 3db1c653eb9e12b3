// The token typed here also serves the start form (token.js sends it as a Bearer header when
// creating a job), so it is asked for once; token.js keeps it in this tab only
// (sessionStorage), once the server has taken it. The session cookie covers reads.
(function () {
  "use strict";
  var form = document.getElementById("login");
  if (!form) { return; }
  form.addEventListener("submit", function () {
    var token = document.getElementById("token").value.trim();
    // Kept once the server took it (token.js, on the page after this one).
    if (token && window.jobcastToken) { window.jobcastToken.typed(token); }
  });
})();
