"""The divergence page's HTML, CSS and script (plain text, no build step).

The script puts every value into the DOM with ``textContent`` / text nodes; nothing it
shows is ever parsed as HTML. The one piece of markup it takes from the API, a stream
divergence's arrival chart (``arrival_svg``, drawn by :mod:`shadowreplay.comparer.chart`), is parsed
as an SVG document with ``DOMParser`` and imported only when it is an ``<svg>`` without
script, foreign content, event or link attributes. Served by :mod:`shadowreplay.comparer.web`.

Where to extend: the tables of endpoints, of an endpoint's fields and of one request's
diffs are drawn from the column lists ``ENDPOINT_COLUMNS``, ``FIELD_COLUMNS`` and
``DIFF_COLUMNS`` at the top of the script. A column marked ``optional`` is shown only
when some row of the API answer carries its key (``real`` on a field, ``latency`` on an
endpoint), so a new key of the API shows up by adding one entry there.
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
    <table id="endpoints"><thead></thead><tbody></tbody></table>
    <div class="pager" id="endpoints-pager"></div>
    <h2>Live feed <span class="hint">new divergences</span></h2>
    <ul id="feed"></ul>
  </section>
  <section id="endpoint-panel">
    <h2 id="endpoint-title">Select an endpoint</h2>
    <table id="fields"><thead></thead><tbody></tbody></table>
    <p id="fields-more" class="muted"></p>
    <h3>Requests <span class="hint">newest first</span></h3>
    <table id="samples"><thead><tr>
      <th class="c-id">#</th><th class="c-time">time</th><th>request</th><th>differs in</th>
    </tr></thead><tbody></tbody></table>
    <div class="pager" id="samples-pager"></div>
  </section>
</main>
<section id="detail" hidden>
  <div class="detail-head">
    <h2 id="detail-title"></h2>
    <a id="permalink" href="#" title="a link that opens this divergence">link</a>
  </div>
  <table id="diffs"><thead></thead><tbody></tbody></table>
  <figure id="arrival" hidden>
    <div id="arrival-chart"></div>
    <figcaption><b>Body arrival</b> <span class="hint">share of each side's body received over time since the send</span>
      <ul id="arrival-text"></ul></figcaption>
  </figure>
  <div class="sides">
    <div class="side" id="side-request"></div>
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
header { display: flex; flex-wrap: wrap; align-items: baseline; gap: .3em 1.5em; padding: .6em 1.2em; background: #22303f; color: #fff; }
header h1 { font-size: 1.2em; margin: 0; }
header .sub { font-weight: normal; opacity: .7; }
.totals { flex: 1; min-width: 0; }
.live { padding: .1em .6em; border-radius: 1em; font-size: .85em; background: #5b6b7a; }
.live.on { background: #2e8b57; }
/* minmax(0, …): columns shrink and their content wraps instead of overflowing the window */
main { display: grid; grid-template-columns: minmax(0, 1.1fr) minmax(0, 1.3fr); gap: 1em; padding: 1em 1.2em 0; }
section { background: #fff; border: 1px solid #dde1e6; border-radius: 6px; padding: .6em .9em; min-width: 0; overflow-wrap: anywhere; }
#detail { margin: 1em 1.2em; }
.detail-head { display: flex; align-items: baseline; gap: 1em; }
.detail-head h2 { flex: 1; min-width: 0; overflow-wrap: anywhere; }
h2 { font-size: 1.05em; margin: .3em 0 .5em; }
h3 { font-size: .95em; margin: 1em 0 .3em; }
.hint { font-weight: normal; color: #6b7580; font-size: .85em; }
table { border-collapse: collapse; width: 100%; table-layout: fixed; }
th, td { text-align: left; padding: .25em .5em; border-bottom: 1px solid #eceff2; vertical-align: top; overflow-wrap: anywhere; }
th { font-weight: 600; color: #4a535d; font-size: .9em; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; width: 6.5em; overflow-wrap: normal; }
th.c-id { width: 4.5em; } th.c-time { width: 14em; } th.c-kind { width: 7em; }
th.c-latency { width: 9em; } th.c-real { width: 4em; }
tr.click { cursor: pointer; }
tr.click:hover { background: #eef4fb; }
tr.selected { background: #dbe9f8; }
.rate-hi { color: #b3261e; font-weight: 600; }
.rate-mid { color: #a15c00; }
code, pre, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12.5px; }
pre { white-space: pre-wrap; overflow-wrap: anywhere; }
#feed { list-style: none; padding: 0; margin: 0; max-height: 16em; overflow-y: auto; overflow-x: hidden; }
#feed li { padding: .2em .3em; border-bottom: 1px solid #eceff2; cursor: pointer; overflow-wrap: anywhere; }
#feed li:hover { background: #eef4fb; }
.pager { display: flex; align-items: center; gap: .6em; margin: .4em 0; color: #4a535d; font-size: .9em; }
.pager button { font: inherit; padding: .1em .6em; }
.sides { display: grid; grid-template-columns: repeat(3, minmax(0, 1fr)); gap: 1em; margin-top: .8em; }
.side { min-width: 0; }
.side h3 { margin-top: 0; }
.side pre { background: #fbfbfc; border: 1px solid #eceff2; padding: .4em; margin: 0; max-height: 40em; overflow-y: auto; overflow-x: hidden; }
.side pre div { padding: 0 .2em; }
.side table.headers td:first-child { width: 38%; }
.hl, .side pre div.hl { background: #ffe1dc; outline: 1px solid #f3a79b; }
.kind { display: inline-block; padding: 0 .4em; border-radius: .6em; background: #e8ecf1; margin-right: .2em; font-size: .85em; }
.kind.status { background: #ffd8d2; }
.muted { color: #6b7580; }
.tabs { display: flex; gap: .4em; margin: .3em 0; }
.tabs button { font: inherit; font-size: .85em; padding: .05em .5em; }
.tabs button.on { font-weight: 600; }
.curl label { display: block; font-size: .9em; color: #4a535d; }
.curl input { width: 100%; font: inherit; font-family: ui-monospace, monospace; padding: .2em .3em; margin: .2em 0 .4em; }
.curl pre { background: #22303f; color: #f1f4f7; padding: .5em; border-radius: 4px; margin: 0; max-height: 24em; overflow-y: auto; overflow-x: hidden; }
.curl .actions { display: flex; gap: .6em; align-items: baseline; margin-top: .3em; }
#arrival { display: flex; flex-wrap: wrap; align-items: flex-start; gap: .4em 1.2em; margin: .8em 0 0; }
#arrival[hidden] { display: none; }
#arrival svg { display: block; max-width: 100%; height: auto; border: 1px solid #eceff2; border-radius: 4px; background: #fff; }
#arrival figcaption { flex: 1; min-width: 16em; }
#arrival ul { margin: .3em 0 0; padding-left: 1.2em; }
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
    if (!r.ok) {
      let detail = '';
      try { detail = (await r.json()).error || ''; } catch (e) { detail = ''; }
      throw new Error(url + ': HTTP ' + r.status + (detail ? ' — ' + detail : ''));
    }
    return { data: await r.json(), total: Number(r.headers.get('X-Total-Count') || 0) };
  }
  const pct = (x) => (100 * x).toFixed(x > 0 && x < 0.001 ? 3 : 1) + '%';
  const when = (ns) => new Date(ns / 1e6).toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z');
  // Durations arrive in seconds (as measured, or as logged); people read milliseconds.
  function ms(seconds) {
    if (seconds === null || seconds === undefined || seconds === '' || isNaN(Number(seconds))) return '–';
    const v = Number(seconds) * 1000;
    const digits = Math.abs(v) < 10 ? 2 : Math.abs(v) < 1000 ? 1 : 0;
    return v.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits }) + ' ms';
  }
  const msValue = (v) => (v === null || v === undefined ? '–' : Number(v).toLocaleString('en-US', { maximumFractionDigits: 1 }) + ' ms');
  const kinds = (ks) => ks.map((k) => el('span', { class: 'kind ' + k }, k));
  const show = (v) => (v === null || v === undefined ? '' : typeof v === 'string' ? v : JSON.stringify(v));
  const PAGE = 50;
  const state = { endpoint: null, divergence: null, epOffset: 0, sampleCursors: [null], loadingEndpoints: false };

  // -- table columns: the one place to add what the API gains ---------------------------
  // {title, cls (th/td class), cell(row) -> Node|string, optional(row) -> bool}
  const ENDPOINT_COLUMNS = [
    { title: 'endpoint', cell: (e) => el('td', { class: 'mono' }, e.endpoint) },
    { title: 'compared', cls: 'n', cell: (e) => e.compared },
    { title: 'diverged', cls: 'n', cell: (e) => e.diverged },
    { title: 'rate', cls: 'n', cell: (e) => el('td', { class: 'n ' + (e.rate >= 0.05 ? 'rate-hi' : e.rate > 0 ? 'rate-mid' : '') }, pct(e.rate)) },
    { title: 'noise', cls: 'n', cell: (e) => e.noise },
    // Per-endpoint latency (baseline → candidate p50), when the API carries it.
    { title: 'p50 latency', cls: 'c-latency', optional: (e) => e.latency, cell: latencyCell },
  ];
  const FIELD_COLUMNS = [
    { title: 'field', cell: (f) => el('td', { class: 'mono' }, f.path) },
    { title: 'kinds', cls: 'c-kind', cell: (f) => el('td', {}, ...kinds(f.kinds)) },
    { title: 'real', cls: 'c-real', optional: (f) => 'real' in f, cell: (f) => (f.real ? 'yes' : 'noise') },
    { title: 'raw', cls: 'n', cell: (f) => f.raw },
    { title: 'noise', cls: 'n', cell: (f) => f.noise },
    { title: 'stored', cls: 'n', cell: (f) => f.stored },
  ];
  const DIFF_COLUMNS = [
    { title: 'field', cell: (d) => el('td', { class: 'mono' }, d.path) },
    { title: 'kind', cls: 'c-kind', cell: (d) => el('td', {}, el('span', { class: 'kind ' + d.kind }, d.kind)) },
    { title: 'reference', cell: (d) => el('td', { class: 'mono' }, diffValue(d, d.left)) },
    { title: 'candidate', cell: (d) => el('td', { class: 'mono' }, diffValue(d, d.right)) },
  ];
  function latencyCell(e) {
    const l = e.latency;
    if (!l) return '–';
    const text = msValue(l.baseline_p50_ms) + ' → ' + msValue(l.candidate_p50_ms);
    return el('td', { class: 'mono' + (l.regression ? ' rate-hi' : '') }, text);
  }
  // Units per kind: latency is in seconds (shown as ms); the stream kinds carry ms already.
  function diffValue(d, v) {
    if (d.kind === 'latency') return ms(v);
    if (d.kind === 'first_byte_delay') return msValue(v);
    if (d.kind === 'buffering' && v && typeof v === 'object') return bufferingSide(v);
    if (d.kind === 'event_count' && typeof v === 'number') return v + ' events';
    return show(v);
  }
  // One side of a buffering diff (comparer.cadence): when its bytes came, in ms.
  function bufferingSide(v) {
    if (!v.bytes) return 'nothing within the stream window';
    const burst = typeof v.largest_burst === 'number' ? Math.round(100 * v.largest_burst) + ' %' : '–';
    return `first byte ${msValue(v.first_byte_ms)} · average byte ${msValue(v.mean_byte_ms)} · `
      + `last byte ${msValue(v.last_byte_ms)} · largest burst ${burst} of ${v.bytes} bytes`;
  }
  // The arrival chart the API drew (comparer.chart): parsed as SVG, never as HTML, and
  // taken only when it is an <svg> with nothing in it that could run.
  const SVG_NS = 'http://www.w3.org/2000/svg';
  function svgNode(text) {
    const doc = new DOMParser().parseFromString(String(text), 'image/svg+xml');
    const root = doc.documentElement;
    if (!root || root.namespaceURI !== SVG_NS || root.localName !== 'svg' || doc.getElementsByTagName('parsererror').length) return null;
    for (const e of [root, ...root.getElementsByTagName('*')]) {
      if (e.namespaceURI !== SVG_NS || ['script', 'foreignObject'].includes(e.localName)) return null;
      for (const a of e.attributes) if (/^on/i.test(a.name) || /href$/i.test(a.name)) return null;
    }
    return document.importNode(root, true);
  }
  function showArrival(d) {
    const chart = d.arrival_svg ? svgNode(d.arrival_svg) : null;
    $('#arrival-chart').replaceChildren(...(chart ? [chart] : []));
    $('#arrival-text').replaceChildren(...d.diffs.filter((x) => x.text).map((x) => el('li', { class: 'mono' }, x.text)));
    $('#arrival').hidden = !chart;
  }
  // Fill a table from rows and a column list; optional columns only when some row has them.
  function fillTable(table, columns, rows, rowAttrs) {
    const cols = columns.filter((c) => !c.optional || rows.some((r) => c.optional(r)));
    table.querySelector('thead').replaceChildren(el('tr', {}, ...cols.map((c) => el('th', { class: c.cls || '' }, c.title))));
    const body = table.querySelector('tbody');
    body.replaceChildren();
    for (const r of rows) {
      const cells = cols.map((c) => {
        const v = c.cell(r);
        return v instanceof Node ? v : el('td', { class: c.cls || '' }, v);
      });
      body.appendChild(el('tr', rowAttrs ? rowAttrs(r) : {}, ...cells));
    }
    return cols.length;
  }
  function pager(box, text, prev, next) {
    box.replaceChildren(
      el('button', prev ? { onclick: prev, class: 'prev' } : { disabled: '', class: 'prev' }, '‹ prev'),
      el('span', {}, text),
      el('button', next ? { onclick: next, class: 'next' } : { disabled: '', class: 'next' }, 'next ›'));
  }

  async function loadTotals() {
    const t = (await getJSON('api/totals')).data;
    const rate = t.compared ? pct(t.diverged / t.compared) : '–';
    $('#totals').textContent = `${t.compared} compared · ${t.diverged} diverged (${rate}) · ${t.stored} stored`;
  }

  async function loadEndpoints() {
    if (state.loadingEndpoints) return; // one request at a time, however often the feed asks
    state.loadingEndpoints = true;
    try {
      const { data: eps, total } = await getJSON(`api/endpoints?fields_limit=0&limit=${PAGE}&offset=${state.epOffset}`);
      const n = fillTable($('#endpoints'), ENDPOINT_COLUMNS, eps, (e) => ({
        class: 'click ep' + (e.endpoint === state.endpoint ? ' selected' : ''),
        data: { endpoint: e.endpoint }, onclick: () => selectEndpoint(e.endpoint) }));
      if (!eps.length) $('#endpoints tbody').appendChild(el('tr', {}, el('td', { colspan: String(n), class: 'muted' }, 'nothing compared yet')));
      const from = eps.length ? state.epOffset + 1 : 0;
      pager($('#endpoints-pager'), `${from}–${state.epOffset + eps.length} of ${total}`,
        state.epOffset > 0 ? () => { state.epOffset = Math.max(0, state.epOffset - PAGE); loadEndpoints(); } : null,
        state.epOffset + eps.length < total ? () => { state.epOffset += PAGE; loadEndpoints(); } : null);
    } finally {
      state.loadingEndpoints = false;
    }
  }

  async function selectEndpoint(name, keepHash) {
    const changed = state.endpoint !== name;
    state.endpoint = name;
    if (changed) state.sampleCursors = [null];
    for (const tr of document.querySelectorAll('#endpoints tr.ep')) tr.classList.toggle('selected', tr.dataset.endpoint === name);
    $('#endpoint-title').textContent = name;
    const q = encodeURIComponent(name);
    const { data: views } = await getJSON(`api/endpoints?limit=1&fields_limit=100&endpoint=${q}`);
    const view = views[0] || { fields: [], fields_total: 0 };
    fillTable($('#fields'), FIELD_COLUMNS, view.fields, (f) => ({ class: 'field', data: { path: f.path } }));
    const more = (view.fields_total || 0) - view.fields.length;
    $('#fields-more').textContent = more > 0 ? `${more} more fields not shown (the first ${view.fields.length}, a status change first)` : '';
    await loadSamples();
    if (!keepHash) setHash({ e: name });
  }

  async function loadSamples() {
    const name = state.endpoint;
    const before = state.sampleCursors[state.sampleCursors.length - 1];
    const { data: samples, total } = await getJSON(`api/samples?limit=${PAGE}&endpoint=${encodeURIComponent(name)}` + (before ? `&before=${before}` : ''));
    const body = $('#samples tbody');
    body.replaceChildren();
    for (const s of samples) {
      const paths = s.paths || [...new Set(s.diffs.map((d) => d.path))];
      body.appendChild(el('tr', { class: 'click sample', data: { id: String(s.id) }, onclick: () => showDivergence(s.id) },
        el('td', { class: 'n' }, s.id), el('td', { class: 'mono' }, when(s.ts_ns)),
        el('td', { class: 'mono' }, s.method + ' ' + s.target),
        el('td', { class: 'mono' }, paths.slice(0, 4).join(', ') + (paths.length > 4 ? ' …' : ''))));
    }
    const page = state.sampleCursors.length - 1;
    const from = page * PAGE + (samples.length ? 1 : 0);
    pager($('#samples-pager'), `${from}–${page * PAGE + samples.length} of ${total}`,
      page > 0 ? () => { state.sampleCursors.pop(); loadSamples(); } : null,
      samples.length === PAGE && page * PAGE + samples.length < total
        ? () => { state.sampleCursors.push(samples[samples.length - 1].id); loadSamples(); } : null);
  }

  // -- bodies ---------------------------------------------------------------------------
  function bytesOf(b64) {
    if (!b64) return new Uint8Array(0);
    const bin = atob(b64);
    const bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    return bytes;
  }
  // The text of a body, or null when it is not UTF-8 or holds control characters
  // other than tab, CR and LF (then it is shown, and sent by curl, as bytes).
  function textOf(bytes) {
    let text;
    try { text = new TextDecoder('utf-8', { fatal: true }).decode(bytes); } catch (e) { return null; }
    return /[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f]/.test(text) ? null : text;
  }
  function hexDump(bytes, limit) {
    const lines = [];
    const n = Math.min(bytes.length, limit);
    for (let off = 0; off < n; off += 16) {
      const row = bytes.subarray(off, Math.min(off + 16, n));
      const hex = [...row].map((b) => b.toString(16).padStart(2, '0')).join(' ');
      const ascii = [...row].map((b) => (b >= 32 && b < 127 ? String.fromCharCode(b) : '.')).join('');
      lines.push(off.toString(16).padStart(8, '0') + '  ' + hex.padEnd(47) + '  ' + ascii);
    }
    if (bytes.length > n) lines.push(`… ${bytes.length - n} more bytes`);
    return lines.join('\n');
  }
  function base64Lines(b64) { return (b64 || '').replace(/(.{76})/g, '$1\n'); }
  // A binary body: its size and a hex / base64 view to switch between.
  function binaryView(bytes, b64, hl) {
    const box = el('div', { class: 'binary' });
    const pre = el('pre', { class: 'body' });
    const cls = hl.has('$') ? 'hl' : '';
    const views = { hex: () => hexDump(bytes, 64 * 1024), base64: () => base64Lines(b64) };
    const buttons = {};
    const pick = (name) => {
      pre.replaceChildren(el('div', { class: cls, data: { path: '$' } }, views[name]()));
      for (const [k, b] of Object.entries(buttons)) b.className = k === name ? 'on' : '';
    };
    for (const name of Object.keys(views)) buttons[name] = el('button', { type: 'button', onclick: () => pick(name) }, name);
    box.appendChild(el('div', { class: 'tabs' }, el('span', { class: 'muted' }, `${bytes.length} bytes, binary:`), ...Object.values(buttons)));
    box.appendChild(pre);
    pick('hex');
    return box;
  }
  // JSON-RPC batch elements are addressed as the diff engine does: by id, with the
  // position among the answers of that id when a side has several (rpcMulti).
  const rpcKey = (x) => (x && typeof x === 'object' && !Array.isArray(x) && 'id' in x ? JSON.stringify(x.id) : null);
  const isRpcBatch = (v) => Array.isArray(v) && v.slice(0, 16).some((x) => x && typeof x === 'object' && !Array.isArray(x) && 'jsonrpc' in x);
  function rpcMulti(values) {
    const multi = new Set();
    for (const v of values) {
      if (!isRpcBatch(v)) continue;
      const counts = {};
      for (const x of v) { const k = rpcKey(x); if (k !== null && (counts[k] = (counts[k] || 0) + 1) > 1) multi.add(k); }
    }
    return multi;
  }
  // JSONPath of a child, exactly as the diff engine writes it.
  function child(path, key) {
    if (/^[A-Za-z_][A-Za-z0-9_]*$/.test(key)) return path + '.' + key;
    return path + "['" + key.replace(/\\/g, '\\\\').replace(/'/g, "\\'") + "']";
  }
  function jsonLines(v, path, key, depth, out, last, multi) {
    const pad = '  '.repeat(depth) + (key !== null ? JSON.stringify(key) + ': ' : '');
    const comma = last ? '' : ',';
    if (Array.isArray(v)) {
      if (!v.length) { out.push([path, pad + '[]' + comma]); return; }
      out.push([path, pad + '[']);
      const rpc = path === '$' && isRpcBatch(v);
      const seen = {};
      v.forEach((x, i) => {
        let p = path + '[' + i + ']';
        const k = rpc ? rpcKey(x) : null;
        if (k !== null) {
          const pos = seen[k] = (seen[k] === undefined ? 0 : seen[k] + 1);
          p = '$[?(@.id==' + k + ')]' + (multi.has(k) ? '[' + pos + ']' : '');
        }
        jsonLines(x, p, null, depth + 1, out, i === v.length - 1, multi);
      });
      out.push([path, '  '.repeat(depth) + ']' + comma]);
    } else if (v !== null && typeof v === 'object') {
      const keys = Object.keys(v);
      if (!keys.length) { out.push([path, pad + '{}' + comma]); return; }
      out.push([path, pad + '{']);
      keys.forEach((k, i) => jsonLines(v[k], child(path, k), k, depth + 1, out, i === keys.length - 1, multi));
      out.push([path, '  '.repeat(depth) + '}' + comma]);
    } else {
      out.push([path, pad + JSON.stringify(v) + comma]);
    }
  }
  function headerOf(headers, name) {
    for (const [k, v] of headers || []) if (k.toLowerCase() === name) return v;
    return null;
  }
  // A parsed JSON body, or undefined (not JSON, or cut short).
  function parsedBody(resp) {
    if (!resp || resp.truncated || !/json/i.test(headerOf(resp.headers, 'content-type') || '')) return undefined;
    const text = textOf(bytesOf(resp.body));
    if (text === null) return undefined;
    try { return JSON.parse(text); } catch (e) { return undefined; }
  }
  // Any body: JSON by field path, text by line, anything else as bytes.
  function bodyBlock(b64, parsed, hl, multi) {
    const bytes = bytesOf(b64);
    const pre = el('pre', { class: 'body' });
    if (parsed !== undefined) {
      const lines = [];
      jsonLines(parsed, '$', null, 0, lines, true, multi);
      for (const [path, line] of lines) pre.appendChild(el('div', { class: hl.has(path) ? 'hl' : '', data: { path } }, line));
      return pre;
    }
    if (!bytes.length) {
      pre.appendChild(el('div', { class: hl.has('$') ? 'hl' : 'muted' }, '(empty body)'));
      return pre;
    }
    const text = textOf(bytes);
    if (text === null) return binaryView(bytes, b64, hl);
    // Text bodies are diffed by line: paths line:<n>, 1-based; '$' is the whole body (digest).
    text.split(/\r?\n/).forEach((line, i) => {
      const path = 'line:' + (i + 1);
      pre.appendChild(el('div', { class: hl.has(path) || hl.has('$') ? 'hl' : '', data: { path } }, line || ' '));
    });
    return pre;
  }
  function headersTable(headers, hl) {
    const ht = el('table', { class: 'headers' });
    for (const [k, v] of headers || []) {
      ht.appendChild(el('tr', { class: hl && hl.has('header:' + k.toLowerCase()) ? 'hl' : '' },
        el('td', { class: 'mono' }, k), el('td', { class: 'mono' }, v)));
    }
    return ht;
  }
  function side(title, resp, hl, multi) {
    const box = el('div', {}, el('h3', {}, title));
    if (!resp) { box.appendChild(el('p', { class: 'muted' }, 'no response')); return box; }
    if (resp.error) box.appendChild(el('p', { class: 'hl' }, 'error: ' + resp.error));
    box.appendChild(el('p', {}, 'status ', el('b', { class: hl.has('status') ? 'hl status' : 'status' }, String(resp.status)),
      resp.latency != null ? el('span', { class: hl.has('latency') ? 'hl latency' : 'latency' }, ' · ' + ms(resp.latency)) : '',
      resp.ttfb != null ? ` · first byte ${ms(resp.ttfb)}` : '', resp.truncated ? ' · truncated' : ''));
    box.appendChild(headersTable(resp.headers, hl));
    box.appendChild(bodyBlock(resp.body, parsedBody(resp), hl, multi));
    return box;
  }
  function originSide(origin, hl) {
    const box = el('div', {}, el('h3', {}, 'production (as logged)'));
    if (!origin) { box.appendChild(el('p', { class: 'muted' }, 'nothing logged')); return box; }
    box.appendChild(el('p', {}, 'status ', el('b', { class: hl.has('status') ? 'hl status' : 'status' }, String(origin.status))));
    box.appendChild(el('p', { class: 'mono' }, `bytes ${origin.bytes} · duration ${ms(origin.duration)}` + (origin.body_sha256 ? ` · sha256 ${origin.body_sha256}` : '')));
    return box;
  }

  // -- the request and a curl command that sends it again ----------------------------------
  // POSIX shell single quotes: nothing inside is special but the quote itself.
  const shq = (s) => "'" + s.replace(/'/g, "'\\''") + "'";
  // Headers curl sets itself from the URL and the body, or that only concern one hop.
  const CURL_SKIP = new Set(['host', 'content-length', 'transfer-encoding', 'connection', 'keep-alive',
    'proxy-connection', 'te', 'trailer', 'upgrade']);
  // Bytes as a printf format: printable ASCII as is, the rest as 3-digit octal escapes
  // (POSIX printf; NUL and any byte survive, which no shell argument can carry).
  function printfFormat(bytes) {
    let out = '';
    for (const b of bytes) {
      if (b >= 32 && b < 127 && b !== 39 && b !== 92 && b !== 37) out += String.fromCharCode(b);
      else if (b === 37) out += '%%';
      else out += '\\' + b.toString(8).padStart(3, '0');
    }
    return out;
  }
  // The target as curl must be given it: characters no URL may hold, percent-encoded.
  const urlSafe = (t) => t.replace(/[\u0000-\u0020\u007f-\uffff]/g, (c) => encodeURIComponent(c));
  const CURL_MAX_INLINE = 256 * 1024;
  function curlCommand(req, base) {
    const target = req.target.startsWith('/') ? req.target : '/' + req.target;
    const url = base.replace(/\/+$/, '') + urlSafe(target);
    const body = bytesOf(req.body);
    const method = String(req.method || 'GET'); // as logged: a lowercase method stays lowercase
    // -g: [] and {} in a target are not globs; --path-as-is: /../ is sent as logged.
    const args = ['curl', '-sS', '-g', '--path-as-is'];
    if (method === 'HEAD' && !body.length) args.push('-I');
    else if (!(method === 'GET' && !body.length) && !(method === 'POST' && body.length)) args.push('-X', shq(method));
    const present = new Set();
    for (const [k, v] of req.headers || []) {
      const name = k.toLowerCase();
      if (CURL_SKIP.has(name)) continue;
      present.add(name);
      // "Name;" sends an empty header; "Name:" would remove it.
      args.push('-H', shq(v === '' ? k + ';' : k + ': ' + v));
    }
    // curl adds these unless told not to: the logged request did not carry them.
    for (const name of ['User-Agent', 'Accept']) if (!present.has(name.toLowerCase())) args.push('-H', shq(name + ':'));
    let prefix = '';
    let note = '';
    if (body.length) {
      if (!present.has('content-type')) args.push('-H', shq('Content-Type:'));
      if (!present.has('expect')) args.push('-H', shq('Expect:'));
      const text = textOf(body);
      if (body.length > CURL_MAX_INLINE) {
        args.push('--data-binary', '@request-body.bin');
        note = 'request-body.bin';
      } else if (text !== null && !text.includes('\r')) {
        args.push('--data-raw', shq(text)); // --data-raw: a leading @ is not a file name
      } else {
        prefix = "printf '" + printfFormat(body) + "' | ";
        args.push('--data-binary', '@-');
      }
    }
    args.push(shq(url));
    return { command: prefix + args.join(' '), file: note };
  }
  const BASE_KEY = 'shadowreplay.curlBase';
  function storedBase() {
    try { return localStorage.getItem(BASE_KEY) || 'http://localhost:8080'; } catch (e) { return 'http://localhost:8080'; }
  }
  async function copyText(text, pre) {
    try {
      await navigator.clipboard.writeText(text);
      return true;
    } catch (e) {
      // No clipboard API (plain http to another host): select the text, copy the old way.
      const range = document.createRange();
      range.selectNodeContents(pre);
      const sel = getSelection();
      sel.removeAllRanges();
      sel.addRange(range);
      return document.execCommand && document.execCommand('copy');
    }
  }
  function curlBox(req) {
    const input = el('input', { type: 'url', id: 'curl-base', value: storedBase(), spellcheck: 'false', 'aria-label': 'base URL' });
    const pre = el('pre', { id: 'curl' });
    const status = el('span', { class: 'muted' });
    const actions = el('div', { class: 'actions' });
    const render = () => {
      const { command, file } = curlCommand(req, input.value.trim() || 'http://localhost:8080');
      pre.textContent = command;
      actions.replaceChildren(el('button', { type: 'button', id: 'curl-copy', onclick: async () => {
        status.textContent = (await copyText(pre.textContent, pre)) ? 'copied' : 'select and copy';
      } }, 'copy'), status);
      if (file) {
        const blob = new Blob([bytesOf(req.body)], { type: 'application/octet-stream' });
        actions.appendChild(el('a', { href: URL.createObjectURL(blob), download: file }, 'save ' + file));
      }
    };
    input.addEventListener('input', () => { try { localStorage.setItem(BASE_KEY, input.value.trim()); } catch (e) { /* private mode */ } render(); });
    render();
    return el('div', { class: 'curl' }, el('label', { for: 'curl-base' }, 'reproduce against (base URL)'), input, pre, actions);
  }
  function requestSide(req) {
    const box = el('div', {}, el('h3', {}, 'request'));
    box.appendChild(el('p', { class: 'mono request-line' }, `${req.method} ${req.target}`));
    const facts = [];
    if (req.host) facts.push('host ' + req.host);
    if (req.client) facts.push('client ' + req.client);
    if (req.ts) facts.push('logged ' + when(req.ts));
    if (facts.length) box.appendChild(el('p', { class: 'muted mono' }, facts.join(' · ')));
    box.appendChild(headersTable(req.headers, null));
    const bytes = bytesOf(req.body);
    if (bytes.length) box.appendChild(bodyBlock(req.body, undefined, new Set(), new Set()));
    else box.appendChild(el('p', { class: 'muted' }, '(no body)'));
    box.appendChild(curlBox(req));
    return box;
  }

  async function showDivergence(id, keepHash) {
    const { data: d } = await getJSON('api/divergences/' + id);
    state.divergence = d.id;
    const r = d.result;
    $('#detail').hidden = false;
    $('#detail-title').textContent = `#${d.id} · ${d.endpoint} · ${r.request.method} ${r.request.target} · ${when(d.ts_ns)}`;
    $('#permalink').setAttribute('href', '#d=' + d.id);
    const hl = new Set(d.diffs.map((x) => x.path));
    fillTable($('#diffs'), DIFF_COLUMNS, d.diffs, () => ({ class: 'diff' }));
    showArrival(d);
    const resp = r.responses || {};
    const reference = d.reference === 'baseline' ? resp.baseline : null;
    const multi = rpcMulti([parsedBody(reference), parsedBody(resp.candidate)]);
    $('#side-request').replaceChildren(requestSide(r.request));
    $('#side-left').replaceChildren(reference ? side('baseline', reference, hl, multi) : originSide(r.origin, hl));
    $('#side-right').replaceChildren(side('candidate', resp.candidate, hl, multi));
    if (resp.secondary) $('#side-right').appendChild(side('secondary', resp.secondary, new Set(), multi));
    if (!keepHash) setHash({ e: d.endpoint, d: d.id });
    $('#detail').scrollIntoView({ block: 'start' });
    return d;
  }

  // -- links: #e=<endpoint> selects an endpoint, #d=<id> opens a divergence (and its endpoint)
  function setHash(params) {
    // replaceState: no hashchange event, and the back button leaves the page as before.
    history.replaceState(null, '', '#' + new URLSearchParams(params).toString());
  }
  async function route() {
    const q = new URLSearchParams(location.hash.slice(1));
    const id = q.get('d');
    if (id && /^\d+$/.test(id)) {
      const d = await showDivergence(id, true);
      if (d.endpoint !== state.endpoint) await selectEndpoint(d.endpoint, true);
      $('#detail').scrollIntoView({ block: 'start' });
    } else if (q.get('e')) {
      await selectEndpoint(q.get('e'), true);
    }
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
      // At most one refresh a second, of one page of endpoints.
      if (!refresh) refresh = setTimeout(() => { refresh = null; loadTotals(); loadEndpoints(); }, 1000);
    });
  }

  function fail(e) { $('#totals').textContent = 'error: ' + e.message; }
  async function init() {
    await Promise.all([loadTotals(), loadEndpoints()]);
    await route();
    window.addEventListener('hashchange', () => route().catch(fail));
    connectFeed();
    document.body.dataset.ready = '1';
  }
  window.shadowreplay = { selectEndpoint, showDivergence, loadEndpoints, curlCommand, ms, svgNode };
  init().catch(fail);
})();
"""
