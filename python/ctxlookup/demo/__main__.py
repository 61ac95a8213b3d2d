"""``python -m ctxlookup.demo [RUN_DIR]``: the main job on the bundled default (what ``make demo`` runs).

Runs ``ctxlookup replicate`` on the bundled demo model and corpus, with the offline explainer, or
GPT-4 when ``OPENAI_API_KEY`` is set, builds the Neuroscope atlas of the demo model's neurons on
the same corpus (``RUN_DIR/atlas``, its site in ``RUN_DIR/atlas/site``; :data:`ATLAS_LAST_LAYERS`),
writes the run's HTML report (its index links to the atlas), then prints where the results are. If this installation has no bundled demo model, it runs the quickstart example instead and
says so. A run folder left by an earlier demo with another model (a package upgrade) or another
explainer is moved aside, not mixed in or deleted. It needs only the package's runtime
dependencies (``make demo`` installs no torch, transformers or TransformerLens). An error in what
it was given (a rejected ``OPENAI_API_KEY``, an unreachable server) is one line and exit code 2.
"""
import os
import shlex
import sys
import time


# The atlas: the demo model's last layer (1,024 neurons) over the first ATLAS_DOCS documents of the
# training corpus, so that it adds about a minute to the demo. Every layer over all 900 documents
# took 427 s on the shared 2-core machine (load average 4.7), the last layer 298 s: see
# benchmarks/RESULTS.md (Neuroscope).
ATLAS_LAST_LAYERS = 1
ATLAS_DOCS = 200


def build_atlas(run, last_layers: int = ATLAS_LAST_LAYERS, docs: int = ATLAS_DOCS):
    """The Neuroscope atlas of the run model's last ``last_layers`` layers on the first ``docs``
    documents of the run's training corpus, in ``run.dir/atlas`` (its recorded shards reused when
    it is there already)."""
    from ..corpus import Corpus
    from ..neuroscope import neuroscope
    from ..neuroscope_site import ATLAS_DIR

    L = run.model.cfg.n_layers
    corpus = run.corpus("train")
    docs = min(docs, corpus.limit or docs)
    corpus = Corpus(corpus.source, text_field=corpus.text_field, limit=docs, name=f"{corpus.name}[:{docs}]")
    return neuroscope(run.model, corpus, out=os.path.join(run.dir, ATLAS_DIR),
                      layers=list(range(max(0, L - last_layers), L)), batch_tokens=run.opts.batch_tokens,
                      progress=run.opts.progress)


def replicate_fresh(replicate, out: str, explainer: str):
    """``replicate("demo", out, ...)``; when ``out`` holds a run made with another model or other
    options, it is renamed to ``out.previous-<time>`` first and the demo starts over."""
    from ..replicate import RunMismatch

    try:
        return replicate("demo", out, explainer=explainer)
    except RunMismatch as e:
        aside = f"{out.rstrip(os.sep)}.previous-{time.strftime('%Y%m%d-%H%M%S')}"
        os.replace(out, aside)
        print(f"{e}\nmoved it to {aside}; starting over")
        return replicate("demo", out, explainer=explainer)


def main(argv=None) -> int:
    from ..cli import USER_ERRORS

    try:
        return _main(argv)
    except USER_ERRORS as e:
        print(f"ctxlookup demo: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2


def _main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    out = argv[0] if argv else os.path.join("runs", "demo")
    from ..model import demo_model_path

    if not os.path.isdir(demo_model_path()):
        print(f"no bundled demo model at {demo_model_path()}; running the quickstart example instead")
        from ..examples import quickstart

        return quickstart.main()
    from ..replicate import replicate

    explainer = "openai" if os.environ.get("OPENAI_API_KEY") else "offline"
    print(f"ctxlookup replicate --model demo --out {out} --explainer {explainer}")
    t0 = time.perf_counter()
    run = replicate_fresh(replicate, out, explainer)
    p = run.protocol
    print(f"protocol: {p.name} (the paper as the authors' 2024 code runs it: {p.truncation} truncation, active heads "
          f"by {p.active_rule}, heads active on {p.low:.0%}-{p.high:.0%} of the prompts explained, {p.template_version} "
          f"prompts; every rule is in {os.path.join(run.dir, 'manifest.json')})")
    st = run.read("statistics")
    print(st.to_string(index=False))
    from ..replicate import evidence_summary

    for line in evidence_summary(run.manifest):
        print(line)
    t1 = time.perf_counter()
    atlas = build_atlas(run)
    atlas_s = time.perf_counter() - t1
    from ..report import report

    index = report(run)
    print(f"\nfinished in {time.perf_counter() - t0:.0f} s; results in {run.dir}")
    for f in ("statistics.csv", "scores.csv", "heads.csv", "evidence.csv", "figure5.png", "figure6.png", "manifest.json"):
        print(f"  {os.path.join(run.dir, f)}")
    print(f"report (open in a browser): file://{index}")
    print(f"atlas of the model's {len(atlas['neurons'])} neurons ({atlas_s:.0f} s): "
          f"file://{atlas.manifest['site']['index']}")
    print(f"to write it again: ctxlookup report {shlex.quote(run.dir)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
