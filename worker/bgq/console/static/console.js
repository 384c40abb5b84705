// bgq console: live overview (server-sent events) and the queue chart (uPlot).
// No inline script (the CSP forbids it); all text goes through textContent, never innerHTML.
"use strict";
(function () {
  var root = document.body.dataset.root || "";

  function cell(tr, name, text, title) {
    var td = tr.querySelector('[data-f="' + name + '"]');
    if (!td) { td = document.createElement("td"); td.dataset.f = name; tr.appendChild(td); }
    if (name !== "queue") td.textContent = text;
    if (title !== undefined) td.title = title;
    return td;
  }

  function dash(v) { return v === null || v === undefined ? "-" : String(v); }

  function overview(table) {
    var body = table.tBodies[0];
    var state = document.getElementById("live-state");
    var at = document.getElementById("live-at");
    var source = new EventSource(table.dataset.events);
    source.addEventListener("open", function () { state.textContent = "connected"; });
    source.addEventListener("error", function () { state.textContent = "reconnecting"; });
    source.addEventListener("problem", function (e) {
      state.textContent = JSON.parse(e.data).message;
    });
    source.addEventListener("overview", function (e) {
      var data = JSON.parse(e.data);
      var seen = {};
      data.queues.forEach(function (r) {
        seen[r.queue] = true;
        var tr = body.querySelector('tr[data-queue="' + CSS.escape(r.queue) + '"]');
        if (!tr) {
          tr = document.createElement("tr");
          tr.dataset.queue = r.queue;
          var td = document.createElement("td");
          td.dataset.f = "queue";
          var a = document.createElement("a");
          a.href = root + "/q/" + r.queue;
          a.textContent = r.queue;
          td.appendChild(a);
          tr.appendChild(td);
          body.appendChild(tr);
        }
        cell(tr, "backlog", r.backlog);
        cell(tr, "in_flight", r.in_flight);
        cell(tr, "due", r.due);
        cell(tr, "dead", r.dead);
        cell(tr, "replicas", dash(r.replicas) + " / " + dash(r.desired));
        cell(tr, "ready", r.ready, r.ready_reason);
        cell(tr, "reason", r.bound_by + (r.reason ? ": " + r.reason.slice(0, 120) : ""), r.reason);
        cell(tr, "jobs_per_s", dash(r.jobs_per_s));
        cell(tr, "workers", r.busy_workers + "/" + r.workers);
      });
      Array.prototype.slice.call(body.rows).forEach(function (tr) {
        if (tr.dataset.queue && !seen[tr.dataset.queue]) body.removeChild(tr);
      });
      table.dataset.version = String(Number(table.dataset.version || 0) + 1);
      at.textContent = new Date(data.at * 1000).toISOString().slice(11, 19) + "Z";
      state.textContent = "live";
    });
  }

  function age(s) {
    if (s < 120) return s.toFixed(1) + " s";
    if (s < 7200) return Math.round(s / 60) + " min";
    return (s / 3600).toFixed(1) + " h";
  }

  // the queue page's figures, from the same live stream as the overview
  function queueLive(dl) {
    var source = new EventSource(dl.dataset.events);
    function set(name, text) {
      var dd = dl.querySelector('[data-f="' + name + '"]');
      if (dd) dd.textContent = text;
    }
    source.addEventListener("overview", function (e) {
      var rows = JSON.parse(e.data).queues.filter(function (r) { return r.queue === dl.dataset.queue; });
      if (!rows.length) return;
      var r = rows[0];
      ["backlog", "in_flight", "due", "delayed", "dead"].forEach(function (f) { set(f, String(r[f])); });
      set("oldest_age_s", age(r.oldest_age_s));
      set("replicas", dash(r.replicas) + " / " + dash(r.desired));
      set("ready", r.ready + " " + r.ready_reason);
      set("reason", r.bound_by + (r.reason ? ": " + r.reason : ""));
      set("jobs_per_s", dash(r.jobs_per_s));
      dl.dataset.version = String(Number(dl.dataset.version || 0) + 1);
    });
  }

  function decisionsTable(marks) {
    var table = document.getElementById("decisions");
    if (!table) return;
    var body = table.tBodies[0];
    while (body.firstChild) body.removeChild(body.firstChild);
    marks.slice().reverse().slice(0, 50).forEach(function (m) {
      var tr = document.createElement("tr");
      [new Date(m.t * 1000).toISOString().slice(11, 19),
       (m.from === null ? "" : m.from + " -> ") + m.to, m.boundBy, m.reason].forEach(function (v) {
        var td = document.createElement("td");
        td.textContent = v;
        tr.appendChild(td);
      });
      body.appendChild(tr);
    });
  }

  function chart(el) {
    var plot = null;
    function draw(d) {
      // decisions are drawn as points on the desired line where it changed
      var markAt = {};
      d.marks.forEach(function (m) { markAt[m.t] = m.to; });
      var marks = d.t.map(function (t) { return t in markAt ? markAt[t] : null; });
      var data = [d.t, d.demand, d.desired, d.replicas, marks];
      var opts = {
        width: Math.max(320, Math.min(1100, el.clientWidth || 900)), height: 280,
        scales: { x: { time: true }, y: { range: function (u, lo, hi) { return [0, Math.max(1, hi * 1.1)]; } } },
        series: [
          {},
          { label: "demand", stroke: "#d9822b", width: 2, spanGaps: true },
          { label: "desired", stroke: "#2b6cd9", width: 2, paths: uPlot.paths.stepped({ align: 1 }) },
          { label: "replicas", stroke: "#2f9e44", width: 2, dash: [6, 4], paths: uPlot.paths.stepped({ align: 1 }) },
          { label: "decision", stroke: "#c92a2a", width: 0, paths: function () { return null; },
            points: { show: true, size: 9, fill: "#c92a2a" } }
        ]
      };
      if (plot) { plot.setData(data); } else { plot = new uPlot(opts, data, el); }
      el.dataset.points = String(d.t.length);
      el.dataset.series = opts.series.slice(1).map(function (s) { return s.label; }).join(",");
      el.dataset.marks = String(d.marks.length);
      decisionsTable(d.marks);
    }
    function load() {
      fetch(el.dataset.src, { credentials: "same-origin" })
        .then(function (r) { if (!r.ok) throw new Error(r.status); return r.json(); })
        .then(draw)
        .catch(function (e) { el.dataset.error = String(e); });
    }
    load();
    setInterval(load, 15000);
  }

  var table = document.getElementById("overview");
  if (table) overview(table);
  var live = document.getElementById("queue-live");
  if (live) queueLive(live);
  var el = document.getElementById("chart");
  if (el) chart(el);
})();
