"""The ``ctxlookup`` command line: ``ctxlookup replicate [STAGE] --model ... --out RUN_DIR`` and
``ctxlookup report RUN_DIR [--out DIR]``.

Every option's help shows its default. A mistake in the command or its input (an unknown
option or subcommand, a model folder or corpus that does not exist, a layer the model does not
have, a run directory made with other options, a rejected API key) is reported as one line on
stderr, with a "did you mean" where one is close, and exit code 2; ``--debug`` shows the
traceback instead.
"""
from __future__ import annotations

import argparse
import difflib
import os
import shlex
import sys

EXIT_USAGE = 2

# Errors that come from what the user asked for (paths, names, options, keys, servers): one line,
# not a traceback. ValueError covers RunMismatch, CorpusError and the core's FormatError; OSError
# covers FileNotFoundError, PermissionError, ConnectionError and the hub's errors.
USER_ERRORS = (ValueError, OSError)


class UserError(Exception):
    """A mistake in the command line, found before any work."""


class _Formatter(argparse.HelpFormatter):
    """Shows "(default: X)" after each option's help unless the help already says its default."""

    def _get_help_string(self, action):
        h = action.help or ""
        if "default" in h or action.default in (None, argparse.SUPPRESS) or isinstance(action.default, bool) \
                or not action.option_strings:
            return h
        return h + " (default: %(default)s)"


def _close(word: str, options) -> str:
    m = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f"; did you mean {m[0]}?" if m else ""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors, no abbreviations, and "did you mean" for options and choices."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _Formatter)
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")

    def _check_value(self, action, value):
        if action.choices is not None and value not in action.choices:
            choices = [str(c) for c in action.choices]
            raise argparse.ArgumentError(action, f"invalid choice '{value}' (choose from {', '.join(choices)})"
                                                 f"{_close(str(value), choices)}")

    def parse_known_args(self, args=None, namespace=None):
        # An unknown --option is named before anything else: argparse would otherwise take its value
        # for the next positional argument ("--modle demo": "invalid choice: 'demo'").
        args = sys.argv[1:] if args is None else list(args)
        subcommands = [a for a in self._actions if isinstance(a, argparse._SubParsersAction)]
        longs = [o for o in self._option_string_actions if o.startswith("--")]
        for tok in args:
            if tok == "--" or (subcommands and not tok.startswith("-")):
                break  # the rest belongs to the subcommand, or is positional
            if tok.startswith("--"):
                name = tok.split("=", 1)[0]
                if name not in self._option_string_actions:
                    self.error(f"unrecognized option {name}{_close(name, longs)}")
        return super().parse_known_args(args, namespace)


def _ints(s: str):
    try:
        return [int(x) for x in s.split(",") if x.strip()] if s else []
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{s}' is not a comma-separated list of integers (e.g. 9,10,11)") from None


def _count(lo: int):
    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{s}' is not an integer") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"must be >= {lo}, got {v}")
        return v
    parse.__name__ = "int"
    return parse


def _positive_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{s}' is not a number") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {s}")
    return v


def _common(p) -> None:
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="show the full traceback of an error (default: a one-line message)")


