"""The divergence page's HTML, CSS and script (plain text, no build step).

The script puts every value into the DOM with ``textContent`` / text nodes; nothing it
shows is ever parsed as HTML. Served by :mod:`comparer.web`.
"""

from __future__ import annotations

PAGE_HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>shadowreplay · divergences</title>
<link rel="stylesheet" href="static/page.css">
<script src="static/page.js" defer></script>
</head>
<body>
<header>
  <h1>shadowreplay <span class="sub">divergences</span></h1>
  <div id="totals" class="totals">loading…</div>
  <div id="live" class="live off" title="live feed (Server-Sent Events)">live</div>
</header>
<main>
  <section id="endpoints-panel">
    <h2>Endpoints <span class="hint">by divergence rate</span></h2>
    <table id="endpoints"><thead><tr>
      <th>endpoint</th><th class="n">compared</th><th class="n">diverged</th><th class="n">rate</th><th class="n">noise</th>
    </tr></thead><tbody></tbody></table>
    <h2>Live feed <span class="hint">new divergences</span></h2>
    <ul id="feed"></ul>
  </section>
  <section id="endpoint-panel">
    <h2 id="endpoint-title">Select an endpoint</h2>
    <table id="fields"><thead><tr>
      <th>field</th><th>kinds</th><th class="n">raw</th><th class="n">noise</th><th class="n">stored</th>
    </tr></thead><tbody></tbody></table>
    <h3>Requests</h3>
    <table id="samples"><thead><tr>
      <th>#</th><th>time</th><th>request</th><th>differs in</th>
    </tr></thead><tbody></tbody></table>
  </section>
</main>
<section id="detail" hidden>
  <h2 id="detail-title"></h2>
  <table id="diffs"><thead><tr><th>field</th><th>kind</th><th>reference</th><th>candidate</th></tr></thead><tbody></tbody></table>
  <div class="sides">
    <div class="side" id="side-left"></div>
    <div class="side" id="side-right"></div>
  </div>
