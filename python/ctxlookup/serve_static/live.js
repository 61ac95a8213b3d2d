/* ctxlookup live panel: type a text on a neuron page or a neuron-head page and see the neuron and
 * its heads on it. `ctxlookup serve` adds this script (and live.css) to every HTML page it serves.
 *
 * Which neuron (and head) a page is about, in this order:
 *   1. data attributes on <body> (or on any element with data-ctxl-page), as ctxlookup report
 *      writes them on its neuron and neuron-head pages:
 *        data-layer="3" data-neuron="43"                          a neuron page
 *        data-layer="3" data-neuron="43" data-head-layer="2" data-head="6"   a neuron-head page
 *   2. only for pages without them (a neuroscope atlas's neurons/L{layer}N{neuron}.html, a report
 *      written before the attributes): the file name, .../L{layer}N{neuron}.html or
 *      .../L{layer}N{neuron}_L{head_layer}H{head}.html.
 * A page with neither gets no panel. The panel goes into the element with data-live-panel if the
 * page has one, else right after the page's first <h1>, else at the top of <body>.
 *
 * API (same origin): GET /api/info, POST /api/neuron, /api/compare, /api/classify (see serve.py).
 * Responses that arrive after a newer request was sent are dropped (nothing is aborted).
 */
(function () {
  "use strict";
  var DEFAULT_TEXT = "The cat sat on the mat, and then it went in the house.";
  var DEBOUNCE_MS = 300;

  function pageKey() {
    var el = document.querySelector("[data-ctxl-page]") || document.body;
    var d = el ? el.dataset : {};
    if (d.layer !== undefined && d.neuron !== undefined) {
      var k = { layer: +d.layer, neuron: +d.neuron };
      if (d.headLayer !== undefined && d.head !== undefined) { k.head_layer = +d.headLayer; k.head = +d.head; }
      return k;
    }
    var m = decodeURIComponent(location.pathname).match(/(?:^|\/)L(\d+)N(\d+)(?:_L(\d+)H(\d+))?\.html?$/);
    if (!m) return null;
    var key = { layer: +m[1], neuron: +m[2] };
    if (m[3] !== undefined) { key.head_layer = +m[3]; key.head = +m[4]; }
    return key;
  }

  function h(tag, attrs, kids) {
    var e = document.createElement(tag);
    if (attrs) for (var a in attrs) {
      if (a === "text") e.textContent = attrs[a];
      else if (a === "cls") e.className = attrs[a];
      else e.setAttribute(a, attrs[a]);
    }
    (kids || []).forEach(function (c) { if (c) e.appendChild(typeof c === "string" ? document.createTextNode(c) : c); });
    return e;
  }

  function num(x, digits) {  // one format everywhere: fixed 3 decimals, scientific below 1e-3
    if (x === null || x === undefined || !isFinite(x)) return "–";
    var a = Math.abs(x);
    if (a !== 0 && a < 1e-3) return x.toExponential(2);
    return x.toFixed(digits === undefined ? 3 : digits);
  }

  function visible(s) {  // whitespace tokens readable
    return s.replace(/\n/g, "⏎").replace(/\t/g, "⇥").replace(/ /g, "\u00a0");
  }

  function colour(a, scale) {  // orange for positive activations, blue for negative; light enough for dark text
    if (!isFinite(a) || scale <= 0) return "transparent";
    var t = Math.min(1, Math.abs(a) / scale);
    return a >= 0 ? "rgba(255,140,0," + (0.7 * t).toFixed(3) + ")" : "rgba(66,133,244," + (0.55 * t).toFixed(3) + ")";
  }

  function diffColour(d, scale) {  // green: the edit raised the activation, purple: lowered it
    if (!isFinite(d) || scale <= 0) return "transparent";
    var t = Math.min(1, Math.abs(d) / scale);
    return d >= 0 ? "rgba(40,167,69," + (0.6 * t).toFixed(3) + ")" : "rgba(160,60,200," + (0.5 * t).toFixed(3) + ")";
  }

  function post(url, body) {
    return fetch(url, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) })
      .then(function (r) {
        return r.text().then(function (t) {
          var j = null;
          try { j = JSON.parse(t); } catch (e) { j = { error: t || ("HTTP " + r.status) }; }
          if (!r.ok) throw new Error((j && j.error) || ("HTTP " + r.status));
          return j;
        });
      });
  }

  function Panel(key, mount) {
    this.key = key;
    this.seq = 0;
    this.info = null;
    this.mode = "single";
    this.position = null;  // null: the maximum
    this.build(mount);
  }

  Panel.prototype.build = function (mount) {
    var self = this, k = this.key;
    var label = "L" + k.layer + "N" + k.neuron + (k.head_layer !== undefined ? " · head L" + k.head_layer + "H" + k.head : "");
    this.root = h("section", { cls: "ctxl-live", "aria-label": "Live neuron: " + label, "data-state": "loading" });
    this.sub = h("p", { cls: "ctxl-live-sub", text: "Loading the neuron…" });
    this.btnSingle = h("button", { type: "button", cls: "ctxl-live-mode", "aria-pressed": "true", text: "One text" });
    this.btnCompare = h("button", { type: "button", cls: "ctxl-live-mode", "aria-pressed": "false", text: "Compare two texts" });
    this.ta = h("textarea", { id: "ctxl-live-a", rows: "4", spellcheck: "false", "aria-label": "Text" });
    this.tb = h("textarea", { id: "ctxl-live-b", rows: "4", spellcheck: "false", "aria-label": "Edited text" });
    this.labA = h("label", { "for": "ctxl-live-a", cls: "ctxl-live-label", text: "Text" });
    this.boxB = h("div", { cls: "ctxl-live-b", hidden: "" }, [h("label", { "for": "ctxl-live-b", cls: "ctxl-live-label", text: "Edited text" }), this.tb]);
    this.status = h("div", { cls: "ctxl-live-status", role: "status", "aria-live": "polite" });
    this.out = h("div", { cls: "ctxl-live-out" });
    this.headBox = null;
    var kids = [h("h2", { text: "Try your own text" }), this.sub,
      h("div", { cls: "ctxl-live-modes" }, [this.btnSingle, this.btnCompare]),
      h("div", { cls: "ctxl-live-inputs" }, [h("div", { cls: "ctxl-live-a" }, [this.labA, this.ta]), this.boxB]),
      this.status];
    if (k.head_layer !== undefined) {
      this.headBox = h("div", { cls: "ctxl-live-head" });
      kids.push(this.headBox);
    }
    kids.push(this.out);
    kids.forEach(function (c) { self.root.appendChild(c); });
    mount(this.root);
    var timer = null;
    var changed = function () {
      clearTimeout(timer);
      timer = setTimeout(function () { self.position = null; self.update(); }, DEBOUNCE_MS);
    };
    this.ta.addEventListener("input", changed);
    this.tb.addEventListener("input", changed);
    this.btnSingle.addEventListener("click", function () { self.setMode("single"); });
    this.btnCompare.addEventListener("click", function () { self.setMode("compare"); });
  };

  Panel.prototype.setMode = function (mode) {
    this.mode = mode;
    this.btnSingle.setAttribute("aria-pressed", mode === "single" ? "true" : "false");
    this.btnCompare.setAttribute("aria-pressed", mode === "compare" ? "true" : "false");
    if (mode === "compare") {
      this.boxB.removeAttribute("hidden");
      this.labA.textContent = "Original text";
      if (!this.tb.value) this.tb.value = this.ta.value;
    } else {
      this.boxB.setAttribute("hidden", "");
      this.labA.textContent = "Text";
    }
    this.position = null;
    this.update();
  };

  Panel.prototype.start = function () {
    var self = this, k = this.key;
    var q = "layer=" + k.layer + "&neuron=" + k.neuron + (k.head_layer !== undefined ? "&head_layer=" + k.head_layer + "&head=" + k.head : "");
    fetch("/api/info?" + q).then(function (r) {
      return r.json().then(function (j) { if (!r.ok) throw new Error(j.error || ("HTTP " + r.status)); return j; });
    }).then(function (info) {
      self.info = info;
      var n = info.neuron;
      self.sub.textContent = "Neuron L" + n.layer + "N" + n.neuron + " predicts " + JSON.stringify(n.token) +
        (n.in_run ? "" : " (its most congruent token; the run did not study this neuron)") +
        ". Tokens are coloured by its activation (orange positive, blue negative); click a token to see the heads' attribution there. " +
        "Active heads: rule " + info.active_rule + "; eligible heads: rule " + info.rule + ".";
      if (self.headBox) self.renderHeadInfo();
      self.ta.value = n.example || DEFAULT_TEXT;
      self.update();
    }).catch(function (e) {
      self.root.setAttribute("data-state", "error");
      self.sub.textContent = "";
      self.say("error", "This page's neuron cannot be run: " + e.message);
    });
  };

  Panel.prototype.renderHeadInfo = function () {
    var self = this, hd = this.info.head, box = this.headBox;
    box.textContent = "";
    box.appendChild(h("h3", { text: "Head L" + hd.head_layer + "H" + hd.head + "'s explanation" }));
    box.appendChild(h("blockquote", { cls: "ctxl-live-expl", text: hd.explanation || "The run has no explanation of this head." }));
    this.headLive = h("p", { cls: "ctxl-live-headlive", text: "" });
    box.appendChild(this.headLive);
    if (hd.explanation && this.info.explainer) {
      this.classifyBtn = h("button", { type: "button", cls: "ctxl-live-classify",
        text: "Ask the " + this.info.explainer + " explainer: does the explanation fit this text?" });
      this.classifyOut = h("p", { cls: "ctxl-live-classified", role: "status" });
      this.classifyBtn.addEventListener("click", function () { self.classify(); });
      box.appendChild(this.classifyBtn);
      box.appendChild(this.classifyOut);
    }
  };

  Panel.prototype.say = function (kind, msg) {
    this.status.textContent = "";
    if (!msg) return;
    this.status.appendChild(h("p", { cls: "ctxl-live-msg ctxl-live-" + kind, text: msg }));
  };

  Panel.prototype.update = function () {
    if (!this.info) return;
    var self = this, k = this.key, my = ++this.seq;
    this.root.setAttribute("data-state", "loading");
    var req;
    if (this.mode === "compare") {
      req = post("/api/compare", { layer: k.layer, neuron: k.neuron, text_a: this.ta.value, text_b: this.tb.value });
    } else {
      var body = { layer: k.layer, neuron: k.neuron, text: this.ta.value };
      if (this.position !== null) body.position = this.position;
      req = post("/api/neuron", body);
    }
    req.then(function (res) {
      if (my !== self.seq) return;
      self.result = res;
      var notes = self.mode === "compare" ? res.a.notices.map(function (n) { return "Original: " + n; })
        .concat(res.b.notices.map(function (n) { return "Edited: " + n; })) : res.notices;
      self.say("notice", notes.join(" "));
      if (self.mode === "compare") self.renderCompare(res); else self.renderSingle(res);
      self.root.setAttribute("data-state", "ready");
    }).catch(function (e) {
      if (my !== self.seq) return;
      self.out.textContent = "";
      self.say("error", e.message);
      self.root.setAttribute("data-state", "error");
    });
  };

  Panel.prototype.tokens = function (r, scale, sel) {
    var self = this, row = h("div", { cls: "ctxl-live-tokens" });
    r.tokens.forEach(function (t, i) {
      var a = r.activation[i];
      var cls = "ctxl-live-tok" + (i < r.first ? " ctxl-live-bos" : "") + (i === r.max_position ? " ctxl-live-max" : "") +
        (sel && i === r.position ? " ctxl-live-sel" : "");
      var s = h("span", { cls: cls, "data-pos": String(i), "data-act": String(a), "data-prob": String(r.prob[i]),
        title: "position " + i + ": activation " + num(a) + ", p(" + r.token + ") next " + num(r.prob[i]) +
          (i === r.max_position ? " (maximum)" : "") });
      s.textContent = visible(t);
      s.style.background = i < r.first ? "" : colour(a, scale);
      if (sel && i >= r.first) {
        s.setAttribute("role", "button");
        s.setAttribute("tabindex", "0");
        var pick = function () { self.position = i; self.update(); };
        s.addEventListener("click", pick);
        s.addEventListener("keydown", function (ev) { if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); pick(); } });
      }
      row.appendChild(s);
    });
    return row;
  };

  Panel.prototype.scaleOf = function (rs) {
    var m = 0;
    rs.forEach(function (r) { r.activation.forEach(function (a, i) { if (i >= r.first && isFinite(a)) m = Math.max(m, Math.abs(a)); }); });
    return m || 1;
  };

  Panel.prototype.renderSingle = function (r) {
    var out = this.out;
    out.textContent = "";
    var scale = this.scaleOf([r]);
    out.appendChild(h("p", { cls: "ctxl-live-cap", text: "Maximum " + num(r.max_activation) + " at position " + r.max_position +
      " (" + JSON.stringify(r.tokens[r.max_position]) + ", outlined). Selected position: " + r.position + " (underlined)." }));
    out.appendChild(this.tokens(r, scale, true));
    // per-position table: activation and the probability of the neuron's token as the next token
    var tb = h("tbody");
    r.tokens.forEach(function (t, i) {
      if (i < r.first) return;
      var tr = h("tr", { cls: (i === r.max_position ? "ctxl-live-rmax" : "") + (i === r.position ? " ctxl-live-rsel" : "") }, [
        h("td", { cls: "num", text: String(i) }), h("td", { cls: "ctxl-live-t", text: visible(t) }),
        h("td", { cls: "num", text: num(r.activation[i]) }), h("td", { cls: "num", text: num(r.prob[i]) })]);
      tb.appendChild(tr);
    });
    out.appendChild(h("details", { cls: "ctxl-live-details", open: "" }, [
      h("summary", { text: "Activation and p(" + JSON.stringify(r.token) + " next) at each position" }),
      h("div", { cls: "ctxl-live-scroll" }, [h("table", { cls: "ctxl-live-table" }, [
        h("thead", null, [h("tr", null, [h("th", { cls: "num", text: "pos" }), h("th", { text: "token" }),
          h("th", { cls: "num", text: "activation" }), h("th", { cls: "num", text: "p(next)" })])]), tb])])]));
    this.renderHeads(r);
  };

  Panel.prototype.renderHeads = function (r) {
    var out = this.out;
    out.appendChild(h("h3", { text: "Heads at position " + r.position + " (" + JSON.stringify(r.tokens[r.position]) + ")" }));
    if (!r.heads.length) {
      out.appendChild(h("p", { cls: "ctxl-live-cap", text: "No head is eligible for a neuron of layer " + r.layer + " under the rule " + r.rule + "." }));
      this.updateHeadLive(r);
      return;
    }
    var rule = r.active_rule === "top3" ? "the 3 largest scores" : "score > mean + 2 SD of the eligible heads' scores";
    out.appendChild(h("p", { cls: "ctxl-live-cap", text: "Attribution ⟨head output, W_in of the neuron⟩ of the " + r.heads.length +
      " eligible heads (layers 0 to " + (r.n_eligible_layers - 1) + "). Active (" + rule + "): threshold " + num(r.threshold) +
      "; " + r.heads.filter(function (x) { return x.active; }).length + " active." }));
    var sorted = r.heads.slice().sort(function (a, b) { return b.score - a.score; });
    var tb = h("tbody"), k = this.key;
    sorted.forEach(function (x) {
      var me = k.head_layer === x.head_layer && k.head === x.head;
      tb.appendChild(h("tr", { cls: (x.active ? "ctxl-live-active" : "") + (me ? " ctxl-live-me" : ""),
        "data-head": "L" + x.head_layer + "H" + x.head, "data-score": String(x.score), "data-active": x.active ? "1" : "0" }, [
        h("td", { text: "L" + x.head_layer + "H" + x.head + (me ? " (this page)" : "") }),
        h("td", { cls: "num", text: num(x.score) }),
        h("td", { text: x.active ? "active" : "" })]));
    });
    out.appendChild(h("div", { cls: "ctxl-live-scroll" }, [h("table", { cls: "ctxl-live-table ctxl-live-heads" }, [
      h("thead", null, [h("tr", null, [h("th", { text: "head" }), h("th", { cls: "num", text: "score" }), h("th", { text: "active" })])]), tb])]));
    this.updateHeadLive(r);
  };

  Panel.prototype.updateHeadLive = function (r) {
    if (!this.headLive) return;
    var k = this.key;
    var me = r.heads.filter(function (x) { return x.head_layer === k.head_layer && x.head === k.head; })[0];
    this.headLive.textContent = me ? "Live: at position " + r.position + " this head's score is " + num(me.score) + ", so it is " +
      (me.active ? "ACTIVE" : "inactive") + " (threshold " + num(r.threshold) + ")." : "";
    this.headLive.className = "ctxl-live-headlive" + (me && me.active ? " ctxl-live-on" : "");
  };

  Panel.prototype.classify = function () {
    var self = this, k = this.key;
    this.classifyOut.textContent = "Asking…";
    post("/api/classify", { layer: k.layer, neuron: k.neuron, head_layer: k.head_layer, head: k.head, text: this.ta.value })
      .then(function (c) {
        var said = c.predicted === null ? "an answer that is neither Yes nor No (" + JSON.stringify(c.answer) + ")" : (c.predicted ? "Yes" : "No");
        self.classifyOut.textContent = "The " + c.explainer + " explainer says " + said + "; at the text's last token the head is " +
          (c.active ? "active" : "inactive") + " (score " + num(c.score) + ", threshold " + num(c.threshold) + ")" +
          (c.agree === null ? "." : c.agree ? ": the explanation fits." : ": the explanation does not fit.");
      }).catch(function (e) { self.classifyOut.textContent = "The explainer could not answer: " + e.message; });
  };

  Panel.prototype.renderCompare = function (c) {
    var out = this.out;
    out.textContent = "";
    var scale = this.scaleOf([c.a, c.b]);
    out.appendChild(h("p", { cls: "ctxl-live-cap", text: "Both texts on one colour scale. The token sequences share " + c.prefix +
      " tokens at the start and " + c.suffix + " at the end; the tokens between are the edit (dashed)." }));
    var grid = h("div", { cls: "ctxl-live-pair" });
    grid.appendChild(h("div", null, [h("h3", { text: "Original: max " + num(c.a.max_activation) + " at " + c.a.max_position }), this.tokens(c.a, scale, false)]));
    grid.appendChild(h("div", null, [h("h3", { text: "Edited: max " + num(c.b.max_activation) + " at " + c.b.max_position }), this.tokens(c.b, scale, false)]));
    out.appendChild(grid);
    var byB = {}, dmax = 0;
    c.diff.forEach(function (d) { byB[d.pos_b] = d; if (d.pos_b >= c.b.first) dmax = Math.max(dmax, Math.abs(d.d_activation)); });
    out.appendChild(h("h3", { text: "Difference (edited − original) of the activation" }));
    var row = h("div", { cls: "ctxl-live-tokens ctxl-live-diff" });
    c.b.tokens.forEach(function (t, i) {
      var d = byB[i];
      var s = h("span", { cls: "ctxl-live-tok" + (i < c.b.first ? " ctxl-live-bos" : "") + (d ? "" : " ctxl-live-edit"),
        "data-pos": String(i) });
      if (d) {
        s.setAttribute("data-diff", String(d.d_activation));
        s.title = "position " + i + " (original " + d.pos_a + "): activation " + (d.d_activation >= 0 ? "+" : "") + num(d.d_activation) +
          ", p(" + c.b.token + ") " + (d.d_prob >= 0 ? "+" : "") + num(d.d_prob);
        if (i >= c.b.first) s.style.background = diffColour(d.d_activation, dmax || 1);
      } else {
        s.title = "position " + i + ": part of the edit (no aligned token in the original)";
      }
      s.textContent = visible(t);
      row.appendChild(s);
    });
    out.appendChild(row);
    out.appendChild(h("p", { cls: "ctxl-live-cap", text: "Green: the edit raised the activation at that token; purple: lowered it. " +
      "Largest change " + num(dmax) + ". Maximum " + num(c.a.max_activation) + " → " + num(c.b.max_activation) + "." }));
  };

  function mountPoint() {
    var m = document.querySelector("[data-live-panel]");
    if (m) return function (el) { m.appendChild(el); };
    var h1 = document.querySelector("h1");
    if (h1) return function (el) { h1.parentNode.insertBefore(el, h1.nextSibling); };
    return function (el) { document.body.insertBefore(el, document.body.firstChild); };
  }

  function init() {
    var key = pageKey();
    if (!key) return;
    var p = new Panel(key, mountPoint());
    window.ctxlLivePanel = p;
    p.start();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