def _add_replicate(sub):
    from .replicate import STAGES, Options

    d = Options()
    p = sub.add_parser("replicate", help="run the paper's method end to end (resumable)",
                       description="Run the paper's method end to end; a STAGE runs everything up to it. A run "
                                   "killed or interrupted resumes where it stopped when the same command is run again.")
    p.add_argument("stage", nargs="?", choices=STAGES, metavar="STAGE",
                   help=f"stop after this stage, one of {', '.join(STAGES)} (default: all of them)")
    p.add_argument("--protocol", choices=["paper", "authors-2023", "ctxlookup"], default=d.protocol,
                   help="which version of the procedure: 'paper' (the paper as the authors' 2024 code does it), "
                        "'authors-2023' (the rules of the authors' recorded 2023 run) or 'ctxlookup' (ctxlookup's "
                        "improvements); the options below override single rules (see the README's protocol table)")
    p.add_argument("--model", default=d.model,
                   help="a checkpoint folder, a Hugging Face repo id (org/name) or a TransformerLens alias "
                        "(gpt2-small, pythia-160m, ...), or 'demo', the small GPT-2 bundled with the package")
    p.add_argument("--out", default=d.out,
                   help="the run directory (tables, figures, manifest.json); default: runs/<model>-<hash of the "
                        "options>, so different experiments get different folders; one run at a time may use a folder")
    p.add_argument("--corpus", help="corpus for the prompts: JSONL[.gz] in the Pile's shape, Parquet or a folder of "
                                    ".txt files (default: the bundled corpus for the demo model; required otherwise)")
    p.add_argument("--test-corpus", help="a disjoint corpus for the test prompts (default: the bundled test corpus "
                                         "for the demo model; required otherwise)")
    p.add_argument("--layers", type=_ints,
                   help="comma-separated layer indices, e.g. 9,10,11 (0 is the first layer; default: the last 3 layers "
                        "for models of up to 23 layers, such as GPT-2 small and Pythia-160m, the last 4 for 24-35 "
                        "layers, the last 5 for 36 or more, as in the paper)")
    p.add_argument("--neurons-per-layer", type=_count(1),
                   help="next-token neurons per layer (default: 20, or 40 for models of 36 or more layers, as in the "
                        "paper)")
    p.add_argument("--random-per-layer", type=_count(0), default=d.random_per_layer,
                   help="random neurons per layer, the baseline the next-token neurons are compared with")
    p.add_argument("--prompts-per-neuron", type=_count(1), default=d.prompts_per_neuron,
                   help="max-activating prompts per neuron for head attribution and the explanations (default: the "
                        "protocol's: 20; authors-2023: 30)")
    p.add_argument("--test-prompts-per-neuron", type=_count(1), default=d.test_prompts_per_neuron,
                   help="prompts per neuron from the test corpus, on which the explanations are scored (default: the "
                        "protocol's: 10; authors-2023: 20)")
    p.add_argument("--table3", type=_ints, default=d.table3,
                   help="prompts per neuron for each row of Table 3, comma-separated; '' for no Table 3 "
                        f"(default: {','.join(map(str, d.table3 or []))})")
    p.add_argument("--explainer", choices=["offline", "openai"], default=d.explainer,
                   help="who writes and scores the head explanations: 'offline', a deterministic explainer built "
                        "from the prompts' tokens (no network), or 'openai', an OpenAI-compatible chat API "
                        "(needs OPENAI_API_KEY for OpenAI's server)")
    p.add_argument("--llm-model", default=d.llm_model, help="the chat model for --explainer openai (the paper's: GPT-4)")
    p.add_argument("--base-url", help="an OpenAI-compatible server for --explainer openai, e.g. http://localhost:8000/v1 "
                                      "(default: $OPENAI_BASE_URL, else https://api.openai.com/v1)")
    p.add_argument("--llm-concurrency", type=_count(1), default=d.llm_concurrency,
                   help="LLM requests in flight at once")
    p.add_argument("--rpm", type=_positive_float, help="at most this many LLM requests per minute (default: no limit)")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the random-neuron baseline")
    p.add_argument("--no-process-weights", dest="process_weights", action="store_false",
                   help="use the raw weights (default: processed as TransformerLens does: fold_ln, "
                        "center_writing_weights, center_unembed, fold_value_biases)")
    p.add_argument("--direction", choices=["unembed", "embed"], default=d.direction,
                   help="the token directions a neuron's output weights are compared with: the unembedding (the "
                        "paper's) or the embedding")
    p.add_argument("--remove-frequency", action="store_true",
                   help="project the token-frequency direction (counted on the prompts' corpus) out of each neuron's "
                        "output weights before the congruence (not the paper's; for small models whose top neurons "
                        "are frequency neurons; default: off)")
    p.add_argument("--rule", choices=["architecture", "authors"], default=d.rule,
                   help="which heads a neuron's head attribution covers: 'architecture', the heads that can reach "
                        "it (layers up to the neuron's, the sequential block's own included), or 'authors', the "
                        "layers below the neuron's as the authors' code did (default: the protocol's: authors; "
                        "ctxlookup: architecture)")
    p.add_argument("--active-rule", choices=["mean+2sd", "top3"], default=d.active_rule,
                   help="when a head counts as active on a prompt: its score above the mean + 2 sample standard "
                        "deviations of the eligible heads' scores, or among the top 3 (default: the protocol's: "
                        "mean+2sd; authors-2023: top3)")
    p.add_argument("--truncation", choices=["exact", "binary"], default=d.truncation,
                   help="how a prompt is cut to a suffix keeping 80%% of its activation: 'binary' is the authors' "
                        "binary search, 'exact' finds the shortest such suffix, trying every length (default: the "
                        "protocol's: binary; ctxlookup: exact)")
    p.add_argument("--ablation", choices=["zero", "mean"], default=d.ablation,
                   help="how a head is removed in the ablation check: 'zero' sets its output (hook_z) to zero, as "
                        "in the paper; 'mean' replaces it with its mean")
    p.add_argument("--evidence-docs", type=_count(0), default=d.evidence_docs,
                   help="test-corpus documents for the an-neuron check of every neuron (not the paper's; 0 skips it)")
    p.add_argument("--max-docs", type=_count(1),
                   help="use at most the first N documents of each corpus, the bundled ones included (default: all)")
    p.add_argument("--batch-tokens", type=_count(1), default=d.batch_tokens,
                   help="tokens per forward batch in the corpus scans (memory against speed)")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bars (default: a bar for each long stage; the stages are announced either way)")
    from . import distributed

    distributed.add_cli_options(p, threads=False)  # the scans on Dask
    _common(p)
    p.set_defaults(func=_run_replicate)