</section>
</body>
</html>
"""

PAGE_CSS = """
* { box-sizing: border-box; }
body { font: 14px/1.4 system-ui, sans-serif; margin: 0; color: #1d1f23; background: #f6f7f9; }
header { display: flex; align-items: baseline; gap: 1.5em; padding: .6em 1.2em; background: #22303f; color: #fff; }
header h1 { font-size: 1.2em; margin: 0; }
header .sub { font-weight: normal; opacity: .7; }
.totals { flex: 1; }
.live { padding: .1em .6em; border-radius: 1em; font-size: .85em; background: #5b6b7a; }
.live.on { background: #2e8b57; }
main { display: grid; grid-template-columns: minmax(22em, 1fr) minmax(28em, 1.4fr); gap: 1em; padding: 1em 1.2em 0; }
section { background: #fff; border: 1px solid #dde1e6; border-radius: 6px; padding: .6em .9em; overflow: auto; }
#detail { margin: 1em 1.2em; }
h2 { font-size: 1.05em; margin: .3em 0 .5em; }
h3 { font-size: .95em; margin: 1em 0 .3em; }
.hint { font-weight: normal; color: #6b7580; font-size: .85em; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .25em .5em; border-bottom: 1px solid #eceff2; vertical-align: top; }
th { font-weight: 600; color: #4a535d; font-size: .9em; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
tr.click { cursor: pointer; }
tr.click:hover { background: #eef4fb; }
tr.selected { background: #dbe9f8; }
.rate-hi { color: #b3261e; font-weight: 600; }
.rate-mid { color: #a15c00; }
code, pre, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12.5px; }
#feed { list-style: none; padding: 0; margin: 0; max-height: 16em; overflow: auto; }
#feed li { padding: .2em .3em; border-bottom: 1px solid #eceff2; cursor: pointer; }
#feed li:hover { background: #eef4fb; }
.sides { display: grid; grid-template-columns: 1fr 1fr; gap: 1em; margin-top: .8em; }
.side h3 { margin-top: 0; }
.side pre { background: #fbfbfc; border: 1px solid #eceff2; padding: .4em; margin: 0; white-space: pre-wrap; word-break: break-all; max-height: 40em; overflow: auto; }
.side pre div { padding: 0 .2em; }
.hl, .side pre div.hl { background: #ffe1dc; outline: 1px solid #f3a79b; }
.kind { display: inline-block; padding: 0 .4em; border-radius: .6em; background: #e8ecf1; margin-right: .2em; font-size: .85em; }
.muted { color: #6b7580; }
"""

PAGE_JS = r"""
'use strict';
(function () {
  const $ = (sel) => document.querySelector(sel);
  // Build an element; strings become text nodes, so nothing is ever parsed as HTML.
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === 'class') e.className = v;
      else if (k === 'onclick') e.addEventListener('click', v);
      else if (k === 'data') for (const [dk, dv] of Object.entries(v)) e.dataset[dk] = dv;
      else e.setAttribute(k, v);
    }
    for (const c of children) {
      if (c === null || c === undefined) continue;
      e.appendChild(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }
  async function getJSON(url) {
    const r = await fetch(url, { headers: { Accept: 'application/json' } });
    if (!r.ok) throw new Error(url + ': HTTP ' + r.status);
    return r.json();
  }
  const pct = (x) => (100 * x).toFixed(x > 0 && x < 0.001 ? 3 : 1) + '%';
  const when = (ns) => new Date(ns / 1e6).toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z');
  const kinds = (ks) => ks.map((k) => el('span', { class: 'kind' }, k));
  const state = { endpoint: null, divergence: null };

  async function loadTotals() {
    const t = await getJSON('api/totals');
    const rate = t.compared ? pct(t.diverged / t.compared) : '–';
    $('#totals').textContent = `${t.compared} compared · ${t.diverged} diverged (${rate}) · ${t.stored} stored`;
  }

  async function loadEndpoints() {
    const eps = await getJSON('api/endpoints');
    const body = $('#endpoints tbody');
    body.replaceChildren();
    for (const e of eps) {
      const cls = e.rate >= 0.05 ? 'rate-hi' : e.rate > 0 ? 'rate-mid' : '';
      const row = el('tr', { class: 'click ep' + (e.endpoint === state.endpoint ? ' selected' : ''),
                             data: { endpoint: e.endpoint }, onclick: () => selectEndpoint(e.endpoint) },
        el('td', { class: 'mono' }, e.endpoint), el('td', { class: 'n' }, e.compared),
        el('td', { class: 'n' }, e.diverged), el('td', { class: 'n ' + cls }, pct(e.rate)),
        el('td', { class: 'n' }, e.noise));
      body.appendChild(row);
    }
    if (!eps.length) body.appendChild(el('tr', {}, el('td', { colspan: '5', class: 'muted' }, 'nothing compared yet')));
  }

  async function selectEndpoint(name) {
    state.endpoint = name;
    for (const tr of document.querySelectorAll('#endpoints tr.ep')) tr.classList.toggle('selected', tr.dataset.endpoint === name);
    $('#endpoint-title').textContent = name;
    const [views, samples] = await Promise.all([
      getJSON('api/endpoints?endpoint=' + encodeURIComponent(name)),
      getJSON('api/samples?limit=100&endpoint=' + encodeURIComponent(name)),
    ]);
    const fields = $('#fields tbody');
    fields.replaceChildren();
    for (const f of (views[0] || { fields: [] }).fields) {
      fields.appendChild(el('tr', { class: 'field', data: { path: f.path } },
        el('td', { class: 'mono' }, f.path), el('td', {}, ...kinds(f.kinds)),
        el('td', { class: 'n' }, f.raw), el('td', { class: 'n' }, f.noise), el('td', { class: 'n' }, f.stored)));
    }
    const body = $('#samples tbody');
    body.replaceChildren();
    for (const s of samples) {
      const paths = [...new Set(s.diffs.map((d) => d.path))];
      body.appendChild(el('tr', { class: 'click sample', data: { id: String(s.id) }, onclick: () => showDivergence(s.id) },
        el('td', { class: 'n' }, s.id), el('td', { class: 'mono' }, when(s.ts_ns)),
        el('td', { class: 'mono' }, s.method + ' ' + s.target),
        el('td', { class: 'mono' }, paths.slice(0, 4).join(', ') + (paths.length > 4 ? ' …' : ''))));
    }
    location.hash = 'e=' + encodeURIComponent(name);
  }

  // JSONPath of a child, exactly as the diff engine writes it.
  function child(path, key) {
    if (/^[A-Za-z_][A-Za-z0-9_]*$/.test(key)) return path + '.' + key;
    return path + "['" + key.replace(/\\/g, '\\\\').replace(/'/g, "\\'") + "']";
  }
  function jsonLines(v, path, key, depth, out, last) {
    const pad = '  '.repeat(depth) + (key !== null ? JSON.stringify(key) + ': ' : '');
    const comma = last ? '' : ',';
    if (Array.isArray(v)) {
      if (!v.length) { out.push([path, pad + '[]' + comma]); return; }
      out.push([path, pad + '[']);
      // A JSON-RPC batch is diffed by id: its answers are addressed $[?(@.id==<id>)].
      const rpc = path === '$' && v.some((x) => x && typeof x === 'object' && 'jsonrpc' in x);
      v.forEach((x, i) => {
        const byId = rpc && x && typeof x === 'object' && x.id !== undefined && x.id !== null;
        const p = byId ? '$[?(@.id==' + JSON.stringify(x.id) + ')]' : path + '[' + i + ']';
        jsonLines(x, p, null, depth + 1, out, i === v.length - 1);
      });
      out.push([path, '  '.repeat(depth) + ']' + comma]);
    } else if (v !== null && typeof v === 'object') {
      const keys = Object.keys(v);
      if (!keys.length) { out.push([path, pad + '{}' + comma]); return; }
      out.push([path, pad + '{']);
      keys.forEach((k, i) => jsonLines(v[k], child(path, k), k, depth + 1, out, i === keys.length - 1));
      out.push([path, '  '.repeat(depth) + '}' + comma]);
    } else {
      out.push([path, pad + JSON.stringify(v) + comma]);
    }
  }
  function decodeBody(b64) {
    if (!b64) return '';
    const bin = atob(b64);
    const bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    return new TextDecoder('utf-8').decode(bytes);
  }
  function header(resp, name) {
    for (const [k, v] of resp.headers || []) if (k.toLowerCase() === name) return v;
    return null;
  }
  function bodyBlock(resp, hl) {
    const text = decodeBody(resp.body);
    const pre = el('pre', { class: 'body' });
    let parsed;
    const ct = header(resp, 'content-type') || '';
    if (!resp.truncated && /json/i.test(ct)) { try { parsed = JSON.parse(text); } catch (e) { parsed = undefined; } }
    if (parsed !== undefined) {
      const lines = [];
      jsonLines(parsed, '$', null, 0, lines, true);
      for (const [path, line] of lines) pre.appendChild(el('div', { class: hl.has(path) ? 'hl' : '', data: { path } }, line));
    } else if (!text) {
      pre.appendChild(el('div', { class: hl.has('$') ? 'hl' : 'muted' }, '(empty body)'));
    } else {
      // Text bodies are diffed by line: paths line:<n>, 1-based; '$' is the whole body (digest).
      text.split(/\r?\n/).forEach((line, i) => {
        const path = 'line:' + (i + 1);
        pre.appendChild(el('div', { class: hl.has(path) || hl.has('$') ? 'hl' : '', data: { path } }, line || ' '));
      });
    }
    return pre;
  }
  function side(title, resp, hl) {
    const box = el('div', {}, el('h3', {}, title));
    if (!resp) { box.appendChild(el('p', { class: 'muted' }, 'no response')); return box; }
    if (resp.error) box.appendChild(el('p', { class: 'hl' }, 'error: ' + resp.error));
    box.appendChild(el('p', {}, 'status ', el('b', { class: hl.has('status') ? 'hl status' : 'status' }, String(resp.status)),
      resp.latency != null ? ` · ${(resp.latency * 1000).toFixed(1)} ms` : '', resp.truncated ? ' · truncated' : ''));
    const ht = el('table', { class: 'headers' });
    for (const [k, v] of resp.headers || []) {
      ht.appendChild(el('tr', { class: hl.has('header:' + k.toLowerCase()) ? 'hl' : '' }, el('td', { class: 'mono' }, k), el('td', { class: 'mono' }, v)));
    }
    box.appendChild(ht);
    box.appendChild(bodyBlock(resp, hl));
    return box;
  }
  function originSide(origin, hl) {
    const box = el('div', {}, el('h3', {}, 'production (as logged)'));
    if (!origin) { box.appendChild(el('p', { class: 'muted' }, 'nothing logged')); return box; }
    box.appendChild(el('p', {}, 'status ', el('b', { class: hl.has('status') ? 'hl status' : 'status' }, String(origin.status))));
    box.appendChild(el('p', { class: 'mono' }, `bytes ${origin.bytes} · duration ${origin.duration}` + (origin.body_sha256 ? ` · sha256 ${origin.body_sha256}` : '')));
    return box;
  }
  const show = (v) => (v === null || v === undefined ? '' : typeof v === 'string' ? v : JSON.stringify(v));

  async function showDivergence(id) {
    const d = await getJSON('api/divergences/' + id);
    state.divergence = id;
    const r = d.result;
    $('#detail').hidden = false;
    $('#detail-title').textContent = `#${d.id} · ${d.endpoint} · ${r.request.method} ${r.request.target} · ${when(d.ts_ns)}`;
    const hl = new Set(d.diffs.map((x) => x.path));
    const tb = $('#diffs tbody');
    tb.replaceChildren();
    for (const x of d.diffs) {
      tb.appendChild(el('tr', { class: 'diff' }, el('td', { class: 'mono' }, x.path), el('td', {}, el('span', { class: 'kind' }, x.kind)),
        el('td', { class: 'mono' }, show(x.left)), el('td', { class: 'mono' }, show(x.right))));
    }
    const left = d.reference === 'baseline' ? side('baseline', r.responses.baseline, hl) : originSide(r.origin, hl);
    $('#side-left').replaceChildren(left);
    $('#side-right').replaceChildren(side('candidate', r.responses.candidate, hl));
    if (r.responses.secondary) $('#side-right').appendChild(side('secondary', r.responses.secondary, new Set()));
    $('#detail').scrollIntoView({ block: 'start' });
  }

  let refresh = null;
  function connectFeed() {
    if (!window.EventSource) return;
    const es = new EventSource('api/feed');
    es.onopen = () => { $('#live').className = 'live on'; };
    es.onerror = () => { $('#live').className = 'live off'; };
    es.addEventListener('divergence', (ev) => {
      const d = JSON.parse(ev.data);
      const li = el('li', { class: 'mono', onclick: () => showDivergence(d.id) },
        `#${d.id} ${d.endpoint} — ${(d.paths || []).slice(0, 3).join(', ')}`);
      const feed = $('#feed');
      feed.prepend(li);
      while (feed.children.length > 50) feed.lastChild.remove();
      if (!refresh) refresh = setTimeout(() => { refresh = null; loadTotals(); loadEndpoints(); }, 1000);
    });
  }

  async function init() {
    await Promise.all([loadTotals(), loadEndpoints()]);
    const m = /^#e=(.*)$/.exec(location.hash);
    if (m) await selectEndpoint(decodeURIComponent(m[1]));
    connectFeed();
    document.body.dataset.ready = '1';
  }
  window.shadowreplay = { selectEndpoint, showDivergence, loadEndpoints };
  init().catch((e) => { $('#totals').textContent = 'error: ' + e.message; });
})();
"""
