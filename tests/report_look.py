"""Compare how two reports of the same run look in headless Chromium: each page's visible text and
the boxes of the elements that make its layout (headings, cards, examples, their tokens, tables,
figures), plus a screenshot of each. Used by the report's before/after test."""
import json
import math
import os
import re
import subprocess
import sys
import urllib.request

# the last commit whose report was the single-module report.py (the "before" of the comparison)
BEFORE_COMMIT = "7ddd9b368b46fdde65e0b26f71b4062b4d5d2744"

# elements whose boxes must not move; the tokens one by one, and the example boxes that hold them
KEY = ["h1", "h2", "h3", ".card", ".ex", ".toks", ".tok", ".cut", ".ell", ".heads", ".chip", "table", "svg",
       "figure", ".explorer", ".nav", "details", ".note", ".legend", ".expl", "p"]

LAYOUT_JS = """(() => {
  const key = %s;
  const out = {text: document.body.innerText, boxes: {}, tokens: []};
  for (const sel of key) {
    out.boxes[sel] = Array.from(document.querySelectorAll(sel)).map(e => {
      const r = e.getBoundingClientRect();
      return [Math.round(r.x), Math.round(r.y + window.scrollY), Math.round(r.width), Math.round(r.height)];
    });
  }
  out.tokens = Array.from(document.querySelectorAll('.tok')).map(e =>
    [e.className, getComputedStyle(e).backgroundColor, e.title, e.textContent]);
  out.height = document.documentElement.scrollHeight;
  return out;
})()""" % json.dumps(KEY)


def before_module(repo):
    """The report module as it was at BEFORE_COMMIT, importable as ``ctxlookup._report_before``
    (its one private import from search.py renamed to today's public name)."""
    import importlib.util
    import tempfile

    src = subprocess.run(["git", "-C", repo, "show", f"{BEFORE_COMMIT}:python/ctxlookup/report.py"],
                         capture_output=True, text=True)
    if src.returncode != 0:
        raise RuntimeError(f"git show {BEFORE_COMMIT}:python/ctxlookup/report.py failed: {src.stderr.strip()}")
    text = src.stdout.replace("from .search import _doc_tokens", "from .search import doc_tokens as _doc_tokens")
    path = os.path.join(tempfile.mkdtemp(prefix="report-before-"), "_report_before.py")
    with open(path, "w") as f:
        f.write(text)
    spec = importlib.util.spec_from_file_location("ctxlookup._report_before", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def file_url(path):
    return "file://" + urllib.request.pathname2url(os.path.abspath(path))


def layout(browser, page):
    """Open ``page`` and return its text, element boxes, tokens (class, colour, title, text) and a screenshot."""
    mark = browser.open(file_url(page))
    problems = browser.problems(mark)
    got = browser.eval(LAYOUT_JS)
    got["problems"] = problems
    got["png"] = browser.screenshot()
    return got


# what the report's redesign for phones and readable numbers kept: the examples and their coloured tokens
EXAMPLES = [".ex", ".toks", ".tok", ".cut", ".ell", ".heads"]


def differences(a, b, tol=1, keys=KEY, exact=True):
    """What differs between two layouts (empty when they look the same): the text, the number of
    each kind of element in ``keys``, any box off by more than ``tol`` pixels, any token's class,
    colour, tooltip or text. ``exact=False``: the counts and the tokens only (not the text, nor
    where the boxes are)."""
    out = []
    if exact and a["text"] != b["text"]:
        import difflib

        d = list(difflib.unified_diff(a["text"].splitlines(), b["text"].splitlines(), lineterm="", n=0))
        out.append("text differs:\n" + "\n".join(d[:20]))
    for sel in keys:
        x, y = a["boxes"][sel], b["boxes"][sel]
        if len(x) != len(y):
            out.append(f"{sel}: {len(x)} elements before, {len(y)} after")
            continue
        if not exact:
            continue
        bad = [(i, p, q) for i, (p, q) in enumerate(zip(x, y)) if any(abs(u - v) > tol for u, v in zip(p, q))]
        if bad:
            out.append(f"{sel}: {len(bad)} of {len(x)} boxes moved, first #{bad[0][0]}: {bad[0][1]} -> {bad[0][2]}")
    if len(a["tokens"]) != len(b["tokens"]):
        out.append(f"tokens: {len(a['tokens'])} before, {len(b['tokens'])} after")
    else:
        bad = [(p, q) for p, q in zip(a["tokens"], b["tokens"]) if not same_token(p, q)]
        if bad:
            out.append(f"tokens: {len(bad)} differ, first {bad[0][0]} -> {bad[0][1]}")
    return out


def _rgba(c):
    v = [float(x) for x in re.findall(r"[\d.]+", c)]
    return v + [1.0] * (4 - len(v))


def _byte(alpha):
    """The 8-bit alpha Chromium printed as the shortest decimal that rounds (half up) back to it."""
    return math.floor(255 * alpha + 0.5)


def same_token(p, q):
    """Two coloured tokens look the same: class and text equal, the colour's alpha within one step
    of 255 and its activation in the tooltip within 0.001 (a float32 activation computed in
    another batch can differ in its last bit, and the maximum sits on a rounding boundary; the
    report's script colours from the activation in thousandths)."""
    (cp, bp, tp, xp), (cq, bq, tq, xq) = p, q
    if cp != cq or xp != xq:
        return False
    u, v = _rgba(bp), _rgba(bq)
    if u[:3] != v[:3] or abs(_byte(u[3]) - _byte(v[3])) > 1:
        return False
    lp, _, np_ = tp.rpartition(" \u00b7 ")
    lq, _, nq = tq.rpartition(" \u00b7 ")
    if lp != lq:
        return False
    try:
        return abs(float(np_) - float(nq)) <= 0.0011
    except ValueError:
        return np_ == nq
