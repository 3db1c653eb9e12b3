// jobcast.js: watch Jobcast jobs from a web page, over one stream per browser.
//
//   <script src="/static/jobcast.js"></script>
//   var w = Jobcast.watch(id, {onValue: function (v, e) {...}, onEnd: function (e) {...}});
//   w.close();
//
// Every watch of every tab of one origin shares a single server-sent events connection
// (GET /events?job=a&job=b…, see web/events.py): a browser allows six HTTP/1.1 connections per
// host, so one connection per job would stall the seventh tab. Only when the jobs do not fit
// one connection (over MAX_JOBS, or over the server's query limit: a view link's sig= per job
// in private mode) do more connections ("lanes") carry the others, up to MAX_LANES in all.
// How the tabs share them:
//
//   "worker"  a SharedWorker running this very file holds the connection while any tab is open
//             (works on plain HTTP too; Chrome on Android has it from version 148);
//   "locks"   else, the tab holding the Web Lock "jobcast… leader" holds it and relays entries
//             over a BroadcastChannel; when it closes, the next tab in the lock's queue takes
//             over, reconnecting from the lowest position any tab holds (secure contexts only);
//   "none"    else, each tab has its own connection (still one for all of that tab's jobs).
//
// Exactly once, in order: each job's entries carry their seq; the connection's manager
// forwards an entry only if it follows the last one (a skipped seq within a connection makes
// it read again from there), and each watch drops any seq it has already seen. Changing the
// set of jobs of a lane reconnects that lane with every job's position inline
// (job=<id>:<seq>~<epoch>). After an error a lane reconnects after a full-jitter backoff whose
// floor is the server's retry (from `hello`).
//
// The same file is the page API and, inside a SharedWorker, the manager: no build step.
(function (root) {
  "use strict";

  // Pages and workers of one version only talk to each other. The version is the messages'
  // (PROTOCOL) and, when the page loaded this file as jobcast.js?v=<digest> (Jobcast's own
  // pages do), the file's digest: a deploy that changes the file starts new workers rather
  // than joining the old code still running for tabs opened before. A worker reads its
  // version from its URL, where the page put it (its last v=).
  var PROTOCOL = "1";
  var VERSION = version();
  var TERMINAL = { finished: true, failed: true, cancelled: true };
  var ENTRY_KINDS = ["queued", "started", "value", "log", "retrying", "finished", "failed", "cancelled"];
  var JOB_META = ["tail", "trimmed", "missing", "ended", "reset"];
  var LIST_EVENTS = ["snapshot", "job"];
  var MAX_JOBS = 100;               // the server's cap per stream; more jobs go on another lane
  // The server's longest /events query (MAX_QUERY, web/events.py). A view link's sig= per job
  // makes a job cost about 170 bytes, so fewer than MAX_JOBS may fit: the rest go on another lane.
  var MAX_QUERY = 8000;

  function version() {
    var doc = root.document, src = "", vs = [];
    if (doc) {
      var tag = doc.currentScript || doc.querySelector("script[src*='jobcast.js']");
      src = tag ? tag.src : "";
    } else if (root.location) {
      src = root.location.href;
    }
    try { vs = new URL(src).searchParams.getAll("v"); } catch (e) { vs = []; }
    // A page takes a digest of up to 64 characters; its worker, the version made of it.
    var v = doc ? vs[0] : vs[vs.length - 1], most = doc ? 64 : 64 + PROTOCOL.length + 1;
    if (!v || v.length > most || !/^[A-Za-z0-9_.-]+$/.test(v)) { return PROTOCOL; }
    return doc ? PROTOCOL + "-" + v : v;
  }
  // Most connections (lanes) the jobs are spread over: half the six a browser allows per host
  // over HTTP/1.1, the other half left for the page's own requests. Jobs beyond wait their turn.
  var MAX_LANES = 3;
  var CURSOR_COST = "%3A9007199254740992~".length + 16;    // ":<seq>~<epoch>" encoded, at its longest
  var LIST_COST = "list=500:9007199254740992~&".length + 16;
  var RING = 2000;                  // entries kept per job, to serve a tab that joins later
  var CAP = 30000;                  // longest wait between two connection attempts (ms)
  var DEBOUNCE = 150;               // job-set changes within this many ms make one reconnect
  var STATUS_EVERY = 15000;         // how often the job's status (watchers) is read again
  // A new watcher's status is read again this long after it joins: each web process
  // publishes its viewer counts every 3 s (web/presence.py), so the first read, made before
  // its own stream is open, does not count it yet ("Watching 0" for 15 s). Twice, should a
  // busy process publish late.
  var STATUS_AFTER_JOIN = [4000, 9000];
  var STATUS_BY_CHANGE = { queued: "queued", started: "running", retrying: "queued",
                           finished: "finished", failed: "failed", cancelled: "cancelled" };

  // Full jitter (as centrifuge-js): the server's retry as a floor, then a random share of an
  // exponentially growing window, so a restarted server is not met by every client at once.
  function backoff(floor, attempt) {
    var window = Math.min(CAP, floor * Math.pow(2, attempt));
    return Math.min(CAP, floor + Math.floor(Math.random() * window));
  }

  // Soon, in order, never within the caller (messages behave alike in every sharing mode).
  function later(fn) { Promise.resolve().then(fn); }

  // A callback of the caller's, whose exception must not break the stream for the others.
  function call(fn, a, b) {
    if (typeof fn !== "function") { return; }
    try { fn(a, b); } catch (e) { setTimeout(function () { throw e; }, 0); }
  }

  function randomId() { return Math.random().toString(36).slice(2) + Date.now().toString(36); }

  // ---- the job list's model: JobInfo rows kept current by the feed's items ------------------

  // Apply a feed item to a JobInfo row (as GET /api/jobs lists them) when it is newer than
  // the row (item.jseq > row.last_seq): a snapshot and items that cross are then harmless.
  function applyChange(job, item) {
    if (!(item.jseq > (job.last_seq || 0))) { return false; }
    job.last_seq = item.jseq;
    if (STATUS_BY_CHANGE[item.change]) { job.status = STATUS_BY_CHANGE[item.change]; }
    if (item.change === "progress" && job.status === "queued") { job.status = "running"; }
    job.progress = job.progress || { i: 0, n: null };
    if (typeof item.values === "number") { job.progress.i = item.values; }
    if (item.n !== undefined && item.n !== null) { job.progress.n = item.n; }
    if (item.task) { job.task = item.task; }
    if (item.change === "started") {
      job.worker = item.worker || job.worker;
      job.attempt = item.attempt || job.attempt;
      job.started_at = job.started_at || item.ts;
    }
    if (item.reason !== undefined) { job.reason = item.reason; }
    if (TERMINAL[item.change]) { job.ended_at = item.ts; }
    if (item.change === "cancelled") { job.cancelled_by = item.by || null; }
    return true;
  }

  // A row for a job the list has not seen: only a creation (queued) makes one.
  function newRow(item) {
    return { id: item.job, task: item.task || "", params: {}, status: "queued",
             progress: { i: 0, n: null }, worker: null, attempt: 0,
             created_at: item.created_at || item.ts,
             started_at: null, ended_at: null, reason: null, last_seq: 0, cancelled_by: null };
  }

  // Apply an item to a model (Map id → row) of at most `limit` rows, newest first; the row
  // changed (or made), or null when the item is about a job outside the list.
  function applyToModel(model, item, limit) {
    var row = model.get(item.job);
    if (row && item.change === "queued" && item.created_at > (row.created_at || 0)) {
      // The id runs again (RQ's Repeat, a requeue): its log was opened anew, and its seqs
      // start again at 1. The row is the new run's, where a duplicate creation changes none.
      model.delete(item.job);
      row = null;
    }
    if (!row) {
      if (item.change !== "queued") { return null; }
      row = newRow(item);
      model.set(item.job, row);
    }
    applyChange(row, item);
    if (model.size > limit) { sorted(model, model.size).slice(limit).forEach(function (j) { model.delete(j.id); }); }
    return model.has(item.job) ? row : null;
  }

  // The rows of a model, newest first, at most `limit` of them.
  function sorted(model, limit) {
    return Array.from(model.values()).sort(function (a, b) {
      return (b.created_at || 0) - (a.created_at || 0);
    }).slice(0, limit);
  }

  // ---- the manager: one EventSource for every job any client watches -----------------------
  //
  // (Or a few, "lanes", when the jobs do not fit one: see Lane.)
  //
  // Clients are tabs (a MessagePort in the worker, a tab id on the BroadcastChannel, or the
  // page itself). send(clients, message) delivers to them. Messages to the manager:
  //   {t:"watch", job, after, epoch, tail, sig, status}   {t:"unwatch", job}
  //   {t:"list", limit, after, epoch}   {t:"unlist"}   {t:"bye"}
  // (`epoch`: the incarnation of the log, or of the feed, that `after` was taken in: a resume
  // names it, so the server can tell a position that a failover voided.)
  // and from it: {t:"ev", job, ev, d} (an entry or a job's tail/trimmed/missing/ended/reset/
  // refused), {t:"lev", ev, d} (the list's snapshot/job/refused), {t:"state", state, jobs,
  // list} (`jobs`: those of the lanes that are live), {t:"status", job, d} (GET
  // /api/jobs/<id>), {t:"stats", d}.

  function Manager(base, send) {
    this.base = base;               // the server's URL prefix, ending in "/"
    this.send = send;
    this.jobs = new Map();          // id → job record (below)
    this.list = null;               // the job list's record, when a client asks for it
    this.clients = new Map();       // client → {jobs: Set, list: bool}
    this.lanes = [];                // the connections, each with jobs of its own (Lane); the
                                    // first carries the job list
    this.room = MAX_QUERY;          // the query a lane may use (less once a 414 says so)
    this.timer = null;
    this.due = 0;
    this.floor = 1000;              // the server's retry (ms), from `hello`
    this.state = "connecting";      // of the lanes together: reconnecting, else live, else as was
    this.statusTimer = null;
    this.counts = { connections: 0, reconnects: 0, duplicates: 0, gaps: 0 };
  }

  // One message from a client.
  Manager.prototype.handle = function (client, m) {
    switch (m.t) {
      case "watch": this.watch(client, m); break;
      case "unwatch": this.unwatch(client, m.job); break;
      case "list": this.watchList(client, m); break;
      case "unlist": this.unwatchList(client); break;
      case "bye": this.drop(client); break;
      case "stats": this.send([client], { t: "stats", d: this.stats() }); break;
    }
  };

  Manager.prototype.client = function (client) {
    var c = this.clients.get(client);
    if (!c) { c = { jobs: new Set(), list: false }; this.clients.set(client, c); }
    return c;
  };

  // A client watches a job from `after` (its position, of `epoch`), or its last `tail` values.
  Manager.prototype.watch = function (client, m) {
    var J = this.jobs.get(m.job), after = m.after || 0, epoch = after ? m.epoch || null : null;
    var wantsTail = m.tail !== null && m.tail !== undefined && !after;
    this.client(client).jobs.add(m.job);
    if (!J) {
      // A new manager (a relink, a new leader) resumes each job where its clients are, in the
      // epoch they are in: without it the server would trust a position a failover voided.
      J = { id: m.job, cursor: after, epoch: epoch, tail: wantsTail ? m.tail : null, sig: m.sig || null,
            clients: new Map(), lane: null, ring: [], values: 0, started: false, ended: false,
            missing: false, refused: false, refusedEv: null, fresh: false, startsAt: null,
            lowered: false, respec: false, tailEv: null, trimmedEv: null, stuck: 0, seen: -1,
            agree: {} };
      this.jobs.set(m.job, J);
      J.clients.set(client, { status: !!m.status });
      this.sendState([client]);
      this.changed();
    } else {
      J.clients.set(client, { status: !!m.status });
      this.sendState([client]);
      if (J.refused && m.sig && m.sig !== J.sig) { J.refused = false; J.respec = true; this.changed(); }
      if (m.sig) { J.sig = m.sig; }
      if (J.refused) {
        this.send([client], { t: "ev", job: J.id, ev: "refused", d: J.refusedEv });
      } else {
        this.catchUp(J, client, after, epoch, wantsTail ? m.tail : null);
      }
    }
    if (m.status) {
      this.status(J, [client]);
      this.statusLoop();
      var self = this;
      STATUS_AFTER_JOIN.forEach(function (delay) {
        setTimeout(function () {
          if (J.ended || self.jobs.get(J.id) !== J) { return; }
          // To the clients that want it, named: not a round (a round with no clients named
          // also judges whether the stream is stuck, on reads 15 s apart).
          var wanting = self.wantingStatus(J);
          if (wanting.length) { self.status(J, wanting); }
        }, delay);
      });
    }
  };

  // A client joins a job others already follow: give it what it lacks from the ring, or read
  // the job again from where it needs (the others drop what they already have, by seq). A
  // position moved back to the client's takes its epoch along.
  Manager.prototype.catchUp = function (J, client, after, epoch, tail) {
    var self = this;
    function send(ev, d) { self.send([client], { t: "ev", job: J.id, ev: ev, d: d }); }
    var other = tail === null && epoch && J.epoch && epoch !== J.epoch;
    if (other) {
      // A client back in an older incarnation of the log (a tab frozen while a failover reset
      // the others): what it holds past the point where that incarnation and the manager's
      // agree is void. Where the manager saw the change, it knows that point; where it did
      // not, a position within its own is the server's to judge (still `other`, below), and
      // one past it is reset to the start, since nothing tells which of its entries hold.
      var agreed = this.agreed(J, epoch) || (after > J.cursor ? { after: 0, values: 0 } : null);
      if (agreed) {
        if (after > agreed.after) {
          send("reset", { job: J.id, epoch: J.epoch, after: agreed.after, values: agreed.values,
                          reason: "lost", was: { seq: after, epoch: epoch } });
          after = agreed.after;
        }
        epoch = J.epoch;
        other = false;
      }
    }
    if (!J.started) {
      // Nothing delivered yet: the next connection asks for what every client needs.
      if (J.missing) { send("missing", { job: J.id }); return; }
      if (tail !== null) {
        if (J.tail !== null && tail > J.tail) { J.tail = tail; J.respec = true; this.changed(); }
      } else if (J.tail !== null || after < J.cursor || other) {
        J.tail = null;
        if (after < J.cursor || other) { J.cursor = after; J.epoch = epoch; }
        J.respec = true;
        this.changed();
      } else if (after === J.cursor && !J.epoch) {
        J.epoch = epoch;
      }
      return;
    }
    var ring = J.ring;
    if (tail !== null) {
      // Its last `tail` values, as the server's ?tail= would start (from the ring).
      var k = ring.length, values = 0;
      while (k > 0 && values < tail) { k -= 1; if (ring[k].kind === "value") { values += 1; } }
      var before = k > 0 ? ring[k - 1].seq : (ring.length ? ring[0].seq - 1 : J.cursor);
      var firstValue = null;
      for (var v = k; v < ring.length; v++) { if (ring[v].kind === "value") { firstValue = ring[v].i; break; } }
      send("tail", { job: J.id, tail: tail, after: before, skipped: firstValue === null ? J.values : firstValue });
      for (var i = k; i < ring.length; i++) { send(ring[i].kind, ring[i]); }
      if (J.ended && !ring.length) { send("ended", { job: J.id, after: J.cursor }); }
      return;
    }
    if (after >= J.cursor && !other) {
      if (J.ended) { send("ended", { job: J.id, after: J.cursor }); }
      return;
    }
    var first = ring.length ? ring[0].seq : J.cursor + 1;
    var fromTrim = after === 0 && J.trimmedEv && first === J.trimmedEv.first_seq;
    // A position in another incarnation of the log than the ring's is the server's to judge
    // (a reset, if what the client holds was lost): never served from the ring.
    if (!other && (first <= after + 1 || fromTrim)) {
      if (fromTrim) { send("trimmed", J.trimmedEv); }
      for (var j = 0; j < ring.length; j++) { if (ring[j].seq > after) { send(ring[j].kind, ring[j]); } }
      return;
    }
    // The ring does not reach back that far (or is of another epoch): read the job again
    // from `after`, in the client's epoch.
    J.cursor = after;
    J.epoch = epoch;
    J.ring = [];
    J.ended = false;
    J.lowered = true;
    this.changed();
  };

  // Up to where a position of `epoch` holds in the manager's incarnation of J's log (the seq,
  // and the values before it), from the changes it saw (J.agree: each incarnation, and the
  // next one with the point up to which both agree); null if it saw no way from one to the other.
  Manager.prototype.agreed = function (J, epoch) {
    var point = null, seen = {};
    while (epoch !== J.epoch) {
      var a = J.agree[epoch];
      if (!a || seen[epoch]) { return null; }
      seen[epoch] = true;
      if (!point || a.after < point.after) { point = { after: a.after, values: a.values }; }
      epoch = a.to;
    }
    return point;
  };

  Manager.prototype.unwatch = function (client, job) {
    var J = this.jobs.get(job), c = this.clients.get(client);
    if (c) { c.jobs.delete(job); }
    if (!J) { return; }
    J.clients.delete(client);
    if (J.clients.size === 0) { this.jobs.delete(job); this.changed(); }
  };

  // A client wants the job list (a snapshot of the newest `limit` jobs, then every change).
  Manager.prototype.watchList = function (client, m) {
    var L = this.list, after = m.after === undefined ? null : m.after;
    var epoch = after === null ? null : m.epoch || null;
    this.client(client).list = true;
    if (!L) {
      this.list = { limit: m.limit, cursor: after, epoch: epoch, model: null, clients: new Set([client]),
                    fresh: false, respec: false };
      this.sendState([client]);
      this.changed();
      return;
    }
    L.clients.add(client);
    this.sendState([client]);
    // A client back in another incarnation of the feed (a tab frozen through a failover):
    // nothing says which of its items hold, so it gets a snapshot, as a new one does.
    var other = after !== null && epoch && L.epoch && epoch !== L.epoch;
    if (m.limit > L.limit || (other && !L.model)) {
      L.limit = Math.max(L.limit, m.limit);   // a bigger list: everyone gets a new snapshot
      L.cursor = null;
      L.model = null;
      L.respec = true;
      this.changed();
    } else if (L.model) {
      if (after === null || after < L.cursor || other) {
        this.send([client], { t: "lev", ev: "snapshot", d: { seq: L.cursor, epoch: L.epoch || null, jobs: sorted(L.model, m.limit) } });
      }
    } else if (L.cursor !== null && (after === null || after < L.cursor)) {
      L.cursor = after;             // resumed without a snapshot: ask again from where it needs
      L.epoch = epoch;
      L.respec = true;
      this.changed();
    }
  };

  Manager.prototype.unwatchList = function (client) {
    var c = this.clients.get(client), L = this.list;
    if (c) { c.list = false; }
    if (!L) { return; }
    L.clients.delete(client);
    if (L.clients.size === 0) { this.list = null; this.changed(); }
  };

  // A client is gone (closed, or silent too long): forget what it watched.
  Manager.prototype.drop = function (client) {
    var c = this.clients.get(client), self = this;
    if (!c) { return; }
    c.jobs.forEach(function (job) { self.unwatch(client, job); });
    if (c.list) { this.unwatchList(client); }
    this.clients.delete(client);
    this.broadcastStats();
  };

  // ---- lanes: the connections the jobs are spread over ----------------------------------------
  //
  // One connection carries every job whenever they fit: at most MAX_JOBS, within the server's
  // query (MAX_QUERY), each job counted at its longest cursor so that a set that fits goes on
  // fitting as the cursors grow. Those that do not fit go on another lane, up to MAX_LANES;
  // beyond, they wait for room. A job stays on its lane until it leaves it (ended, refused,
  // unwatched): a new job goes to the first lane with room, so a change reconnects the lane it
  // changes and no other (each reconnect is a round trip and a read of history). Each lane is
  // its own EventSource, with its own cursor (the server's event id names its jobs), backoff
  // and refusals; a job that changes lanes resumes from its position inline, as on any
  // reconnect. The job list rides on the first lane.

  function Lane() {
    this.jobs = new Set();          // ids of the jobs it carries (or will, once it reconnects)
    this.list = false;              // it carries the job list (the first lane only)
    this.es = null;
    this.conn = null;               // {url, ids, list, opened, gap, ended}: what the EventSource asked for
    this.force = false;             // reconnect even if its set of jobs is the same
    this.notBefore = 0;             // backing off: no attempt before this time
    this.attempt = 0;
    this.forced = 0;                // reconnects it was asked for (a gap) within a minute …
    this.forcedAt = 0;              // … and when the last one was
    this.state = "connecting";      // connecting, live, reconnecting
    this.left = 0;                  // the query it has left, and the sigs it already sends
    this.sigs = new Set();
  }

  Lane.prototype.close = function () {
    if (this.es) { this.es.close(); this.es = null; }
  };

  // A job some client watches, that the server may still send and has not refused.
  Manager.prototype.wanted = function (J) {
    return J.clients.size > 0 && !J.ended && !J.refused;
  };

  // What a job adds to a lane's query: its job= at its longest cursor, and its sig= unless the
  // lane sends that one already.
  Manager.prototype.cost = function (J, sigs) {
    var cost = "job=&".length + encodeURIComponent(J.id).length + CURSOR_COST;
    if (J.sig && !sigs.has(J.sig)) { cost += "sig=&".length + encodeURIComponent(J.sig).length; }
    return cost;
  };

  Manager.prototype.place = function (J, lane) {
    lane.left -= this.cost(J, lane.sigs);
    if (J.sig) { lane.sigs.add(J.sig); }
    lane.jobs.add(J.id);
    J.lane = lane;
  };

  // Which lane carries which job (see above). Sticky: a lane's set changes only when one of its
  // jobs leaves, a new one joins it, or it no longer fits (the list joined it, a sig changed, a
  // 414 shrank the room).
  Manager.prototype.assign = function () {
    var self = this, L = this.list && this.list.clients.size ? this.list : null;
    // Jobs that ended, were refused or unwatched leave their lane; a lane left with nothing
    // closes (the first stays for the list, if wanted).
    this.lanes.forEach(function (lane) {
      lane.jobs.forEach(function (id) {
        var J = self.jobs.get(id);
        if (J && J.lane === lane && self.wanted(J)) { return; }
        lane.jobs.delete(id);
        if (J && J.lane === lane) { J.lane = null; }
      });
    });
    this.lanes.slice().forEach(function (lane, k) {
      if (!lane.jobs.size && !(L && k === 0)) { self.dropLane(lane); }
    });
    if (L && !this.lanes.length) { this.lanes.push(new Lane()); }
    // What each lane's jobs use of its room, in the order they came (as its query lists them);
    // those over it wait again. (One that could never fit goes alone on a lane without the
    // list: the server's 414 then refuses it, not the rest.)
    this.lanes.forEach(function (lane, k) {
      var n = 0;
      lane.list = !!L && k === 0;
      lane.left = self.room - (lane.list ? LIST_COST : 0);
      lane.sigs = new Set();
      self.jobs.forEach(function (J) {
        if (J.lane !== lane) { return; }
        if (n >= MAX_JOBS || (self.cost(J, lane.sigs) > lane.left && (n || lane.list))) {
          lane.jobs.delete(J.id);
          J.lane = null;
          return;
        }
        self.place(J, lane);
        n += 1;
      });
    });
    // Jobs without a lane, in the order they came: the first lane with room, else a new lane.
    this.jobs.forEach(function (J) {
      if (J.lane || !self.wanted(J)) { return; }
      var lane = null;
      for (var k = 0; k < self.lanes.length && !lane; k++) {
        var l = self.lanes[k];
        if (l.jobs.size < MAX_JOBS && self.cost(J, l.sigs) <= l.left) { lane = l; }
      }
      if (!lane && self.lanes.length < MAX_LANES) {
        lane = new Lane();
        lane.left = self.room;
        self.lanes.push(lane);
      }
      if (lane) { self.place(J, lane); }
    });
  };

  // A lane with nothing left to carry: close it.
  Manager.prototype.dropLane = function (lane) {
    var self = this, k = this.lanes.indexOf(lane);
    lane.close();
    if (k >= 0) { this.lanes.splice(k, 1); }
    lane.jobs.forEach(function (id) { var J = self.jobs.get(id); if (J && J.lane === lane) { J.lane = null; } });
    lane.jobs.clear();
  };

  // The set of jobs changed: reconnect soon (changes within DEBOUNCE ms make one).
  Manager.prototype.changed = function () {
    this.schedule(DEBOUNCE);
  };

  Manager.prototype.schedule = function (delay) {
    var self = this, due = Date.now() + delay;
    if (this.stopped || (this.timer !== null && this.due <= due)) { return; }
    clearTimeout(this.timer);
    this.due = due;
    this.timer = setTimeout(function () { self.timer = null; self.connect(); }, delay);
  };

  // Spread the jobs over the lanes, and open each lane whose set changed (or that must start
  // again), unless it is backing off: that one opens once its wait is over.
  Manager.prototype.connect = function () {
    var self = this, now = Date.now(), next = Infinity, before = this.lanes.slice(), opened = false;
    clearTimeout(this.timer);
    this.timer = null;
    if (this.stopped) { return; }
    this.assign();
    this.lanes.forEach(function (lane) {
      if (lane.es && !lane.force && !self.differs(lane)) { return; }
      if (lane.notBefore > now) { next = Math.min(next, lane.notBefore); return; }
      self.open(lane);
      opened = true;
    });
    if (next < Infinity) { this.schedule(next - now); }
    var moved = before.length !== this.lanes.length || before.some(function (lane, k) { return self.lanes[k] !== lane; });
    if (moved) { this.setState(this.aggregate()); }   // a lane closed, or a new one is connecting
    if (opened || moved) { this.broadcastStats(); }
  };

  // Open a lane's EventSource for its jobs (and the list, on the first).
  Manager.prototype.open = function (lane) {
    var self = this, L = lane.list ? this.list : null, query = [], sigs = [], ids = [];
    lane.force = false;
    lane.close();
    this.jobs.forEach(function (J) {
      if (J.lane !== lane) { return; }
      var spec = J.id;
      if (J.tail !== null && !J.started && !J.cursor) { spec += "~" + J.tail; }
      else if (J.cursor) { spec += ":" + J.cursor + (J.epoch ? "~" + J.epoch : ""); }
      query.push("job=" + encodeURIComponent(spec));
      if (J.sig && sigs.indexOf(J.sig) < 0) { sigs.push(J.sig); }
      ids.push(J.id);
      J.fresh = true;
      J.startsAt = null;
      J.lowered = false;
      J.respec = false;
    });
    if (L) {
      query.push("list=" + L.limit + (L.cursor !== null
        ? ":" + L.cursor + (L.epoch ? "~" + L.epoch : "") : ""));
      L.fresh = true;
      L.respec = false;
    }
    sigs.forEach(function (sig) { query.push("sig=" + encodeURIComponent(sig)); });
    var url = this.base + "events?" + query.join("&");
    var es = new EventSource(url);
    lane.es = es;
    lane.conn = { url: url, ids: ids, list: !!L, opened: false, gap: false,
                  ended: {} };  // jobs whose stream the server has ended (by id)
    this.counts.connections += 1;
    ENTRY_KINDS.concat(JOB_META, LIST_EVENTS, ["hello", "bye"]).forEach(function (type) {
      es.addEventListener(type, function (ev) { if (lane.es === es) { self.onEvent(lane, type, ev.data); } });
    });
    es.addEventListener("error", function () { if (lane.es === es) { self.onError(lane); } });
  };

  // Does the lane's open connection miss a job, carry one nobody wants there (and still
  // streaming), or need a new start?
  Manager.prototype.differs = function (lane) {
    var self = this, conn = lane.conn, L = this.list, stale = false;
    if (lane.list !== conn.list || (lane.list && L.respec)) { return true; }
    var unwanted = conn.ids.some(function (id) {
      var J = self.jobs.get(id);
      return !conn.ended[id] && (!J || !J.clients.size || J.lane !== lane);
    });
    lane.jobs.forEach(function (id) {
      var J = self.jobs.get(id);
      // (A job this connection has ended, watched again since: it will send nothing more.)
      if (J.lowered || J.respec || conn.ids.indexOf(id) < 0 || conn.ended[id]) { stale = true; }
    });
    return unwanted || stale;
  };

  // For good (the page that ran it is going): no connection, no timer left behind.
  Manager.prototype.stop = function () {
    this.stopped = true;
    clearTimeout(this.timer);
    clearInterval(this.statusTimer);
    this.lanes.forEach(function (lane) { lane.close(); });
  };

  // Read a lane again (a gap, or a connection that stopped bringing anything): at once the
  // first time; more within a minute wait as a failed connection does, so a server that keeps
  // sending gaps is not met with a tight loop of reconnects.
  Manager.prototype.reconnect = function (lane) {
    if (!lane) { return; }
    var now = Date.now();
    lane.forced = now - lane.forcedAt < 60000 ? lane.forced + 1 : 0;
    lane.forcedAt = now;
    if (lane.forced) { lane.notBefore = Math.max(lane.notBefore, now + backoff(this.floor, lane.forced - 1)); }
    lane.force = true;
    this.schedule(0);
  };

  // One event of a lane's stream.
  Manager.prototype.onEvent = function (lane, type, data) {
    var d;
    try { d = JSON.parse(data); } catch (e) { return; }
    if (type === "hello") {
      lane.conn.opened = true;
      if (d.retry > 0) { this.floor = d.retry; }
      lane.attempt = 0;
      lane.notBefore = 0;
      lane.state = "live";
      this.state = this.aggregate();  // every client: which jobs are now live
      this.sendState(Array.from(this.clients.keys()));
      this.broadcastStats();
      return;
    }
    if (type === "bye") { if (d.retry > 0) { this.floor = d.retry; } return; }
    if (type === "snapshot" || type === "job") {
      // (A list asked for anew, as a job is below: the next connection answers.)
      if (this.list && !this.list.respec) { this.onList(lane, type, d); }
      return;
    }
    if (TERMINAL[type] || type === "missing" || type === "ended") { lane.conn.ended[d.job] = true; }
    var J = this.jobs.get(d.job);
    if (!J) { return; }
    // Asked for anew (the whole log rather than a tail, a bigger tail, an earlier position):
    // what this connection still brings of it answers the old question (a tail would pass
    // the history a client joining since needs), and the next connection answers the new one.
    if (J.respec || J.lowered) { return; }
    if (JOB_META.indexOf(type) >= 0) { this.onMeta(J, type, d); } else { this.onEntry(lane, J, type, d); }
  };

  // tail, trimmed, missing, ended, reset: where a job's stream starts, or that it will not.
  Manager.prototype.onMeta = function (J, type, d) {
    switch (type) {
      case "tail":
        J.cursor = Math.max(J.cursor, d.after || 0);
        J.values = d.skipped || 0;
        J.tailEv = d;
        J.started = true;
        J.ring = [];
        break;
      case "trimmed":
        J.trimmedEv = d;
        if (J.fresh && d.after === J.cursor) { J.startsAt = d.first_seq; }  // told before the first entry
        if (J.started && d.after === J.cursor && d.first_seq - 1 > J.cursor) {
          // Mid-stream: a capped log outran this connection, and goes on at first_seq.
          J.cursor = d.first_seq - 1;
          J.ring = [];
          if (typeof d.first_value === "number") { J.values = Math.max(J.values, d.first_value); }
        }
        break;
      case "missing":
        J.missing = true;
        J.ended = true;
        break;
      case "ended":
        J.ended = true;
        J.started = true;
        this.changed();
        break;
      case "reset":                 // Redis failed over: what came after `after` is void
        if (typeof d.values === "number") { J.values = d.values; }
        var was = (d.was && d.was.epoch) || J.epoch;
        if (was && d.epoch && was !== d.epoch) {
          J.agree[was] = { to: d.epoch, after: d.after, values: d.values || 0 };
        }
        if (d.after < J.cursor) { J.cursor = d.after; J.ended = false; }
        J.epoch = d.epoch;
        J.ring = J.ring.filter(function (e) { return e.seq <= d.after; });
        break;
    }
    this.send(Array.from(J.clients.keys()), { t: "ev", job: J.id, ev: type, d: d });
  };

  // An entry: forwarded once, in seq order; a skipped seq within a connection reads again.
  Manager.prototype.onEntry = function (lane, J, type, d) {
    if (!(d.seq > J.cursor)) { this.counts.duplicates += 1; return; }
    if (d.seq !== J.cursor + 1) {
      // Only a connection whose server said the log starts later (trimmed) may begin past the
      // cursor; any other jump is a gap, read again rather than passed over in silence.
      if (!(J.fresh && J.startsAt !== null && d.seq <= J.startsAt)) {
        // Once per connection: every entry after the gap on it is past the cursor too, and
        // each asking again would count as one more failure, its wait growing every time.
        if (!lane.conn.gap) { lane.conn.gap = true; this.counts.gaps += 1; this.reconnect(lane); }
        return;
      }
      J.ring = [];                  // the log starts later (trimmed): the ring stays contiguous
    }
    J.fresh = false;
    J.started = true;
    if (d.ep && J.epoch && d.ep !== J.epoch) {
      // The log went on in a new incarnation with nothing lost: both agree up to here.
      J.agree[J.epoch] = { to: d.ep, after: J.cursor, values: J.values };
    }
    J.cursor = d.seq;
    if (d.ep) { J.epoch = d.ep; }   // the log's incarnation: a resume names it
    if (type === "value") { J.values = d.i + 1; }
    J.ring.push(d);
    if (J.ring.length > RING + RING / 4) { J.ring.splice(0, J.ring.length - RING); }
    this.send(Array.from(J.clients.keys()), { t: "ev", job: J.id, ev: type, d: d });
    if (TERMINAL[type]) { J.ended = true; this.changed(); }  // a job waiting for room may join
  };

  // The job list: a snapshot, then items (each applied to the model for later joiners).
  Manager.prototype.onList = function (lane, type, d) {
    var L = this.list;
    if (!L) { return; }
    if (type === "snapshot") {
      L.cursor = d.seq;
      L.epoch = d.epoch || null;
      L.model = new Map(d.jobs.map(function (j) { return [j.id, j]; }));
      L.fresh = false;
    } else {
      if (L.cursor !== null && !(d.seq > L.cursor)) { this.counts.duplicates += 1; return; }
      if (L.cursor !== null && d.seq !== L.cursor + 1 && !L.fresh) {
        this.counts.gaps += 1;
        this.reconnect(lane);
        return;
      }
      L.fresh = false;
      L.cursor = d.seq;
      if (d.ep) { L.epoch = d.ep; }
      if (L.model) { applyToModel(L.model, d, L.limit); }
    }
    this.send(Array.from(L.clients), { t: "lev", ev: type, d: d });
  };

  // A lane's connection failed or ended: say so, then try again after a backoff (its own: the
  // other lanes go on).
  Manager.prototype.onError = function (lane) {
    var self = this, conn = lane.conn;
    lane.close();
    this.assign();                  // what it should carry now: its jobs may all have ended
    if (this.lanes.indexOf(lane) < 0) {     // closed, having nothing left (a lane it freed may
      this.setState(this.lanes.length ? this.aggregate() : "idle");   // now take waiting jobs)
      this.broadcastStats();
      this.changed();
      return;
    }
    var allEnded = conn.ids.every(function (id) { var J = self.jobs.get(id); return !J || J.ended; });
    if (conn.opened && allEnded && !conn.list) { this.schedule(0); return; }  // new jobs joined meanwhile
    this.counts.reconnects += 1;
    this.setLane(lane, "reconnecting");
    var delay = backoff(this.floor, lane.attempt);
    lane.attempt += 1;
    lane.notBefore = Date.now() + delay;
    this.broadcastStats();
    if (conn.opened) { this.schedule(delay); return; }
    // It never opened: an HTTP error? Read it once, and stop asking for what is refused.
    this.probe(conn.url, lane).then(function () {
      if (self.lanes.length) { self.schedule(Math.max(0, lane.notBefore - Date.now())); }
    });
  };

  // GET the failed URL once to read the server's reason (EventSource does not tell).
  Manager.prototype.probe = function (url, lane) {
    var self = this, ctl = typeof AbortController === "function" ? new AbortController() : null;
    return fetch(url, { cache: "no-store", signal: ctl ? ctl.signal : undefined }).then(function (r) {
      if (r.ok) { if (ctl) { ctl.abort(); } return; }
      var wait = parseFloat(r.headers.get("Retry-After"));
      if ((r.status === 429 || r.status === 503) && wait > 0) {
        // Full (this client's streams, or the process's): not before the server says, and
        // spread over a second so that the refused do not all come back at once.
        lane.notBefore = Math.max(lane.notBefore, Date.now() + Math.min(CAP, 1000 * wait + Math.random() * 1000));
        return;
      }
      if ([400, 401, 403, 404, 414].indexOf(r.status) < 0) { return; }
      return r.json().catch(function () { return {}; }).then(function (body) { self.refuse(r.status, body, url, lane); });
    }).catch(function () { /* unreachable: the backoff goes on */ });
  };

  // The server refused a lane's stream: end what it refused (web/events.py, web/security.py).
  // The job list ("the job list needs the token: …", or a bad list=); one job, which the body
  // names in `job` (no view link of the request grants it, or its link has expired or is for
  // a job that is gone); else everything that URL asked for (no token or link at all, a link
  // that grants none of its jobs, a bad parameter), the other lanes' jobs never. A 414 for
  // more than one thing says the server (or a proxy before it) takes a shorter query than
  // MAX_QUERY: the lanes then get less room, and a job is refused only once it is over the
  // limit alone.
  Manager.prototype.refuse = function (status, body, url, lane) {
    var self = this, message = body.message || "HTTP " + status, conn = lane.conn;
    var ofList = body.field === "list" || /^the job list\b/.test(message);
    var named = !ofList && typeof body.job === "string" ? body.job : null;
    var whole = !ofList && !named && conn && conn.url === url;
    if (whole && status === 414 && (conn.ids.length > 1 || conn.list)) {
      var used = url.length - url.indexOf("?") - 1;
      this.room = Math.min(this.room, Math.floor(used * 3 / 4));
      this.changed();
      return;
    }
    var victims = named ? (this.jobs.has(named) ? [named] : []) : whole ? conn.ids : [];
    victims.forEach(function (id) {
      var J = self.jobs.get(id);
      if (!J) { return; }
      J.refused = true;
      J.refusedEv = { job: id, status: status, reason: body.reason || null, message: message };
      self.send(Array.from(J.clients.keys()), { t: "ev", job: id, ev: "refused", d: J.refusedEv });
    });
    if (this.list && (ofList || (whole && conn.list))) {
      this.send(Array.from(this.list.clients), { t: "lev", ev: "refused", d: { status: status, message: message } });
      this.list = null;
    }
  };

  // The lanes' state together: reconnecting if one is, else live if one is, else as it was
  // (connecting at first; idle once nothing is left to carry).
  Manager.prototype.aggregate = function () {
    var states = this.lanes.map(function (lane) { return lane.state; });
    return states.indexOf("reconnecting") >= 0 ? "reconnecting"
      : states.indexOf("live") >= 0 ? "live" : this.state;
  };

  // A lane's state changed: tell the clients (their jobs on it, and the state of them all).
  Manager.prototype.setLane = function (lane, state) {
    if (lane.state === state) { return; }
    lane.state = state;
    this.state = this.aggregate();
    this.sendState(Array.from(this.clients.keys()));
  };

  Manager.prototype.setState = function (state) {
    if (this.state === state) { return; }
    this.state = state;
    this.sendState(Array.from(this.clients.keys()));
  };

  // The lanes' connections that are open, first to last.
  Manager.prototype.openLanes = function () {
    return this.lanes.filter(function (lane) { return lane.es && lane.conn; });
  };

  // Tell clients whether the connection is live, and with which jobs (those of the live lanes).
  Manager.prototype.sendState = function (clients) {
    var jobs = [], list = false;
    this.lanes.forEach(function (lane) {
      if (lane.state !== "live" || !lane.conn || !lane.conn.opened) { return; }
      jobs = jobs.concat(lane.conn.ids);
      list = list || lane.conn.list;
    });
    this.send(clients, { t: "state", state: this.state, jobs: jobs, list: list, stats: this.stats() });
  };

  // `jobs`: those the open connections carry; `lanes`: how many are open, and `laneJobs` the
  // jobs of each; `connections`: how many were ever opened.
  Manager.prototype.stats = function () {
    var c = this.counts, open = this.openLanes();
    return { connections: c.connections, reconnects: c.reconnects, duplicates: c.duplicates,
             gaps: c.gaps, state: this.state,
             jobs: [].concat.apply([], open.map(function (lane) { return lane.conn.ids; })),
             list: open.some(function (lane) { return lane.conn.list; }),
             lanes: open.length, laneJobs: open.map(function (lane) { return lane.conn.ids.slice(); }),
             retry: this.floor, clients: this.clients.size };
  };

  Manager.prototype.broadcastStats = function () {
    this.send(Array.from(this.clients.keys()), { t: "stats", d: this.stats() });
  };

  // The clients of job J that want its status (the watchers count).
  Manager.prototype.wantingStatus = function (J) {
    return Array.from(J.clients.keys()).filter(function (c) { return J.clients.get(c).status; });
  };

  // GET /api/jobs/<id> for the clients that want it (the watchers count); also a watchdog:
  // a log that grew while the connection brought nothing, twice running, means it is stuck.
  Manager.prototype.status = function (J, clients) {
    var self = this, url = this.base + "api/jobs/" + encodeURIComponent(J.id) +
      (J.sig ? "?sig=" + encodeURIComponent(J.sig) : "");
    fetch(url, { cache: "no-store" }).then(function (r) { return r.ok ? r.json() : null; }).then(function (d) {
      if (!d) { return; }
      var wanting = clients || self.wantingStatus(J);
      self.send(wanting, { t: "status", job: J.id, d: d });
      if (clients) { return; }
      var lane = J.lane, live = !!lane && lane.state === "live" && !!lane.es && lane.conn.ids.indexOf(J.id) >= 0;
      J.stuck = live && !J.ended && d.last_seq > J.cursor && J.cursor === J.seen ? J.stuck + 1 : 0;
      J.seen = J.cursor;
      if (J.stuck >= 2) { J.stuck = 0; self.reconnect(lane); }
    }).catch(function () { /* the next round tries again */ });
  };

  Manager.prototype.statusLoop = function () {
    var self = this;
    if (this.statusTimer !== null) { return; }
    this.statusTimer = setInterval(function () {
      var any = false;
      self.jobs.forEach(function (J) {
        var wants = Array.from(J.clients.values()).some(function (c) { return c.status; });
        if (wants && !J.ended) { any = true; self.status(J, null); }
      });
      if (!any) { clearInterval(self.statusTimer); self.statusTimer = null; }
    }, STATUS_EVERY);
  };

  // ---- inside a SharedWorker: serve the tabs that connect ------------------------------------

  if (typeof SharedWorkerGlobalScope !== "undefined" && root instanceof SharedWorkerGlobalScope) {
    var manager = null;
    var ports = new Map();          // port → when it last spoke
    var sendPorts = function (clients, msg) {
      clients.forEach(function (port) { try { port.postMessage(msg); } catch (e) { /* gone */ } });
    };
    // A tab is gone: forget it.
    var dropPort = function (port) {
      if (!ports.has(port)) { return; }
      ports.delete(port);
      if (manager) { manager.drop(port); }
      port.close();
    };
    root.addEventListener("connect", function (e) {
      var port = e.ports[0];
      ports.set(port, Date.now());
      port.onmessage = function (ev) {
        var m = ev.data;
        ports.set(port, Date.now());
        if (m.t === "hello") {
          if (!manager) { manager = new Manager(m.base, sendPorts); }
          port.postMessage({ t: "hello", version: VERSION });
          return;
        }
        if (m.t === "lock") {
          // In a secure context the tab holds a lock for its life (and says so once it does):
          // granted here once the tab is gone.
          if (root.navigator && root.navigator.locks) {
            root.navigator.locks.request(m.name, function () { dropPort(port); });
          }
          return;
        }
        if (m.t === "ping") { port.postMessage({ t: "pong" }); return; }
        if (!manager) { return; }
        if (m.t === "bye") { dropPort(port); return; }
        manager.handle(port, m);
      };
      port.start();
    });
    // A port's close is not reliably seen: tabs ping every 20 s (hidden ones maybe once a
    // minute) and say bye on pagehide; one silent for 150 s is dropped (a tab frozen that
    // long finds its pings unanswered when it resumes, and joins again).
    setInterval(function () {
      var now = Date.now();
      ports.forEach(function (seen, port) { if (now - seen > 150000) { dropPort(port); } });
    }, 30000);
    return;
  }

  // ---- in a page ------------------------------------------------------------------------------

  var doc = root.document;
  var script = doc && (doc.currentScript || doc.querySelector("script[src*='jobcast.js']"));
  var SCRIPT = script ? script.src : "";
  var config = { share: "auto", base: null };
  if (root.JobcastConfig) { configure(root.JobcastConfig); }
  var hub = null;

  // The server's prefix: where this script came from, less static/jobcast.js.
  function defaultBase() {
    var m = /^(.*\/)static\/jobcast\.js(?:[?#].*)?$/.exec(SCRIPT);
    return m ? m[1] : new URL("/", root.location.href).href;
  }

  function base() {
    var b = new URL(config.base || defaultBase(), root.location.href).href;
    return b.charAt(b.length - 1) === "/" ? b : b + "/";
  }

  // The sharing modes this browser and page allow, best first.
  function modes() {
    var out = [], loc = root.location;
    var sameOrigin = SCRIPT && new URL(SCRIPT, loc.href).origin === loc.origin &&
      new URL(base()).origin === loc.origin;
    if (typeof SharedWorker === "function" && sameOrigin) { out.push("worker"); }
    if (root.navigator.locks && typeof BroadcastChannel === "function" && sameOrigin) { out.push("locks"); }
    out.push("none");
    return out;
  }

  // The mode to use: the one asked for if this browser has it, else the best there is.
  function pickMode(after) {
    var can = modes();
    if (after) { can = can.slice(can.indexOf(after) + 1); }
    if (config.share !== "auto" && can.indexOf(config.share) >= 0) { return config.share; }
    return can[0] || "none";
  }

  // -- links: how this tab's hub reaches the manager ------------------------------------------

  // "none": the manager lives in this page.
  function LocalLink(hub) {
    var self = this;
    this.leader = true;
    this.manager = new Manager(base(), function (clients, msg) { later(function () { if (!self.closed) { hub.receive(msg); } }); });
  }
  LocalLink.prototype.send = function (m) { var self = this; later(function () { if (!self.closed) { self.manager.handle("page", m); } }); };
  LocalLink.prototype.close = function () { this.closed = true; this.manager.stop(); };

  // "worker": a SharedWorker running this file holds the connection for every tab.
  function WorkerLink(hub) {
    var self = this, url = SCRIPT.split("#")[0];
    url += (url.indexOf("?") < 0 ? "?" : "&") + "v=" + VERSION;
    this.hub = hub;
    this.leader = false;
    this.ready = false;
    this.heard = Date.now();        // when the worker last said anything
    var worker = new SharedWorker(url, { name: "jobcast-" + VERSION + " " + base() });
    worker.addEventListener("error", function () { self.fail(); });
    this.port = worker.port;
    this.port.onmessage = function (e) {
      self.heard = Date.now();
      if (e.data.t === "pong") { return; }
      if (e.data.t === "hello") {
        // A worker of another version (its URL and name carry this one's): not ours to use.
        if (e.data.version !== VERSION) { self.fail(); return; }
        self.ready = true;
        clearTimeout(self.timer);
        return;
      }
      hub.receive(e.data);
    };
    this.port.start();
    this.port.postMessage({ t: "hello", base: base() });
    if (root.navigator.locks) {
      // Held for the tab's life; the worker waits on it only once it is held (else it could
      // take the lock first and drop this tab at once).
      var lock = "jobcast-" + VERSION + " tab " + randomId();
      root.navigator.locks.request(lock, function () {
        self.send({ t: "lock", name: lock });
        return new Promise(function (resolve) { self.releaseTab = resolve; });
      });
    }
    // A worker that never answers (blocked, broken): fall back to the next mode.
    this.timer = setTimeout(function () { if (!self.ready) { self.fail(); } }, 5000);
    this.ping = setInterval(function () { self.probe(); }, 20000);
    this.fail = function () {
      if (self.closed) { return; }
      self.close();
      hub.relink(pickMode("worker"));
    };
  }
  WorkerLink.prototype.send = function (m) { if (!this.closed) { this.port.postMessage(m); } };
  // Ping the worker (which says this tab is alive); unanswered, the worker has forgotten
  // this tab (it was frozen longer than the worker waits) or is gone (it crashed): join a
  // worker again, and resubscribe from where this tab's watches are.
  WorkerLink.prototype.probe = function () {
    var self = this, sent = Date.now();
    if (this.closed) { return; }
    this.port.postMessage({ t: "ping" });
    setTimeout(function () {
      if (!self.closed && self.ready && self.heard < sent) { self.hub.relink("worker"); }
    }, 3000);
  };
  WorkerLink.prototype.close = function () {
    if (this.closed) { return; }
    this.closed = true;
    clearTimeout(this.timer);
    clearInterval(this.ping);
    try { this.port.postMessage({ t: "bye" }); } catch (e) { /* closing anyway */ }
    this.port.close();
    if (this.releaseTab) { this.releaseTab(); }
  };

  // "locks": the tab holding the leader lock runs the manager and relays over a
  // BroadcastChannel. A new leader announces itself; every tab then sends its position per
  // job, and the manager starts each job from the lowest of them.
  function LocksLink(hub) {
    var self = this, name = "jobcast-" + VERSION + " " + base();
    this.hub = hub;
    this.tab = randomId();
    this.name = name;
    this.leader = false;
    this.manager = null;
    this.tabs = new Set();
    this.channel = new BroadcastChannel(name);
    this.channel.onmessage = function (e) { if (!self.closed) { self.onChannel(e.data); } };
    this.release = null;
    this.locked = false;
    // Held for the tab's life: the leader waits on it to learn that the tab is gone (once the
    // tab says it holds it, so the leader never takes it first).
    root.navigator.locks.request(name + " tab " + this.tab, function () {
      self.locked = true;
      if (!self.leader && !self.closed) { self.channel.postMessage({ from: self.tab, m: { t: "lock" } }); }
      return new Promise(function (resolve) { self.releaseTab = resolve; });
    });
    root.navigator.locks.request(name + " leader", function () {
      if (self.closed) { return; }
      self.lead();
      return new Promise(function (resolve) { self.release = resolve; });
    });
  }

  LocksLink.prototype.send = function (m) {
    var self = this;
    if (this.closed) { return; }
    if (this.leader) { later(function () { if (!self.closed) { self.manager.handle(self.tab, m); } }); }
    else { this.channel.postMessage({ from: this.tab, m: m }); }
  };

  // A message on the channel: for this tab, for the leader, or a new leader's announcement.
  LocksLink.prototype.onChannel = function (x) {
    if (x.to) { if (x.to.indexOf(this.tab) >= 0) { this.hub.receive(x.m); } return; }
    if (x.from) {
      if (!this.leader) { return; }
      if (x.m.t === "lock") { this.know(x.from); } else { this.manager.handle(x.from, x.m); }
      return;
    }
    if (x.leader && x.leader !== this.tab) {
      this.hub.resubscribe();
      if (this.locked) { this.channel.postMessage({ from: this.tab, m: { t: "lock" } }); }
    }
  };

  // This tab leads: run the manager, and ask every tab for what it watches.
  LocksLink.prototype.lead = function () {
    var self = this;
    this.leader = true;
    this.manager = new Manager(base(), function (clients, msg) {
      var others = clients.filter(function (c) { return c !== self.tab; });
      if (others.length) { self.channel.postMessage({ to: others, m: msg }); }
      if (others.length < clients.length) { later(function () { if (!self.closed) { self.hub.receive(msg); } }); }
    });
    this.channel.postMessage({ leader: this.tab });
    this.hub.resubscribe();
  };

  // A follower's lock is granted to the leader once that tab is gone: drop its watches.
  LocksLink.prototype.know = function (tab) {
    var self = this;
    if (this.tabs.has(tab)) { return; }
    this.tabs.add(tab);
    root.navigator.locks.request(this.name + " tab " + tab, function () {
      self.tabs.delete(tab);
      if (self.manager) { self.manager.drop(tab); }
    });
  };

  LocksLink.prototype.close = function () {
    if (this.closed) { return; }
    if (!this.leader) { this.send({ t: "bye" }); }
    this.closed = true;
    if (this.manager) { this.manager.stop(); }
    if (this.release) { this.release(); }
    if (this.releaseTab) { this.releaseTab(); }
    this.channel.close();
  };

  // -- the hub: this tab's watches, one subscription per job to the manager -------------------

  function Hub(mode) {
    this.watches = new Map();       // job → Set of Watch
    this.lists = new Set();
    this.remote = {};               // the manager's last stats
    this.counts = { duplicates: 0, gaps: 0 };
    this.link = null;
    this.relink(mode);
  }

  Hub.prototype.relink = function (mode) {
    if (this.link) { this.link.close(); }
    this.mode = mode;
    try {
      this.link = mode === "worker" ? new WorkerLink(this) : mode === "locks" ? new LocksLink(this) : new LocalLink(this);
    } catch (e) {
      if (mode === "none") { throw e; }
      this.relink(pickMode(mode));
      return;
    }
    this.resubscribe();
  };

  // What this tab needs of a job: from the lowest position of its watches, in its epoch.
  Hub.prototype.request = function (job) {
    var after = Infinity, epoch = null, tail = null, full = false, sig = null, status = false;
    this.watches.get(job).forEach(function (w) {
      if (w.lastSeq < after || (w.lastSeq === after && !epoch)) { epoch = w.epoch; }
      after = Math.min(after, w.lastSeq);
      if (w.lastSeq === 0) { if (w.tail === null) { full = true; } else { tail = Math.max(tail || 0, w.tail); } }
      sig = sig || w.sig;
      status = status || w.wantsStatus;
    });
    return { t: "watch", job: job, after: after, epoch: after > 0 ? epoch : null,
             tail: full || after > 0 ? null : tail, sig: sig, status: status };
  };

  Hub.prototype.listRequest = function () {
    var limit = 1, after = Infinity, epoch = null;
    this.lists.forEach(function (l) {
      limit = Math.max(limit, l.limit);
      if (after >= 0 && l.seq !== null && l.seq < after) { epoch = l.epoch; }
      after = l.seq === null ? -1 : Math.min(after, l.seq);
    });
    var known = after >= 0 && after !== Infinity;
    return { t: "list", limit: limit, after: known ? after : null, epoch: known ? epoch : null };
  };

  Hub.prototype.add = function (w) {
    var set = this.watches.get(w.job);
    if (!set) { set = new Set(); this.watches.set(w.job, set); }
    set.add(w);
    var m = this.request(w.job);
    // A watch resuming in another incarnation of the log than the others here asks from its
    // own position (the lowest would name theirs): the manager tells it what of it still
    // holds, and the others drop what they have.
    var others = Array.from(set).filter(function (o) { return o !== w && o.epoch; });
    if (w.epoch && others.some(function (o) { return o.epoch !== w.epoch; })) {
      m.after = w.lastSeq;
      m.epoch = w.epoch;
      m.tail = null;
    }
    this.link.send(m);
  };

  Hub.prototype.remove = function (w) {
    var set = this.watches.get(w.job);
    if (!set || !set.delete(w)) { return; }
    if (!set.size) { this.watches.delete(w.job); this.link.send({ t: "unwatch", job: w.job }); }
  };

  Hub.prototype.addList = function (l) { this.lists.add(l); this.link.send(this.listRequest()); };

  Hub.prototype.removeList = function (l) {
    if (this.lists.delete(l) && !this.lists.size) { this.link.send({ t: "unlist" }); }
  };

  // Tell the (new) manager everything this tab watches, from where it is.
  Hub.prototype.resubscribe = function () {
    var self = this;
    this.watches.forEach(function (set, job) { self.link.send(self.request(job)); });
    if (this.lists.size) { this.link.send(this.listRequest()); }
  };

  // A message from the manager.
  Hub.prototype.receive = function (m) {
    var set;
    switch (m.t) {
      case "ev":
        set = this.watches.get(m.job);
        if (set) { Array.from(set).forEach(function (w) { w.deliver(m.ev, m.d); }); }
        break;
      case "lev":
        Array.from(this.lists).forEach(function (l) { l.deliver(m.ev, m.d); });
        break;
      case "state":
        this.remote = m.stats;
        this.watches.forEach(function (s) { s.forEach(function (w) { w.connection(m); }); });
        this.lists.forEach(function (l) { l.connection(m); });
        break;
      case "status":
        set = this.watches.get(m.job);
        if (set) { set.forEach(function (w) { if (w.wantsStatus) { call(w.o.onStatus, m.d); } }); }
        break;
      case "stats":
        this.remote = m.d;
        break;
    }
  };

  function theHub() {
    if (!hub) { hub = new Hub(pickMode(null)); }
    return hub;
  }

  // -- a watch of one job --------------------------------------------------------------------

  function Watch(job, o) {
    this.job = job;
    this.o = o;
    this.lastSeq = o.after || 0;
    this.tail = o.tail === undefined || o.tail === null ? null : o.tail;
    this.sig = o.sig || null;
    this.wantsStatus = typeof o.onStatus === "function";
    this.state = "connecting";
    this.started = false;           // an entry, or where the tail starts, came
    this.ended = false;
    this.held = null;               // a tail watch given more of the log: see holdBack
    this.fromTail = this.tail !== null && !this.lastSeq;  // it begins with the log's tail
    // The incarnation of the job's log its entries are of (a resume names the one `after` is of).
    this.epoch = o.after && o.epoch ? String(o.epoch) : null;
    this.counts = { opens: 0, reconnects: 0, duplicates: 0, gaps: 0, trimmed: 0, resets: 0 };
  }

  // An event of this job from the manager: entries once and in order, then the callbacks.
  Watch.prototype.deliver = function (ev, d) {
    if (this.ended) { return; }
    switch (ev) {
      case "tail":
        if (this.started) { return; }
        this.held = null;           // the stream is a tail after all (asked for anew)
        this.started = true;
        if (d.after > this.lastSeq) { this.lastSeq = d.after; }
        call(this.o.onTail, d);
        return;
      case "trimmed":
        if (d.first_seq - 1 > this.lastSeq) {
          this.counts.trimmed += d.first_seq - 1 - this.lastSeq;
          this.lastSeq = d.first_seq - 1;
          call(this.o.onTrimmed, d);
        }
        return;
      case "reset":
        if (this.held) {            // nothing shown yet: what is held after `after` is void
          this.held.entries = this.held.entries.filter(function (e) { return e.seq <= d.after; });
          this.held.last = Math.min(this.held.last, d.after);
          this.epoch = d.epoch || null;
          return;
        }
        // Another position's reset, to the incarnation this watch is in already: what it
        // holds is of that incarnation, and stands.
        if (this.epoch && d.epoch === this.epoch && d.was && d.was.epoch && d.was.epoch !== this.epoch) { return; }
        if (d.after < this.lastSeq) { this.lastSeq = d.after; }
        this.epoch = d.epoch || null;
        this.counts.resets += 1;
        call(this.o.onReset, d);
        return;
      case "missing": case "ended": case "refused":
        if (this.held && ev === "ended") { this.release(); }
        this.finish(Object.assign({ kind: ev }, d));
        return;
    }
    if (this.fromTail && !this.started) { this.holdBack(d); return; }
    if (!(d.seq > this.lastSeq)) { this.counts.duplicates += 1; hub.counts.duplicates += 1; return; }
    if (this.started && d.seq !== this.lastSeq + 1) { this.counts.gaps += 1; hub.counts.gaps += 1; }
    this.started = true;
    this.lastSeq = d.seq;
    if (d.ep) { this.epoch = d.ep; }
    call(this.o.onEvent, d);
    if (ev === "value") { call(this.o.onValue, "j" in d ? d.j : d.v, d); }
    if (ev === "log") { call(this.o.onLog, d); }
    if (TERMINAL[ev]) { this.finish(d); }
  };

  // A watch that asked for the job's last `tail` values is given more of the log: another
  // watch of the job (in this tab, or in another of the browser's, which reads each job once)
  // asked for all of it, or from a position. It shows nothing yet, and holds what the
  // server's ?tail= would begin with (from the first of the last `tail` values on, at most
  // RING entries), until the stream has come to where the log stood when the job's status
  // was read (its last seq); then it begins as a tail does, with onTail.
  Watch.prototype.holdBack = function (d) {
    var self = this, h = this.held;
    if (!h) {
      h = this.held = { entries: [], values: 0, seen: 0, last: 0, until: null };
      var url = base() + "api/jobs/" + encodeURIComponent(this.job) +
        (this.sig ? "?sig=" + encodeURIComponent(this.sig) : "");
      fetch(url, { cache: "no-store" }).then(function (r) { return r.ok ? r.json() : null; })
        .then(function (s) { return s && typeof s.last_seq === "number" ? s.last_seq : 0; },
              function () { return 0; })      // unknown: it begins with what it holds
        .then(function (until) { if (self.held === h) { h.until = until; self.releaseIfDue(); } });
    }
    if (!(d.seq > h.last)) { return; }
    h.last = d.seq;
    if (this.tail === 0) { this.releaseIfDue(); return; }  // it begins after the last entry
    h.entries.push(d);
    if (d.kind === "value") {
      h.values += 1;
      h.seen = d.i + 1;
      var drop = 0;
      // Past `tail` values: from the (new) first of the last `tail` values on.
      while (h.values > this.tail) {
        if (h.entries[drop].kind === "value") { h.values -= 1; }
        drop += 1;
      }
      while (drop < h.entries.length && h.entries[drop].kind !== "value") { drop += 1; }
      if (drop) { h.entries.splice(0, drop); }
    }
    if (h.entries.length > RING + RING / 4) {
      h.entries.splice(0, h.entries.length - RING);
      h.values = h.entries.filter(function (e) { return e.kind === "value"; }).length;
    }
    this.releaseIfDue();
  };

  Watch.prototype.releaseIfDue = function () {
    var h = this.held;
    if (h && h.until !== null && h.last >= h.until) { this.release(); }
  };

  // Begin as the server's ?tail= would have: where the tail starts, then what was held.
  Watch.prototype.release = function () {
    var h = this.held, entries = h.entries, first = null;
    this.held = null;
    for (var i = 0; i < entries.length; i++) {
      if (entries[i].kind === "value") { first = entries[i].i; break; }
    }
    var after = entries.length ? entries[0].seq - 1 : h.last;
    this.deliver("tail", { job: this.job, tail: this.tail, after: after,
                           skipped: first === null ? h.seen : first });
    for (var j = 0; j < entries.length && !this.ended; j++) { this.deliver(entries[j].kind, entries[j]); }
  };

  // The connection's state, as it concerns this job: live if the lane carrying it is (another
  // lane may be reconnecting meanwhile).
  Watch.prototype.connection = function (m) {
    var s = m.jobs.indexOf(this.job) >= 0 ? "live" : m.state === "reconnecting" ? "reconnecting" : "connecting";
    this.setState(s);
  };

  Watch.prototype.setState = function (s) {
    if (this.ended || this.state === s) { return; }
    if (s === "live") { this.counts.opens += 1; }
    if (s === "reconnecting") { this.counts.reconnects += 1; }
    this.state = s;
    call(this.o.onState, s);
  };

  Watch.prototype.finish = function (e) {
    this.setState("ended");
    this.ended = true;
    hub.remove(this);
    call(this.o.onEnd, e);
  };

  // -- a watch of the job list ---------------------------------------------------------------

  function ListWatch(o) {
    this.o = o;
    this.limit = Math.max(1, Math.min(500, o.limit || 50));
    this.seq = null;                // the feed's seq this list is as of
    this.epoch = null;              // … and the feed's epoch that seq is of
    this.model = new Map();
    this.state = "connecting";
    this.closed = false;
  }

  ListWatch.prototype.deliver = function (ev, d) {
    if (this.closed) { return; }
    if (ev === "snapshot") {
      this.seq = d.seq;
      this.epoch = d.epoch || null;
      this.model = new Map(d.jobs.slice(0, this.limit).map(function (j) { return [j.id, JSON.parse(JSON.stringify(j))]; }));
      call(this.o.onSnapshot, this.jobs(), d.seq);
    } else if (ev === "job") {
      if (this.seq !== null && !(d.seq > this.seq)) { hub.counts.duplicates += 1; return; }
      this.seq = d.seq;
      if (d.ep) { this.epoch = d.ep; }
      call(this.o.onChange, d, applyToModel(this.model, d, this.limit));
    } else if (ev === "refused") {
      call(this.o.onEnd, Object.assign({ kind: "refused" }, d));
    }
  };

  ListWatch.prototype.connection = function (m) {
    var s = m.list ? "live" : m.state === "reconnecting" ? "reconnecting" : "connecting";
    if (s !== this.state) { this.state = s; call(this.o.onState, s); }
  };

  ListWatch.prototype.jobs = function () { return sorted(this.model, this.limit); };

  // -- the API ---------------------------------------------------------------------------------

  // A job id as the server takes one (jobcast/core/keys.py, JOB_ID_RE).
  var JOB_ID = /^[A-Za-z0-9_-]{1,128}$/;

  // Settings, before the first watch: share ("auto" | "worker" | "locks" | "none") and base
  // (the server's URL prefix; by default where this script was loaded from).
  function configure(o) {
    if (o.share) { config.share = o.share; }
    if (o.base) { config.base = o.base; }
    if (hub && o.share) { hub.relink(pickMode(null)); }
  }

  // Watch one job. Options: after (resume after this seq) and epoch (the incarnation of the
  // log that seq is of, as stats() gives it with lastSeq: a failover since then is told by
  // onReset rather than passed over), tail (begin with its last n
  // values), sig (a view link's signature, private mode), and callbacks onEvent(entry),
  // onValue(value, entry), onLog(entry), onEnd(entry), onState(state), onTail(t),
  // onTrimmed(t), onReset(r), onStatus(job). Returns {close(), stats()}.
  function watch(id, o) {
    o = o || {};
    var w = new Watch(String(id), o), h = theHub();
    if (JOB_ID.test(w.job)) {
      h.add(w);
    } else {
      // Never sent: the server refuses a stream naming it (400) whole, and with it every
      // other job of the lane, this tab's and the other tabs' alike. This watch ends alone.
      w.ended = true;
      setTimeout(function () {
        w.state = "ended";
        call(o.onState, "ended");
        call(o.onEnd, { kind: "refused", job: w.job, status: 400, reason: "invalid",
                        message: "not a job id (1 to 128 letters, digits, - or _)" });
      }, 0);
    }
    return {
      id: w.job,
      close: function () { if (!w.ended) { w.ended = true; h.remove(w); } },
      stats: function () {
        return Object.assign({ lastSeq: w.lastSeq, epoch: w.epoch, state: w.state }, w.counts);
      }
    };
  }

  // Watch the job list: onSnapshot(jobs, seq), onChange(item, job), onState(state).
  function list(o) {
    o = o || {};
    var l = new ListWatch(o), h = theHub();
    h.addList(l);
    return {
      jobs: function () { return l.jobs(); },
      close: function () { if (!l.closed) { l.closed = true; h.removeList(l); } },
      get seq() { return l.seq; }
    };
  }

  // For tests and the curious: how this tab shares the stream (mode, whether it holds the
  // connection), and the manager's counts: connections opened, reconnects, duplicates and
  // gaps dropped, the jobs the stream carries now, the connections (lanes) open now and the
  // jobs of each, the tabs it serves.
  function stats() {
    var h = hub, r = (h && h.remote) || {};
    return {
      mode: h ? h.mode : null, leader: !!(h && h.link && h.link.leader),
      connections: r.connections || 0, reconnects: r.reconnects || 0,
      duplicates: (h ? h.counts.duplicates : 0) + (r.duplicates || 0),
      gaps: (h ? h.counts.gaps : 0) + (r.gaps || 0),
      state: r.state || "connecting", jobs: r.jobs || [], list: !!r.list, retry: r.retry || null,
      lanes: r.lanes || 0, laneJobs: r.laneJobs || [], tabs: r.clients || 0
    };
  }

  if (root.addEventListener) {
    // Say goodbye as the page goes (a MessagePort's close is not reliably seen); a page
    // restored from the back-forward cache joins again.
    root.addEventListener("pagehide", function () { if (hub && hub.link) { hub.link.close(); } });
    root.addEventListener("pageshow", function (e) { if (e.persisted && hub) { hub.relink(pickMode(null)); } });
    // A page frozen a while (a background tab) asks its worker at once whether it still
    // serves it.
    if (doc) { doc.addEventListener("resume", function () { if (hub && hub.link && hub.link.probe) { hub.link.probe(); } }); }
  }

  root.Jobcast = { version: VERSION, watch: watch, list: list, configure: configure, stats: stats,
                   applyChange: applyChange, backoff: backoff };
})(self);
