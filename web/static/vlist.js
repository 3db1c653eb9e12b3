// A virtualised list (the job page's value log and its output panel): only the rows in view
// exist in the DOM, rows of one fixed height (from the stylesheet) are reused as the view
// scrolls, and the list follows its newest row until the user scrolls up ("Jump to latest"
// brings it back).
//
// new JobcastVirtualList({view, spacer, list, jump, count, make, fill}):
//   view    the scrolling element; spacer: its child as tall as every row; list: the <ol>
//   jump    the "Jump to latest" button, shown while not following
//   count() how many rows the model holds
//   make()  a new, empty row element
//   fill(row, k, total)  show model row k in `row` (skip the work when it already does)
(function () {
  "use strict";

  window.JobcastVirtualList = function (o) {
    var rowHeight = 0;
    var stick = true;               // follow the newest row while scrolled to the bottom
    var shown = { first: -1, last: -1, total: -1 };
    var programmatic = false;

    function measure() {
      if (!rowHeight) {
        var probe = o.make();
        probe.appendChild(document.createTextNode("0"));
        o.list.appendChild(probe);
        rowHeight = probe.getBoundingClientRect().height || 24;
        o.list.removeChild(probe);
      }
      return rowHeight;
    }

    o.view.addEventListener("scroll", function () {
      if (!programmatic) {
        var v = o.view;
        stick = v.scrollTop + v.clientHeight >= v.scrollHeight - measure() * 1.5;
      }
      programmatic = false;
      render();
    }, { passive: true });
    o.jump.addEventListener("click", function () { stick = true; render(); o.view.focus(); });

    function render() {
      var total = o.count(), rh = measure(), view = o.view;
      o.spacer.style.height = (total * rh) + "px";
      if (stick && view.scrollTop + view.clientHeight < total * rh - 1) {
        programmatic = true;
        view.scrollTop = total * rh;
      }
      o.jump.hidden = stick || total === 0;
      var first = Math.max(0, Math.floor(view.scrollTop / rh) - 8);
      var last = Math.min(total, Math.ceil((view.scrollTop + view.clientHeight) / rh) + 8);
      if (first === shown.first && last === shown.last && total === shown.total) { return; }
      // Rows already showing the right model row stay; the rest are rewritten in place.
      var rows = o.list.children;
      while (rows.length < last - first) { o.list.appendChild(o.make()); }
      while (rows.length > last - first) { o.list.removeChild(o.list.lastChild); }
      for (var k = first; k < last; k++) { o.fill(rows[k - first], k, total); }
      o.list.style.transform = "translateY(" + (first * rh) + "px)";
      shown = { first: first, last: last, total: total };
    }

    return {
      render: render,
      following: function () { return stick; },
      // `drop` rows left the front of the model: keep the rows in view where they are.
      shifted: function (drop) {
        if (!stick) { programmatic = true; o.view.scrollTop = Math.max(0, o.view.scrollTop - drop * measure()); }
        shown.total = -1;
      },
      // Rows came in above: keep the rows in view where they are, and read from the top.
      prepended: function (added) {
        stick = false;
        o.spacer.style.height = (o.count() * measure()) + "px";
        programmatic = true;
        o.view.scrollTop = o.view.scrollTop + added * measure();
        shown = { first: -1, last: -1, total: -1 };
      }
    };
  };
})();