def _model_suggestion(name: str) -> str:
    """"; did you mean X?" for a model name close to an alias or a demo model, else ""."""
    from .hub import ALIASES
    from .model import DEMO_MODELS

    return _close(name, list(DEMO_MODELS) + list(ALIASES))


def _check_model(name: str) -> None:
    """Refuse, before any work, a model that is a missing folder or a misspelt alias."""
    from .hub import ALIASES
    from .model import DEMO_MODELS

    if os.path.isdir(name) or name in DEMO_MODELS or name in ALIASES or name.lower() in ALIASES:
        return
    if os.path.exists(name):
        raise UserError(f"--model {name} is a file; give the checkpoint's folder (with config.json and "
                        f"model.safetensors)")
    looks_like_path = name.startswith((os.sep, ".", "~")) or name.count("/") > 1 or name.endswith("/")
    if looks_like_path:
        raise UserError(f"--model {name}: no such folder")
    if "/" not in name:
        hint = _model_suggestion(name)
        if hint:
            raise UserError(f"--model {name} is neither a folder, a known alias nor a Hugging Face repo id "
                            f"(org/name){hint}")


def _check_paths(args) -> None:
    for flag, path in (("--corpus", args.corpus), ("--test-corpus", args.test_corpus)):
        if path is not None and not os.path.exists(path):
            raise UserError(f"{flag} {path}: no such file or folder")


