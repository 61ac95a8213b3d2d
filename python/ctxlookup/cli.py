"""The ``ctxlookup`` command line: ``ctxlookup replicate [STAGE] --model ... --out RUN_DIR`` and
``ctxlookup report RUN_DIR [--out DIR]``."""
from __future__ import annotations

import argparse
import os
import sys


def _ints(s: str):
    return [int(x) for x in s.split(",") if x.strip()] if s else []


def _add_replicate(sub):
    from .replicate import STAGES, Options

    d = Options()
    p = sub.add_parser("replicate", help="run the paper's method end to end (resumable)",
                       description="Run the paper's method end to end; a STAGE runs everything up to it.")
    p.add_argument("stage", nargs="?", choices=STAGES, help="stop after this stage (default: all)")
    p.add_argument("--protocol", choices=["paper", "authors-2023", "ctxlookup"], default=d.protocol,
                   help="which version of the procedure: the paper's (the authors' 2024 code), the authors' recorded "
                        "2023 run, or ctxlookup's improvements; the options below override single rules "
                        "(default: %(default)s; see the README's protocol table)")
    p.add_argument("--model", default=d.model, help="checkpoint folder, Hugging Face repo id or alias (gpt2, pythia-160m, ...), or 'demo' (default)")
    p.add_argument("--out", default=d.out, help="run directory (default: runs/<model>-<hash of the options>, so "
                                                "different experiments get different folders; one run at a time "
                                                "may use a folder)")
    p.add_argument("--corpus", help="corpus for prompts (JSONL[.gz], Parquet, folder of .txt); demo: bundled")
    p.add_argument("--test-corpus", help="disjoint corpus for test prompts")
    p.add_argument("--layers", type=_ints, help="comma-separated layers (default: METHOD per model size)")
    p.add_argument("--neurons-per-layer", type=int, help="next-token neurons per layer (default: METHOD per model size)")
    p.add_argument("--random-per-layer", type=int, default=d.random_per_layer)
    p.add_argument("--prompts-per-neuron", type=int, help="train prompts per neuron (default: the protocol's, 20; authors-2023: 30)")
    p.add_argument("--test-prompts-per-neuron", type=int, help="test prompts per neuron (default: the protocol's, 10; authors-2023: 20)")
    p.add_argument("--table3", type=_ints, default=d.table3, help="prompt counts for Table 3 (default 10,20,30; '' for none)")
    p.add_argument("--explainer", choices=["offline", "openai"], default=d.explainer)
    p.add_argument("--llm-model", default=d.llm_model)
    p.add_argument("--base-url", help="OpenAI-compatible server (default: $OPENAI_BASE_URL or OpenAI)")
    p.add_argument("--llm-concurrency", type=int, default=d.llm_concurrency)
    p.add_argument("--rpm", type=float, help="requests per minute limit")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--no-process-weights", dest="process_weights", action="store_false",
                   help="raw weights (default: fold_ln, center_writing_weights, center_unembed, fold_value_biases)")
    p.add_argument("--direction", choices=["unembed", "embed"], default=d.direction)
    p.add_argument("--remove-frequency", action="store_true",
                   help="project the token-frequency direction (counted on the prompts' corpus) out of each neuron's "
                        "output weights before the congruence (not the paper's; for small models whose top neurons "
                        "are frequency neurons)")
    p.add_argument("--rule", choices=["architecture", "authors"],
                   help="eligible heads: 'authors' (layers below the neuron's) or 'architecture' (every head that can "
                        "reach the MLP input) (default: the protocol's; ctxlookup: architecture)")
    p.add_argument("--active-rule", choices=["mean+2sd", "top3"],
                   help="when a head is active on a prompt (default: the protocol's; authors-2023: top3)")
    p.add_argument("--truncation", choices=["exact", "binary"],
                   help="'binary': the authors' search; 'exact': the shortest suffix keeping 80%% "
                        "(default: the protocol's; ctxlookup: exact)")
    p.add_argument("--ablation", choices=["zero", "mean"], default=d.ablation)
    p.add_argument("--evidence-docs", type=int, default=d.evidence_docs,
                   help="test-corpus documents for the an-neuron check of every neuron (default %(default)s; 0 skips it)")
    p.add_argument("--max-docs", type=int, help="use at most this many documents of each corpus")
    p.add_argument("--batch-tokens", type=int, default=d.batch_tokens)
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(func=_run_replicate)


def _run_replicate(args) -> int:
    from .replicate import Options, Run, evidence_summary

    fields = set(Options.__dataclass_fields__)
    opts = Options(**{k: v for k, v in vars(args).items() if k in fields and v is not None})
    run = Run(opts)
    manifest = run.run(args.stage)
    done = [s for s, r in manifest["stages"].items() if r.get("complete")]
    print(f"run directory: {run.dir}")
    print(f"stages complete: {', '.join(done)}")
    if "stats" in manifest["stages"]:
        st = run.read("statistics")
        print(st.to_string(index=False))
    for line in evidence_summary(manifest):
        print(line)
    if hasattr(run._client, "usage_report"):
        print(run._client.usage_report())
    return 0


def _add_report(sub):
    p = sub.add_parser("report", help="write a run's HTML report (Neuroscope-style pages per neuron and head)",
                       description="Write a static HTML report of a run directory: an index with the run's summary, "
                                   "a page per neuron and a page per neuron-head pair. It opens from file:// with no "
                                   "server and no network.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory made by 'ctxlookup replicate'")
    p.add_argument("--out", help="where to write it (default: RUN_DIR/report)")
    p.add_argument("--model", help="the model folder, if it moved since the run (default: the manifest's)")
    p.add_argument("--no-model", action="store_true",
                   help="never load the model (a run made before the examples stage then shows no per-token colours)")
    p.add_argument("--corpus", help="the prompts' corpus, if it moved since the run")
    p.add_argument("--test-corpus", help="the test prompts' corpus, if it moved since the run")
    p.add_argument("--page-size", type=int, default=100, help="rows per page of the plain lists (default 100)")
    p.add_argument("--before", type=int, default=40, help="tokens shown before each maximum (default 40)")
    p.add_argument("--after", type=int, default=10, help="tokens shown after each maximum (default 10)")
    p.add_argument("--context", choices=["document", "prompt"], default="document",
                   help="activations on the documents (default, as the scan saw them and the examples stage "
                        "stored them) or computed on the truncated prompts alone (no corpus needed)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(func=_run_report)


def _run_report(args) -> int:
    from .report import report

    if not os.path.exists(os.path.join(args.run_dir, "manifest.json")):
        print(f"ctxlookup report: {args.run_dir} is not a run directory (no manifest.json); make one with "
              f"'ctxlookup replicate'", file=sys.stderr)
        return 2
    index = report(args.run_dir, out=args.out, model=False if args.no_model else args.model, corpus=args.corpus,
                   test_corpus=args.test_corpus, page_size=args.page_size, before=args.before, after=args.after,
                   context=args.context, progress=args.progress)
    print(f"report: {index}")
    print(f"open it: file://{index}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="ctxlookup", description="Interpreting context look-ups in transformers.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_replicate(sub)
    _add_report(sub)
    from . import authors
    authors.add_cli(sub)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception as e:
        from .replicate import RUN_ERRORS

        if isinstance(e, RUN_ERRORS):  # a run directory in use, damaged, of another run, or a full disk: one line
            print(f"ctxlookup {args.command}: {e}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
