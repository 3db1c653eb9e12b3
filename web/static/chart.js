// A small streaming line chart on a <canvas>, for values that arrive in index order.
//
// Memory and drawing cost stay bounded however long the job: values are folded into at
// most `maxBuckets` buckets (min, max, first and last of a run of `span` indices). When the
// buckets run out, neighbours merge and `span` doubles, so adding a value is O(1) amortised
// and a redraw is O(maxBuckets), whether the job has 100 values or 10 million. Drawing the
// min/max envelope of each bucket keeps every spike visible at any zoom.
(function () {
  "use strict";

  function Series(maxBuckets) {
    this.maxBuckets = maxBuckets;
    this.min = new Float64Array(maxBuckets);
    this.max = new Float64Array(maxBuckets);
    this.first = new Float64Array(maxBuckets);
    this.last = new Float64Array(maxBuckets);
    this.min.fill(NaN); this.max.fill(NaN); this.first.fill(NaN); this.last.fill(NaN);
    this.len = 0;          // buckets in use
    this.span = 1;         // indices per bucket (a power of two)
    this.points = 0;       // finite values added
    this.lo = Infinity;    // lowest and highest finite value
    this.hi = -Infinity;
    this.lastIndex = -1;   // index of the latest value (finite or not)
    this.lastValue = NaN;
  }

  Series.prototype.add = function (i, v) {
    if (i > this.lastIndex) { this.lastIndex = i; this.lastValue = v; }
    if (typeof v !== "number" || !isFinite(v) || i < 0) { return; }
    var b = Math.floor(i / this.span);
    while (b >= this.maxBuckets) { this.merge(); b = Math.floor(i / this.span); }
    if (b >= this.len) { this.len = b + 1; }
    if (isNaN(this.first[b])) { this.first[b] = v; this.min[b] = v; this.max[b] = v; }
    else {
      if (v < this.min[b]) { this.min[b] = v; }
      if (v > this.max[b]) { this.max[b] = v; }
    }
    this.last[b] = v;
    this.points += 1;
    if (v < this.lo) { this.lo = v; }
    if (v > this.hi) { this.hi = v; }
  };

  // Start from a snapshot of the same buckets kept by the worker (GET /api/jobs/<id>/chart),
  // so a long job's whole history draws at once; values after `snap.upto` are added after.
  Series.prototype.load = function (snap) {
    var n = snap.first.length;
    this.span = snap.span;
    while (n > this.maxBuckets) { this.span *= 2; n = Math.ceil(n / 2); }   // never, with equal sizes
    this.min.fill(NaN); this.max.fill(NaN); this.first.fill(NaN); this.last.fill(NaN);
    this.len = 0; this.points = snap.points; this.lo = Infinity; this.hi = -Infinity;
    var ratio = this.span / snap.span;
    for (var k = 0; k < snap.first.length; k++) {
      if (snap.first[k] === null) { continue; }
      var b = Math.floor(k / ratio);
      if (isNaN(this.first[b])) {
        this.first[b] = snap.first[k]; this.min[b] = snap.min[k]; this.max[b] = snap.max[k];
      } else {
        this.min[b] = Math.min(this.min[b], snap.min[k]); this.max[b] = Math.max(this.max[b], snap.max[k]);
      }
      this.last[b] = snap.last[k];
      this.len = Math.max(this.len, b + 1);
      this.lo = Math.min(this.lo, snap.min[k]); this.hi = Math.max(this.hi, snap.max[k]);
      this.lastValue = snap.last[k];
    }
    this.lastIndex = snap.upto;
  };

  // Forget the values from index `n` on (the job's log was reset: they are replaced). The
  // bucket holding index n goes too, whole: a bucket cannot take back part of its min/max.
  Series.prototype.truncate = function (n) {
    if (n > this.lastIndex) { return; }
    var from = Math.floor(n / this.span);
    for (var b = from; b < this.len; b++) {
      this.min[b] = NaN; this.max[b] = NaN; this.first[b] = NaN; this.last[b] = NaN;
    }
    this.len = Math.min(this.len, from);
    this.lo = Infinity; this.hi = -Infinity;
    for (var k = 0; k < this.len; k++) {
      if (!isNaN(this.first[k])) { this.lo = Math.min(this.lo, this.min[k]); this.hi = Math.max(this.hi, this.max[k]); }
    }
    this.points = Math.min(this.points, from * this.span);
    this.lastIndex = n - 1;
    this.lastValue = this.len ? this.last[this.len - 1] : NaN;
  };

  // Halve the resolution: bucket k takes buckets 2k and 2k+1 (in place, front to back).
  Series.prototype.merge = function () {
    var half = Math.ceil(this.len / 2);
    for (var k = 0; k < half; k++) {
      var a = 2 * k, b = a + 1;
      var hasB = b < this.len && !isNaN(this.first[b]);
      var hasA = !isNaN(this.first[a]);
      var mn = hasA ? this.min[a] : NaN, mx = hasA ? this.max[a] : NaN;
      var fs = hasA ? this.first[a] : NaN, ls = hasA ? this.last[a] : NaN;
      if (hasB) {
        mn = hasA ? Math.min(mn, this.min[b]) : this.min[b];
        mx = hasA ? Math.max(mx, this.max[b]) : this.max[b];
        if (!hasA) { fs = this.first[b]; }
        ls = this.last[b];
      }
      this.min[k] = mn; this.max[k] = mx; this.first[k] = fs; this.last[k] = ls;
    }
    for (var r = half; r < this.maxBuckets; r++) {
      this.min[r] = NaN; this.max[r] = NaN; this.first[r] = NaN; this.last[r] = NaN;
    }
    this.len = half;
    this.span *= 2;
  };

  // 1, 2 or 5 times a power of ten: a step near `raw`.
  function niceStep(raw) {
    if (!(raw > 0) || !isFinite(raw)) { return 1; }
    var p = Math.pow(10, Math.floor(Math.log10(raw)));
    var f = raw / p;
    return (f < 1.5 ? 1 : f < 3 ? 2 : f < 7 ? 5 : 10) * p;
  }

  // A tick label with just the digits that tell ticks `step` apart: 0.25, 1,795,485,170, 3e-7.
  function formatTick(v, step) {
    if (v === 0) { return "0"; }
    var a = Math.abs(v), mag = Math.floor(Math.log10(a)), smag = Math.floor(Math.log10(step));
    if (step >= 1e6 || (a < 1e-4 && step < 1e-4)) {
      return v.toExponential(Math.max(0, Math.min(10, mag - smag))).replace("e+", "e");
    }
    return v.toFixed(Math.max(0, Math.min(10, -smag)));
  }

  // The y axis for values from `lo` to `hi`, about `n` ticks: {lo, hi, step, ticks}, each tick
  // computed from its index. A sum of steps can stand still: 0.3 and 0.1 + 0.2 are 5.6e-17 apart,
  // a step that small added to 0.3 gives 0.3 again, and the loop never ended. A range too narrow
  // to tell apart is drawn as one value; one wider than the largest double (-1e308 to 1e308) is
  // worked out in halves.
  function yAxis(lo, hi, n) {
    var mag = Math.max(Math.abs(lo), Math.abs(hi));
    if (!(hi - lo > mag * 1e-12)) {
      var pad = mag * 0.1 || 1;
      lo = Math.max(lo - pad, -Number.MAX_VALUE); hi = Math.min(hi + pad, Number.MAX_VALUE);
    }
    var step = niceStep(hi / n - lo / n);
    var first = Math.floor(lo / step), count = Math.ceil(hi / step) - first;
    if (!(count >= 1 && count <= 4 * n && isFinite(first * step) &&
          isFinite((first + count) * step))) {
      // rounding at the edges of the doubles (a tick past the largest): just the two ends
      return {lo: lo, hi: hi, step: hi / 2 - lo / 2, ticks: [lo, hi]};
    }
    var ticks = [];
    for (var k = 0; k <= count; k++) { ticks.push((first + k) * step); }
    return {lo: ticks[0], hi: ticks[count], step: step, ticks: ticks};
  }

  function formatIndex(v) {
    if (v >= 1e6) { return (v / 1e6).toFixed(v % 1e6 === 0 ? 0 : 1) + "M"; }
    if (v >= 1e4) { return (v / 1e3).toFixed(v % 1e3 === 0 ? 0 : 1) + "k"; }
    return String(v);
  }

  function Chart(canvas, options) {
    options = options || {};
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d");
    this.series = new Series(options.maxBuckets || 2048);
    this.total = null;           // the job's n, when known: the x axis then spans all of it
    this.width = 0; this.height = 0; this.ratio = 1;
    var self = this;
    if (window.ResizeObserver) {
      new ResizeObserver(function () { self.resize(); self.draw(); }).observe(canvas);
    }
    this.resize();
  }

  Chart.prototype.add = function (i, v) { this.series.add(i, v); };
  Chart.prototype.load = function (snap) { this.series.load(snap); };
  Chart.prototype.truncate = function (n) { this.series.truncate(n); };

  Chart.prototype.resize = function () {
    var rect = this.canvas.getBoundingClientRect();
    var ratio = window.devicePixelRatio || 1;
    var w = Math.max(1, Math.round(rect.width)), h = Math.max(1, Math.round(rect.height));
    if (w === this.width && h === this.height && ratio === this.ratio) { return; }
    this.width = w; this.height = h; this.ratio = ratio;
    this.canvas.width = Math.round(w * ratio);
    this.canvas.height = Math.round(h * ratio);
  };

  Chart.prototype.colors = function () {
    var style = getComputedStyle(this.canvas);
    return {
      line: style.getPropertyValue("--chart-line").trim() || "#2f6fde",
      fill: style.getPropertyValue("--chart-fill").trim() || "rgba(47,111,222,.12)",
      grid: style.getPropertyValue("--chart-grid").trim() || "#e3e6eb",
      text: style.getPropertyValue("--chart-text").trim() || "#5b6475",
      font: (style.getPropertyValue("--chart-font").trim() || "12px system-ui, sans-serif")
    };
  };

  Chart.prototype.draw = function () {
    var s = this.series, ctx = this.ctx, w = this.width, h = this.height;
    var c = this.colors();
    ctx.setTransform(this.ratio, 0, 0, this.ratio, 0, 0);
    ctx.clearRect(0, 0, w, h);
    ctx.font = c.font;
    this.canvas.dataset.points = String(s.points);
    this.canvas.dataset.buckets = String(s.len);
    if (s.points === 0) {
      ctx.fillStyle = c.text;
      ctx.textAlign = "center";
      ctx.textBaseline = "middle";
      ctx.fillText(s.lastIndex >= 0 ? "No numeric values to plot" : "Waiting for values…", w / 2, h / 2);
      return;
    }
    // y: nice ticks around [lo, hi]
    var axis = yAxis(s.lo, s.hi, Math.max(2, Math.floor(h / 48)));
    var lo = axis.lo, hi = axis.hi, ystep = axis.step, yticks = axis.ticks;
    var labelWidth = 0;
    yticks.forEach(function (v) { labelWidth = Math.max(labelWidth, ctx.measureText(formatTick(v, ystep)).width); });
    var left = Math.ceil(labelWidth) + 10, right = 12, top = 10, bottom = 24;
    var pw = Math.max(1, w - left - right), ph = Math.max(1, h - top - bottom);
    // x: value index, over the whole job when its size is known
    var xmax = Math.max(1, s.lastIndex, this.total ? this.total - 1 : 0);
    function X(i) { return left + (i / xmax) * pw; }
    function Y(v) { return top + (1 - (v / 2 - lo / 2) / (hi / 2 - lo / 2)) * ph; }  // (halves: see yAxis)

    ctx.lineWidth = 1;
    ctx.strokeStyle = c.grid;
    ctx.fillStyle = c.text;
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    ctx.beginPath();
    yticks.forEach(function (v) {
      var y = Math.round(Y(v)) + 0.5;
      ctx.moveTo(left, y); ctx.lineTo(left + pw, y);
      ctx.fillText(formatTick(v, ystep), left - 6, y);
    });
    ctx.stroke();
    var xstep = Math.max(1, niceStep(xmax / Math.max(2, Math.floor(pw / 80))));
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    for (var xi = 0; xi <= xmax; xi += xstep) { ctx.fillText(formatIndex(xi), X(xi), top + ph + 6); }

    // the min/max envelope of each bucket, as one path
    var span = s.span, path = new Path2D(), started = false, firstX = 0, lastX = 0;
    for (var k = 0; k < s.len; k++) {
      if (isNaN(s.first[k])) { continue; }
      var x = span === 1 ? X(k) : X(k * span + (span - 1) / 2);
      if (!started) { path.moveTo(x, Y(s.first[k])); firstX = x; started = true; }
      else { path.lineTo(x, Y(s.first[k])); }
      if (span > 1) {
        var up = s.last[k] >= s.first[k];
        path.lineTo(x, Y(up ? s.min[k] : s.max[k]));
        path.lineTo(x, Y(up ? s.max[k] : s.min[k]));
        path.lineTo(x, Y(s.last[k]));
      }
      lastX = x;
    }
    var area = new Path2D(path);
    area.lineTo(lastX, top + ph);
    area.lineTo(firstX, top + ph);
    area.closePath();
    ctx.fillStyle = c.fill;
    ctx.fill(area);
    ctx.strokeStyle = c.line;
    ctx.lineWidth = 1.5;
    ctx.lineJoin = "round";
    ctx.stroke(path);
    // the latest value as a dot
    var lv = s.lastValue;
    if (typeof lv === "number" && isFinite(lv)) {
      ctx.fillStyle = c.line;
      ctx.beginPath();
      ctx.arc(X(s.lastIndex), Y(lv), 3.5, 0, 2 * Math.PI);
      ctx.fill();
    }
  };

  // Words for people who cannot see the canvas.
  Chart.prototype.describe = function () {
    var s = this.series;
    if (s.points === 0) { return "Chart of the job's values (no numeric values yet)"; }
    // Six significant digits, or as many more as it takes to tell the lowest from the
    // highest (timestamps, or values close together, are equal to six).
    var lo, hi;
    for (var digits = 6; digits <= 17; digits++) {
      lo = String(Number(s.lo.toPrecision(digits)));
      hi = String(Number(s.hi.toPrecision(digits)));
      if (lo !== hi || s.lo === s.hi) { break; }
    }
    return "Line chart of " + s.points.toLocaleString("en") + " values, lowest " + lo +
      ", highest " + hi;
  };

  window.JobcastChart = Chart;
  window.JobcastChart.Series = Series;
  window.JobcastChart.yAxis = yAxis;
})();
