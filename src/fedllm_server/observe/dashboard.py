"""The read-only dashboard page served at GET / of the `[metrics]` endpoint.

One self-contained HTML document (inline CSS, JS and SVG; no external asset, so it works on
an air-gapped host and leaks nothing to a CDN). Its script fetches /status every
`REFRESH_S` seconds and redraws: federation status, the clients table (last seen, version),
accuracy per version (an SVG line), uploads per client over time (an SVG strip), bytes and
rejects. It only reads /status: the page can change nothing.
"""

from __future__ import annotations

REFRESH_S = 3

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>fedllm federation</title>
<style>
body{font:14px system-ui,sans-serif;margin:20px;background:#f7f7f9;color:#222}
h1{font-size:20px;margin:0 0 12px} h2{font-size:15px;margin:18px 0 6px}
.cards{display:flex;gap:10px;flex-wrap:wrap}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:10px 14px;min-width:110px}
.card b{display:block;font-size:22px;color:#1a5fb4}
table{border-collapse:collapse;background:#fff} td,th{border:1px solid #ddd;padding:4px 8px}
th{background:#eef} .gone{color:#999} svg{background:#fff;border:1px solid #ddd}
#updated{color:#666;font-size:12px} #error{color:#b00}
</style></head><body>
<h1>fedllm federation <span id="updated">loading...</span> <span id="error"></span></h1>
<div class="cards">
 <div class="card">version<b id="version">-</b></div>
 <div class="card">strategy<b id="strategy">-</b></div>
 <div class="card">clients<b id="clients">-</b></div>
 <div class="card">accuracy<b id="accuracy">-</b></div>
 <div class="card">uploads<b id="uploads">-</b></div>
 <div class="card">bytes in / out<b id="bytes">-</b></div>
 <div class="card">rejects<b id="rejects">-</b></div>
</div>
<h2>Clients</h2>
<table><thead><tr><th>client</th><th>state</th><th>last seen</th><th>version</th>
<th>accepted</th><th>rejected</th><th>bytes in</th></tr></thead><tbody id="client-rows"></tbody>
</table>
<h2>Accuracy per version</h2><svg id="acc-chart" width="640" height="200"></svg>
<h2>Uploads per client over time</h2><svg id="upload-chart" width="640" height="160"></svg>
<script>
"use strict";
const NS = "http://www.w3.org/2000/svg";
function el(name, attrs, text) {
  const node = document.createElementNS(NS, name);
  for (const k in attrs) node.setAttribute(k, attrs[k]);
  if (text !== undefined) node.textContent = text;
  return node;
}
function human(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"]; let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + units[i];
}
function ago(now, t) {
  if (!t) return "never";
  const s = Math.max(0, now - t);
  return s < 1 ? "now" : Math.round(s) + " s ago";
}
function text(id, value) { document.getElementById(id).textContent = value; }
function accuracyChart(points) {
  const svg = document.getElementById("acc-chart"); svg.replaceChildren();
  const W = 640, H = 200, P = 30;
  svg.appendChild(el("text", {x: 4, y: 14, "font-size": 11}, "1.0"));
  svg.appendChild(el("text", {x: 4, y: H - P, "font-size": 11}, "0.0"));
  if (!points.length) return;
  const maxV = Math.max(1, ...points.map(p => p.version));
  const xy = p => [P + (W - 2 * P) * p.version / maxV, H - P - (H - 2 * P) * p.accuracy];
  const path = points.map((p, i) => (i ? "L" : "M") + xy(p).join(",")).join(" ");
  svg.appendChild(el("path", {d: path, fill: "none", stroke: "#1a5fb4", "stroke-width": 2}));
  for (const p of points) {
    const [x, y] = xy(p);
    svg.appendChild(el("circle", {cx: x, cy: y, r: 3, fill: "#1a5fb4", class: "acc-point"}));
  }
}
function uploadChart(status) {
  const svg = document.getElementById("upload-chart"); svg.replaceChildren();
  const ids = status.clients.map(c => c.client_id), W = 640, P = 90;
  const events = status.uploads_over_time;
  const t0 = events.length ? events[0].time : status.time, span = Math.max(1, status.time - t0);
  ids.forEach((id, row) => {
    svg.appendChild(el("text", {x: 4, y: 20 + row * 22, "font-size": 11}, id));
  });
  for (const e of events) {
    const row = ids.indexOf(e.client_id);
    const x = P + (W - P - 10) * (e.time - t0) / span;
    svg.appendChild(el("rect", {x: x, y: 10 + row * 22, width: 3, height: 14,
      fill: e.outcome === "accepted" ? "#2a7" : "#c33", class: "upload-mark"}));
  }
}
function render(s) {
  text("version", s.version); text("strategy", s.strategy);
  text("clients", s.connected_clients + " / " + s.clients.length);
  const last = s.accuracy[s.accuracy.length - 1];
  text("accuracy", last ? last.accuracy.toFixed(4) : "-");
  text("uploads", s.uploads); text("bytes", human(s.bytes_in) + " / " + human(s.bytes_out));
  const rejects = Object.entries(s.rejects).map(([k, v]) => k + " " + v).join(", ");
  text("rejects", rejects || "none");
  const rows = document.getElementById("client-rows"); rows.replaceChildren();
  for (const c of s.clients) {
    const tr = document.createElement("tr"); tr.className = c.connected ? "client" : "client gone";
    const cells = [c.client_id, c.connected ? "connected" : "gone", ago(s.time, c.last_seen),
      c.base_version === null ? "-" : c.base_version, c.accepted, c.rejected, human(c.bytes_in)];
    for (const v of cells) {
      const td = document.createElement("td"); td.textContent = v; tr.appendChild(td);
    }
    rows.appendChild(tr);
  }
  accuracyChart(s.accuracy); uploadChart(s);
  text("updated", "updated " + new Date(s.time * 1000).toLocaleTimeString()
    + (s.stopping ? " (stopping)" : ""));
}
async function refresh() {
  try {
    const response = await fetch("/status", {cache: "no-store"});
    if (!response.ok) throw new Error("HTTP " + response.status);
    render(await response.json()); text("error", "");
  } catch (err) { text("error", "status unavailable: " + err.message); }
}
refresh(); setInterval(refresh, REFRESH_MS);
</script></body></html>
""".replace("REFRESH_MS", str(REFRESH_S * 1000))
