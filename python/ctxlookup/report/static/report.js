/* ctxlookup report: the one script of every page (copied to static/report.js). It draws the
   examples (their coloured tokens, facts and active heads) and runs the index's explorers; nothing is fetched. */
(function () {
  "use strict";
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = text;
    return e;
  }

  // ---------------------------------------------------------------- coloured tokens
  // Each neuron's examples live once in ../assets/examples/L{l}N{n}.js (window.CTXL_EXAMPLES:
  // {scale, v: token texts, ex: {id: [first token, the maximum, the prompt's start or null,
  // document tokens or null, tokens, activations]}}), shared by the neuron's page and its heads'
  // pages; each <div class="toks" data-ex="id"> is drawn from it. Tokens (indices into v) and
  // activations are packed strings (render.py's pack): 5 bits a character, least significant
  // first, a character from the second half of DIGITS when more follow; an activation's code is
  // 0 when missing, else 1 + 2 x its thousandths + 1 when negative.
  var DIGITS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz-_";
  function unpack(s) {
    var out = [], u = 0, shift = 0;
    for (var i = 0; i < s.length; i++) {
      var d = DIGITS.indexOf(s.charAt(i));
      if (d >= 32) { u += (d - 32) * Math.pow(2, shift); shift += 5; }
      else { out.push(u + d * Math.pow(2, shift)); u = 0; shift = 0; }
    }
    return out;
  }
  function activation(c) {
    if (c === 0) return null;
    var k = Math.floor((c - 1) / 2), neg = (c - 1) % 2 === 1;
    return neg ? (k === 0 ? -1e-9 : -k / 1000) : k / 1000;  // -1e-9: negative, shown as -0.000
  }
  function example(v, r) {
    var t = unpack(r[4]).map(function (i) { return v[i]; });
    return {f: r[0], p: r[1], s: r[2], n: r[3], t: t, a: unpack(r[5]).map(activation)};
  }
  function hex2(v) { return ("0" + Math.round(255 * v).toString(16)).slice(-2); }
  function colour(a, scale) {
    if (a === null || !isFinite(a) || scale <= 0) return "transparent";
    var x = Math.max(-1, Math.min(1, a / scale));
    return x >= 0 ? "#ff7a00" + hex2(0.04 + 0.86 * x) : "#2878ff" + hex2(0.04 + 0.56 * -x);
  }
  function visible(s) { return s === "" ? "\u2205" : s.replace(/\r\n|\n|\r/g, "\u21b5").replace(/\t/g, "\u21e5"); }
  function span(cls, title, text) { var e = el("span", cls, text); if (title) e.title = title; return e; }
  function drawTokens(div, x, scale) {
    var out = document.createDocumentFragment();
    if (x.f > 0) out.appendChild(span("ell", "earlier tokens not shown", "\u2026"));
    for (var i = 0; i < x.t.length; i++) {
      var d = x.f + i, s = x.t[i], a = x.a[i];
      if (x.s !== null && d === x.s && x.s > 0) out.appendChild(span("cut", "the truncated prompt starts here"));
      var cls = "tok" + (d === x.p ? " max" : "") + ((x.s !== null && d < x.s) || d > x.p ? " out" : "");
      var label = s === "" ? "(the first bytes of the next token's character)" : "'" + visible(s) + "'";
      if (s === "") cls += " part";
      var t = span(cls, label + (a === null || !isFinite(a) ? "" : " \u00b7 " + a.toFixed(3)), s ? visible(s) : "");
      t.style.background = colour(a, scale);
      out.appendChild(t);
    }
    if (x.n !== null && x.f + x.t.length < x.n) out.appendChild(span("ell", "later tokens not shown", "\u2026"));
    div.textContent = "";
    div.appendChild(out);
  }
  // ---------------------------------------------------------------- the examples' facts and heads
  // Each <div class="ex" id="id"> of a site's page holds only what is its page's own (spans that
  // end its line of facts; the tokens of an example without them). It gets its line of facts from
  // EX.m[id] ([rank, doc, subset or null, maximum, its token, prompt tokens or null when truncation
  // dropped the document, the prompt's activation, its share, 1 when the activations are the
  // prompt's alone]), the box of its tokens, and the heads active on its prompt from EX.c[id]
  // ([threshold to 4 and to 3 decimals, then per head: layer, head, attribution to 4 and to 2
  // decimals]); a chip links to the head's page when EX.hp has it. A head's page keeps its own
  // numbers in a <span data-x>: [attribution, threshold] (nulls: none), then p clean and ablated;
  // a test prompt's verdict in its data-v (render.py's _verdict).
  // Numbers are render.py's _num: the integer of the digits of the text the report writes, or
  // that text.
  function num(v, d) {
    if (typeof v !== "number") return v;
    var s = String(Math.abs(v));
    while (s.length <= d) s = "0" + s;
    return (v < 0 ? "-" : "") + s.slice(0, s.length - d) + "." + s.slice(s.length - d);
  }
  function fill(e, parts) {  // strings (as text: adjacent ones in one node, as the templates wrote them) and elements
    for (var i = 0; i < parts.length; i++) {
      if (typeof parts[i] !== "string") { e.appendChild(parts[i]); continue; }
      var t = parts[i];
      while (i + 1 < parts.length && typeof parts[i + 1] === "string") t += parts[++i];
      e.appendChild(document.createTextNode(t));
    }
    return e;
  }
  function node(parts, tag, cls) { return fill(el(tag || "span", cls), parts); }
  function muted(text) { return node([el("span", "muted", text)]); }
  function facts(meta, m, here) {
    var own = meta.querySelector("[data-x]"), first = meta.firstChild, out = [];
    if (m[0] >= 0) out.push(node([el("b", null, "#" + m[0])]));
    out.push(node(["doc " + m[1]]));
    if (m[2] !== null) out.push(node([el("span", "chip", m[2])]));
    out.push(node(["max ", el("b", null, num(m[3], 3)), " at token " + m[4]]));
    if (m[5] === null) out.push(muted("dropped by truncation (no short prompt keeps enough of the activation)"));
    else out.push(node(["prompt: " + m[5] + " tokens \u2192 ", el("b", null, num(m[6], 3)),
                        " (" + (typeof m[7] === "number" ? m[7] + "%" : m[7]) + ")"]));
    for (var i = 0; i < out.length; i++) meta.insertBefore(out[i], first);
    if (m[8]) meta.insertBefore(muted("activations of the truncated prompt alone"), own);
    if (!own) return;
    var x = JSON.parse(own.getAttribute("data-x")), parts = [];
    if (own.hasAttribute("data-v")) parts = verdict(JSON.parse(own.getAttribute("data-v")));
    if (x[0] !== null) parts.push(here + " attribution ", el("b", null, num(x[0], 3)), " (threshold " + num(x[1], 3) + ")");
    if (x[0] !== null && x.length > 2) parts.push(" \u00b7 ");
    if (x.length > 2) parts.push("ablating it: p " + num(x[2], 3) + " \u2192 " + num(x[3], 3));
    fill(own, parts);
  }
  function badge(v) { return el("span", "badge " + (v ? "yes" : "no"), v ? "active" : "inactive"); }
  function verdict(v) {  // a test prompt's: the classifier's prediction against the head's activity
    var out = v[0] === 0 ? [el("span", "muted", "not classified")] :
      v[1] === null ? [el("span", "badge unk", "unparsed"), " ", el("span", "mono", v[3])] :
      [el("span", v[1] === v[2] ? "ok" : "bad", v[1] === v[2] ? "\u2713" : "\u2717"), " predicted ", badge(v[1])];
    out.push(" ");
    if (v[2] !== null) out.push("actual ", badge(v[2]));
    out.push(" \u00b7 ");
    return out;
  }
  function heads(c, pages) {
    if (c.length === 2) return node(["no head active (threshold " + num(c[1], 3) + ")"], "div", "heads");
    var out = node(["active heads: "], "div", "heads");
    for (var i = 2; i < c.length; i += 4) {
      var label = "L" + c[i] + "H" + c[i + 1], page = pages[label];
      var chip = node([label + " ", el("b", null, num(c[i + 3], 2))], page ? "a" : "span", page ? "chip sel" : "chip");
      if (page) chip.href = "../heads/" + EX.nl + "_" + label + ".html";
      chip.title = "attribution " + num(c[i + 2], 4) + " (threshold " + num(c[0], 4) + ")";
      out.appendChild(chip);
    }
    return out;
  }
  var EX = window.CTXL_EXAMPLES;
  if (EX && EX.m) {
    var hl = document.body.getAttribute("data-head-layer");
    var here = hl === null ? null : "L" + hl + "H" + document.body.getAttribute("data-head");
    var pages = {};
    for (var p = 0; p < EX.hp.length; p++) pages[EX.hp[p]] = true;
    var cards = document.querySelectorAll(".ex[id]");
    for (var k = 0; k < cards.length; k++) {
      var card = cards[k], m = EX.m[card.id], c = EX.c[card.id];
      if (!m || card.querySelector(".meta")) continue;
      var meta = el("div", "meta");  // the page's own spans go into the line of facts
      while (card.firstChild && card.firstChild.tagName === "SPAN") meta.appendChild(card.firstChild);
      card.insertBefore(meta, card.firstChild);
      facts(meta, m, here);
      if (!card.querySelector(".toks")) {
        var box = el("div", "toks");
        box.setAttribute("data-ex", card.id);
        card.appendChild(box);
      }
      if (c) card.appendChild(heads(c, pages));
    }
  }

  // v: the neuron's texts, or (a report with assets/vocab.js) their ids in window.CTXL_VOCAB, packed
  var V = EX && (typeof EX.v === "string" ? unpack(EX.v).map(function (i) { return window.CTXL_VOCAB[i]; }) : EX.v);
  var boxes = document.querySelectorAll(".toks[data-ex]");
  for (var b = 0; b < boxes.length; b++) {
    var r = EX && EX.ex[boxes[b].getAttribute("data-ex")];
    if (r) drawTokens(boxes[b], example(V, r), EX.scale);
  }

  // ---------------------------------------------------------------- the index's explorers
  // Searchable, sortable, paged tables of window.CTXL_INDEX (assets/index-data.js).
  function fmt(v, kind) {
    if (v === null || v === undefined || (typeof v === "number" && !isFinite(v))) return "\u2013";
    if (kind === "pct") return Math.round(100 * v) + "%";
    if (typeof v === "number") {  // one format per column, as the report's fmt(): integers, or 3 decimals
      if (Number.isInteger(v) && kind !== "float") return String(v);
      var s = v.toFixed(3);
      return Number(s) === 0 ? "0.000" : s;
    }
    return String(v);
  }
  function plain(v) { return (v !== null && typeof v === "object") ? v.t : v; }
  function Explorer(root, spec) {
    var cols = spec.columns, rows = spec.rows;
    var keys = rows.map(function (r) {
      return r.map(function (v) { var x = plain(v); return x === null || x === undefined ? "" : String(x); })
              .join(" \u0001 ").toLowerCase();
    });
    var state = {q: "", col: -1, dir: 1, page: 0, size: 50, view: rows.map(function (_, i) { return i; })};
    var input = root.querySelector("input[type=search]");
    var sizeSel = root.querySelector("select");
    var prev = root.querySelector("button.prev"), next = root.querySelector("button.next");
    var info = root.querySelector(".info");
    var table = root.querySelector("table"), thead = table.querySelector("thead"), tbody = table.querySelector("tbody");
    var hr = el("tr");
    cols.forEach(function (c, j) {
      var th = el("th", c.num ? "num" : "", c.label);
      th.title = "sort by " + c.label;
      th.addEventListener("click", function () {
        if (state.col === j) state.dir = -state.dir; else { state.col = j; state.dir = c.num ? -1 : 1; }
        state.page = 0; refilter();
      });
      hr.appendChild(th);
    });
    thead.innerHTML = "";
    thead.appendChild(hr);
    function refilter() {
      var q = state.q.toLowerCase().trim().split(/\s+/).filter(Boolean);
      var v = [];
      for (var i = 0; i < rows.length; i++) {
        var ok = true;
        for (var t = 0; t < q.length; t++) if (keys[i].indexOf(q[t]) < 0) { ok = false; break; }
        if (ok) v.push(i);
      }
      if (state.col >= 0) {
        var j = state.col, d = state.dir;
        v.sort(function (a, b) {
          var x = plain(rows[a][j]), y = plain(rows[b][j]);
          var xm = x === null || x === undefined || x === "", ym = y === null || y === undefined || y === "";
          if (xm || ym) return xm === ym ? a - b : (xm ? 1 : -1);
          if (x < y) return -d;
          if (x > y) return d;
          return a - b;
        });
      }
      state.view = v;
      render();
    }
    function render() {
      var n = state.view.length, pages = Math.max(1, Math.ceil(n / state.size));
      if (state.page >= pages) state.page = pages - 1;
      var lo = state.page * state.size, hi = Math.min(n, lo + state.size);
      tbody.innerHTML = "";
      for (var k = lo; k < hi; k++) {
        var r = rows[state.view[k]], tr = el("tr");
        for (var j = 0; j < cols.length; j++) {
          var c = cols[j], v = r[j], td = el("td", c.num ? "num" : (c.kind === "token" ? "tk" : ""));
          if (v !== null && typeof v === "object" && v.h) {
            var a = el("a", "", v.t);
            a.href = v.h;
            td.appendChild(a);
          } else {
            td.textContent = fmt(plain(v), c.kind);
          }
          tr.appendChild(td);
        }
        tbody.appendChild(tr);
      }
      Array.prototype.forEach.call(thead.querySelectorAll("th"), function (th, j) {
        th.className = (cols[j].num ? "num " : "") + (j === state.col ? (state.dir > 0 ? "asc" : "desc") : "");
      });
      info.textContent = rows.length === 0 ? "none in this run" : n === 0 ? "no match" :
        ("showing " + (lo + 1) + "\u2013" + hi + " of " + n + (n < rows.length ? " (filtered from " + rows.length + ")" : "") +
         " \u00b7 page " + (state.page + 1) + " of " + pages);
      prev.disabled = state.page === 0;
      next.disabled = state.page >= pages - 1;
    }
    input.addEventListener("input", function () { state.q = input.value; state.page = 0; refilter(); });
    sizeSel.addEventListener("change", function () { state.size = parseInt(sizeSel.value, 10) || 50; state.page = 0; render(); });
    prev.addEventListener("click", function () { if (state.page > 0) { state.page--; render(); } });
    next.addEventListener("click", function () { state.page++; render(); });
    state.size = parseInt(sizeSel.value, 10) || 50;
    refilter();
    root.setAttribute("data-ready", "1");
  }
  var DATA = window.CTXL_INDEX;
  var roots = document.querySelectorAll("[data-explorer]");
  for (var i = 0; i < roots.length; i++) {
    var name = roots[i].getAttribute("data-explorer");
    if (DATA && DATA[name]) Explorer(roots[i], DATA[name]);
    else roots[i].querySelector(".info").textContent = "the explorer's data (assets/index-data.js) did not load; use the plain lists below";
  }
})();
