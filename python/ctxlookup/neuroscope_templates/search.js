// Search the neurons of search_index.js (NEUROSCOPE_INDEX: [layer, neuron, max, max token, raised tokens, text]).
(function () {
  const q = document.getElementById("q"), out = document.getElementById("results");
  const esc = (s) => s.replace(/[&<>"]/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[c]));
  function run() {
    const mode = document.querySelector("input[name=mode]:checked").value, s = q.value;
    if (!s) { out.innerHTML = ""; return; }
    const hits = NEUROSCOPE_INDEX.filter((n) => mode === "token"
      ? n[3].trim() === s.trim() || n[4].some((t) => t.trim() === s.trim())
      : n[5].toLowerCase().includes(s.toLowerCase())).slice(0, 200);
    out.innerHTML = "<tr><th>neuron</th><th>max</th><th>at its maximum</th><th>raises</th><th>text</th></tr>" +
      hits.map((n) => `<tr><td><a href="neurons/L${n[0]}N${n[1]}.html">L${n[0]}N${n[1]}</a></td><td>${n[2].toFixed(3)}</td>` +
        `<td><code>${esc(n[3])}</code></td><td>${esc(n[4].join(" "))}</td><td>${esc(n[5])}</td></tr>`).join("");
  }
  q.addEventListener("input", run);
  document.querySelectorAll("input[name=mode]").forEach((r) => r.addEventListener("change", run));
})();