def _run_replicate(args) -> int:
    from .replicate import STAGES, Options, Run, evidence_summary

    _check_model(args.model)
    _check_paths(args)
    fields = set(Options.__dataclass_fields__)
    opts = Options(**{k: v for k, v in vars(args).items() if k in fields and v is not None})
    run = Run(opts)
    n = run.model.cfg.n_layers  # a model that cannot be loaded fails here, before the first stage
    if opts.layers:
        bad = [layer for layer in opts.layers if not 0 <= layer < n]
        if bad:
            raise UserError(f"--layers {','.join(map(str, opts.layers))}: the model has {n} layers, so layer "
                            f"indices go from 0 to {n - 1} (layer {bad[0]} does not exist)")
    manifest = run.run(args.stage, announce=True)
    done = [s for s in STAGES if manifest["stages"].get(s, {}).get("complete")]
    print()
    if "stats" in done:
        print(run.read("statistics").to_string(index=False))
    for line in evidence_summary(manifest):
        print(line)
    if hasattr(run.llm_client, "usage_report"):
        print(run.llm_client.usage_report())
    print(f"stages complete: {', '.join(done) or 'none'}")
    print(f"run directory: {run.dir} (the results: tables as .parquet and .csv, figures as .png and .svg, "
          f"manifest.json)")
    if len(done) == len(STAGES):
        print(f"the report: ctxlookup report {shlex.quote(run.dir)}")
    else:
        rest = [s for s in STAGES if s not in done]
        print(f"to run the rest ({', '.join(rest)}): the same command without the stage")
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
                   help="never load the model (a run made before the examples stage then shows no per-token colours; default: load it only for such a run)")
    p.add_argument("--corpus", help="the prompts' corpus, if it moved since the run (default: the manifest's)")
    p.add_argument("--test-corpus", help="the test prompts' corpus, if it moved since the run (default: the manifest's)")
    p.add_argument("--page-size", type=_count(1), default=100, help="rows per page of the plain lists (default 100)")
    p.add_argument("--before", type=_count(0), default=40, help="tokens shown before each maximum (default 40)")
    p.add_argument("--after", type=_count(0), default=10, help="tokens shown after each maximum (default 10)")
    p.add_argument("--context", choices=["document", "prompt"], default="document",
                   help="activations on the documents (default, as the scan saw them and the examples stage "
                        "stored them) or computed on the truncated prompts alone (no corpus needed)")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bars (default: shown)")
    _common(p)
    p.set_defaults(func=_run_report)


def _run_report(args) -> int:
    from .report import report

    if not os.path.exists(os.path.join(args.run_dir, "manifest.json")):
        raise UserError(f"{args.run_dir} is not a run directory (no manifest.json); make one with "
                        f"'ctxlookup replicate'")
    index = report(args.run_dir, out=args.out, model=False if args.no_model else args.model, corpus=args.corpus,
                   test_corpus=args.test_corpus, page_size=args.page_size, before=args.before, after=args.after,
                   context=args.context, progress=args.progress)
    print(f"report: {index}")
    print(f"open it: file://{index}")
    return 0


def parser() -> argparse.ArgumentParser:
    from ._version import __version__

    p = _Parser(prog="ctxlookup", description="Interpreting context look-ups in transformers.")
    p.add_argument("--version", action="version", version=f"ctxlookup {__version__}",
                   help="print the version and exit")
    p.add_argument("--debug", action="store_true", help="show the full traceback of an error (default: a one-line "
                                                        "message)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser,
                           title="commands")
    _add_replicate(sub)
    _add_report(sub)
    from . import authors

    authors.add_cli(sub)
    from . import neuroscope

    neuroscope.add_cli(sub)
    from . import serve

    serve.add_cli(sub)
    return p


def _run_errors() -> tuple:
    """A run directory in use, damaged, of another run, a full disk, a damaged LLM cache: one line too."""
    from .replicate import RUN_ERRORS

    return RUN_ERRORS


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    debug = bool(getattr(args, "debug", False))
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except (UserError,) + USER_ERRORS + _run_errors() as e:
        if debug:
            raise
        msg = _one_line(e)
        from .hub import HubError

        if isinstance(e, HubError) and getattr(args, "model", None):
            msg += _model_suggestion(args.model)
        print(f"ctxlookup {args.command}: error: {msg}" +
              ("" if isinstance(e, UserError) else " (--debug for the traceback)"), file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
