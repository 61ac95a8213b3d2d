"""The paper's authors' recorded experiment data: import it into ctxlookup's tables and replay it.

Neo, Cohen and Barez recorded every intermediate result of their 2023 run (the one behind the
paper's §5.4 p-values) in their repository's ``neuron_groups/experiment_data/`` and
``notebooks/``; ``../shared/data/authors/`` holds GPT-2 small and medium. :func:`load` reads that
layout into the tables ctxlookup's own pipeline makes (the column names of ``ctxlookup replicate``'s
outputs), and :func:`replay` rebuilds what the authors recorded through ctxlookup's own functions,
with the rules of their 2023 code (``version="2023"``, :func:`ctxlookup.select_heads` with
``low_strict=True, high=None``, ...), and compares:

- every explanation request (:func:`ctxlookup.explain_heads`) and every classification request
  (:func:`ctxlookup.score_explanations`) with the recorded request lines, byte for byte: the body
  ctxlookup's LLM client sends, written with Python's ``json.dumps`` defaults as the authors wrote
  their files;
- E per head, from the recorded answers, with every line of ``eval_results_full_*_fr.txt``;
- the set and order of explained heads, from the recorded active-head lists;
- the per-head ablation means from the recorded probabilities with the recorded means, and their
  KS test with the paper's §5.4 values;
- the mean and std (ddof=0) of E with the authors' notebook's numbers.

The ablation files are torch pickles; they are read without torch (a restricted unpickler that
accepts only the tensor and numpy classes they hold).
"""
from __future__ import annotations

import io
import json
import os
import pickle
import re
import struct
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np
import pandas as pd

from .llm import Result

__all__ = ["load", "replay", "Recorded", "RecordedAnswers", "AuthorsData", "read_jsonl", "load_torch_pickle",
           "add_cli", "N_HEADS", "PAPER_ABLATION_KS", "NOTEBOOK_SUMMARY", "TABLES"]

# heads per layer, to split the authors' flat head index (layer * n_heads + head)
N_HEADS = {"gpt2-small": 12, "gpt2-medium": 16, "gpt2-large": 20, "gpt2-xl": 25, "pythia-70m": 8,
           "pythia-160m": 12, "pythia-410m": 16, "pythia-1b": 8, "pythia-1.4b": 16}
# the paper's §5.4: two-sample KS test of the per-head ablation means, active vs inactive prompts (D, p)
PAPER_ABLATION_KS = {"gpt2-small": (0.241861, 1.0247e-05), "gpt2-medium": (0.331139, 3.6875e-13)}
# the authors' 2023 7_results.ipynb (a comment under np.mean / np.std of E): heads, mean, std (ddof 0)
NOTEBOOK_SUMMARY = {"gpt2-small": (207, 0.639, 0.178), "gpt2-medium": (263, 0.616, 0.159)}
# the tables load() returns and `ctxlookup authors import` writes
TABLES = ["neurons", "prompts", "test_prompts", "attribution", "test_attribution", "heads", "explanations",
          "scores", "predictions", "ablation", "ablation_by_head"]

TEST_PROMPTS_PER_HEAD = 20  # the recorded data's scoring used each neuron's first 20 test prompts
_STAMP = r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d_"


class MissingFile(FileNotFoundError):
    """One of the authors' files that a quantity needs is not in the folder."""


# --------------------------------------------------------------------------- reading their files
def read_jsonl(path: str) -> list:
    """The JSON values of a JSON-lines file; a line that is not JSON raises ValueError naming the
    file and the line number."""
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}, line {n}: not valid JSON ({e.msg} at column {e.colno})") from None
    return out


def _read_json(path: str):
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}, line {e.lineno}: not valid JSON ({e.msg} at column {e.colno})") from None


def _lines(path: str) -> List[str]:
    with open(path, encoding="utf-8") as f:
        return [ln.rstrip("\n") for ln in f if ln.strip()]


def _tuple(key: str) -> tuple:
    """``"(9, 5, 88)"`` -> ``(9, 5, 88)``."""
    m = re.fullmatch(r"\((\d+(?:, \d+)*)\)", key.strip())
    if not m:
        raise ValueError(f"not a neuron or neuron-head key: {key!r}")
    return tuple(int(x) for x in m.group(1).split(", "))


_STORAGE_DTYPES = {"FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
                   "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
                   "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_}


class _StorageUnpickler(pickle.Unpickler):
    """torch's legacy storage format, as ``torch.storage._load_from_bytes`` reads it."""

    def __init__(self, f):
        super().__init__(f)
        self.storages: Dict[str, tuple] = {}

    def find_class(self, module, name):
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        raise pickle.UnpicklingError(f"unexpected class {module}.{name} in a torch storage")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage" and len(pid) >= 5):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r} in a torch storage")
        dtype, key, numel = pid[1], str(pid[2]), int(pid[4])
        self.storages[key] = (dtype, numel)
        return key


def _load_from_bytes(b: bytes) -> np.ndarray:
    f = io.BytesIO(b)
    if pickle.load(f) != 0x1950A86A20F9469CFC6C:
        raise pickle.UnpicklingError("not a torch legacy storage (bad magic number)")
    pickle.load(f)  # protocol version
    info = pickle.load(f)
    if isinstance(info, dict) and not info.get("little_endian", True):
        raise pickle.UnpicklingError("big-endian torch storages are not supported")
    up = _StorageUnpickler(f)
    key = up.load()
    keys = pickle.load(f)
    arrays = {}
    for k in keys:
        dtype, numel = up.storages[str(k)]
        (size,) = struct.unpack("<q", f.read(8))
        if size != numel:
            raise pickle.UnpicklingError(f"torch storage {k}: {size} elements recorded, {numel} expected")
        nbytes = size * np.dtype(dtype).itemsize
        buf = f.read(nbytes)
        if len(buf) != nbytes:
            raise pickle.UnpicklingError(f"torch storage {k}: truncated")
        arrays[str(k)] = np.frombuffer(buf, dtype=dtype).copy()
    return arrays[key]


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
    st = np.asarray(storage)
    if len(size) == 0:
        return st[offset].copy()
    view = np.lib.stride_tricks.as_strided(st[offset:], shape=tuple(size),
                                           strides=tuple(s * st.itemsize for s in stride))
    return view.copy()


def _numpy_scalar():
    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import scalar
    return scalar


class _TorchPickleUnpickler(pickle.Unpickler):
    """A pickle of tensors (``pickle.dump`` of a dict holding torch tensors and numpy scalars),
    read into numpy arrays without torch; any other class is refused."""

    _ALLOWED = {("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
                ("torch.storage", "_load_from_bytes"): _load_from_bytes,
                ("collections", "OrderedDict"): dict}

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return self._ALLOWED[(module, name)]
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name == "scalar":
            return _numpy_scalar()
        if module == "numpy" and name == "dtype":
            return np.dtype
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} (not a tensor or numpy scalar)")


def load_torch_pickle(path: str):
    """The authors' ablation pickles (``7_head_ablation/*.pkl``) with their tensors as numpy arrays."""
    with open(path, "rb") as f:
        try:
            return _TorchPickleUnpickler(f).load()
        except (pickle.UnpicklingError, EOFError, struct.error) as e:
            raise ValueError(f"{path}: not a readable pickle of tensors ({e})") from None


# --------------------------------------------------------------------------- the folder
@dataclass
class AuthorsData:
    """Where the authors' files for one model are (None: not found), named as in their layout."""

    folder: str
    model: str
    files: Dict[str, Optional[str]] = field(default_factory=dict)

    PATTERNS = {  # key: (subfolder, regex after the time stamp, or a full regex when it starts with ^)
        "neurons": ("experiment_data/1_next_token_neurons", "{m}\\.json"),
        "attribution": ("experiment_data/4_head_attributions", "{m}\\.json"),
        "test_attribution": ("experiment_data/4_head_attributions", "{m}_test\\.json"),
        "heads": ("experiment_data/4_head_attributions", "{m}_prompts\\.json"),
        "explain_requests": ("experiment_data/5_head_explanations", "{m}_prompts\\.jsonl"),
        "explain_results": ("experiment_data/5_head_explanations", "{m}_prompts_results\\.jsonl"),
        "explain_dict": ("experiment_data/5_head_explanations", "{m}_prompts_dict\\.json"),
        "classify_requests": ("experiment_data/6_explanation_eval", "{m}_test_prompts\\.jsonl"),
        "classify_results": ("experiment_data/6_explanation_eval", "{m}_test_prompts_results\\.jsonl"),
        "classify_requests_rest": ("experiment_data/6_explanation_eval", "{m}_test_prompts_10\\.jsonl"),
        "classify_results_rest": ("experiment_data/6_explanation_eval", "{m}_test_prompts_10_results\\.jsonl"),
        "classify_requests_all": ("experiment_data/6_explanation_eval", "{m}_test_prompts_20\\.jsonl"),
        "ablation": ("experiment_data/7_head_ablation", "^nh_token_prob_attn_ablated_vs_normal_noabs_{s}\\.pkl"),
        "eval_printout": ("notebooks", "^eval_results_full_{s}_fr\\.txt"),
    }
    OPTIONAL = {"classify_requests_all"}  # recorded for small only

    @classmethod
    def find(cls, folder: str, model: str) -> "AuthorsData":
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"{folder}: no such folder (expected the authors' experiment_data/ and notebooks/)")
        short = model.split("-", 1)[1] if "-" in model else model
        out = cls(folder, model)
        for key, (sub, pat) in cls.PATTERNS.items():
            pat = pat.format(m=re.escape(model), s=re.escape(short))
            rx = re.compile(pat[1:] + "$" if pat.startswith("^") else "^" + _STAMP + pat + "$")
            d = os.path.join(folder, sub)
            names = sorted(n for n in os.listdir(d) if rx.match(n)) if os.path.isdir(d) else []
            out.files[key] = os.path.join(d, names[-1]) if names else None
        return out

    def need(self, *keys: str) -> List[str]:
        missing = [k for k in keys if not self.files.get(k)]
        if missing:
            raise MissingFile("missing: " + ", ".join(self.describe(k) for k in missing))
        return [self.files[k] for k in keys]

    def describe(self, key: str) -> str:
        sub, pat = self.PATTERNS[key]
        short = self.model.split("-", 1)[1] if "-" in self.model else self.model
        name = pat.format(m=self.model, s=short).replace("\\.", ".").lstrip("^")
        return f"{sub}/{name if pat.startswith('^') else '<time stamp>_' + name}"

    def missing(self) -> List[str]:
        return [self.describe(k) for k, v in self.files.items() if v is None and k not in self.OPTIONAL]


# --------------------------------------------------------------------------- a client answering from the record
class RecordedAnswers:
    """A client for :func:`ctxlookup.explain_heads` / :func:`ctxlookup.score_explanations` that
    answers each request with the authors' recorded answer to the same text (the later one where a
    text was asked twice, as their dicts did), and keeps every request it was given
    (``requests``: ``(messages, max_tokens, temperature)``)."""

    def __init__(self, answers: Dict[str, str]):
        self.answers = answers
        self.requests: list = []

    @classmethod
    def from_results(cls, *paths: str) -> "RecordedAnswers":
        answers: Dict[str, str] = {}
        for path in paths:
            for n, rec in enumerate(read_jsonl(path), 1):
                try:
                    answers[rec[0]["messages"][-1]["content"]] = rec[1]["choices"][0]["message"]["content"]
                except (KeyError, IndexError, TypeError):
                    raise ValueError(f"{path}, line {n}: not a [request, response] pair") from None
        return cls(answers)

    def complete_many(self, messages_list, max_tokens=None, temperature=None, stage: str = "", **kw):
        out = []
        for m in messages_list:
            self.requests.append((m, max_tokens, temperature))
            a = self.answers.get(m[-1]["content"])
            out.append(Result(a, usage=None, cached=True, error=None if a is not None else "no recorded answer"))
        return out

    def bodies(self, model: str) -> List[str]:
        """Each request as the JSON body ctxlookup's LLM client sends (:class:`ctxlookup.llm.Client`'s
        own serializer), written with ``json.dumps`` defaults as the authors wrote their files."""
        from .llm import request_body

        return [json.dumps(json.loads(request_body(model, m, mt, t)))
                for m, mt, t in self.requests]


# --------------------------------------------------------------------------- loading
@dataclass
class Recorded:
    """The authors' recorded data for one model, in ctxlookup's tables (:data:`TABLES`), and what
    could not be read (``problems``: file or quantity -> why)."""

    model: str
    data: AuthorsData
    tables: Dict[str, pd.DataFrame] = field(default_factory=dict)
    problems: Dict[str, str] = field(default_factory=dict)
    llm_model: Optional[str] = None
    classify_client: Optional[RecordedAnswers] = None
    explain_client: Optional[RecordedAnswers] = None

    def __getitem__(self, name: str) -> pd.DataFrame:
        return self.tables[name]


def _neurons_table(path: str) -> pd.DataFrame:
    d = _read_json(path)
    rows = [dict(layer=k[0], neuron=k[1], token=v["token"], congruence=float(v["congruence"]), group="next_token")
            for k, v in ((_tuple(k), v) for k, v in d["neurons"].items())]
    df = pd.DataFrame(rows, columns=["layer", "neuron", "token", "congruence", "group"])
    df.insert(4, "rank", df.groupby("layer").cumcount())
    params = d.get("parameters", {})
    df.attrs["rejected_neurons"] = params.get("rejected_neurons")
    df.attrs["parameters"] = {k: v for k, v in params.items() if k != "rejected_neurons"}
    return df


def _prompts_and_attribution(path: str, tokens: Dict[tuple, str], n_heads: int):
    """A head-attribution file (``neuron -> {prompt text: [flat heads]}``): the prompts, in order,
    and the attribution table with every eligible head (layers below the neuron's) of every prompt,
    each prompt's recorded heads first, in their recorded (attribution) order, ``active`` True."""
    d = _read_json(path)["head_attributions"]
    prompts, att = [], {k: [] for k in ("layer", "neuron", "prompt_id", "head_layer", "head", "active")}
    pid = 0
    for key, per_prompt in d.items():
        layer, neuron = _tuple(key)
        n_el = layer * n_heads
        others = np.arange(n_el)
        for rank, (text, heads) in enumerate(per_prompt.items()):
            heads = [int(h) for h in heads]
            bad = [h for h in heads if not 0 <= h < n_el]
            if bad:
                raise ValueError(f"{path}: neuron {key}: head index {bad[0]} is not below layer {layer} "
                                 f"({n_heads} heads per layer)")
            prompts.append(dict(layer=layer, neuron=neuron, prompt_id=pid, rank=rank, text=text,
                                token=tokens.get((layer, neuron))))
            order = np.concatenate([np.asarray(heads, np.int64), others[~np.isin(others, heads)]])
            att["layer"].append(np.full(n_el, layer))
            att["neuron"].append(np.full(n_el, neuron))
            att["prompt_id"].append(np.full(n_el, pid))
            att["head_layer"].append(order // n_heads)
            att["head"].append(order % n_heads)
            att["active"].append(np.arange(n_el) < len(heads))
            pid += 1
    p = pd.DataFrame(prompts, columns=["layer", "neuron", "prompt_id", "rank", "text", "token"])
    a = pd.DataFrame({k: np.concatenate(v) if v else np.zeros(0, np.int64) for k, v in att.items()})
    a["active"] = a["active"].astype(bool)
    a.attrs["rule"] = "top 3 heads of layers below the neuron's (the authors' 2023 code)"
    return p, a


def _heads_table(path: str, n_heads: int) -> pd.DataFrame:
    d = _read_json(path)["nh_to_pos_neg_prompts"]
    rows = []
    for k, (pos, neg) in d.items():
        layer, neuron, flat = _tuple(k)
        rows.append(dict(layer=layer, neuron=neuron, head_layer=flat // n_heads, head=flat % n_heads,
                         n_active=len(pos), n_inactive=len(neg)))
    return pd.DataFrame(rows, columns=["layer", "neuron", "head_layer", "head", "n_active", "n_inactive"])


def _ablation_table(path: str, test_prompts: pd.DataFrame, test_att: pd.DataFrame, n_heads: int) -> tuple:
    """The ablation pickle as :func:`ctxlookup.ablate_heads`'s table, and the recorded per-head means.

    The pickle holds, per neuron-head, the token's probability with (``ablated``) and without
    (``normal``) the head on each of the neuron's test prompts in the order the authors loaded
    them, a text that repeats once per occurrence; their attribution file lists each text once (a
    dict). A repeat is found as the prompt whose probabilities (clean, and ablated for every head
    of the neuron) equal an earlier prompt's exactly: the same text gives the same numbers; the
    other prompts are the attribution file's texts in order. A neuron where this does not give
    the file's number of texts is an error."""
    rec = load_torch_pickle(path)
    a = test_att[test_att.active]
    active = set(zip(a.prompt_id.tolist(), a.head_layer.tolist(), a["head"].tolist()))
    pids = {k: g.prompt_id.to_numpy() for k, g in test_prompts.groupby(["layer", "neuron"], sort=False)}
    by_neuron: Dict[tuple, list] = {}
    for nh, v in rec.items():
        by_neuron.setdefault((int(nh[0]), int(nh[1])), []).append((nh, v))
    rows, recorded = [], []
    for (layer, neuron), lst in by_neuron.items():
        sig = np.stack([np.asarray(lst[0][1]["normal"])] + [np.asarray(v["ablated"]) for _, v in lst], 1)
        seen: list = []
        index = []
        for s in sig:
            j = next((i for i, t in enumerate(seen) if np.array_equal(t, s)), None)
            if j is None:
                seen.append(s)
                j = len(seen) - 1
            index.append(j)
        known = pids.get((layer, neuron), np.zeros(0))
        if len(seen) != len(known):
            raise ValueError(f"{path}: neuron ({layer}, {neuron}): {len(seen)} distinct prompts in the ablation record, "
                             f"{len(known)} in the test attribution")
        prompt_of = known[np.asarray(index, np.int64)]
        for nh, v in lst:
            hl, h = int(nh[2]) // n_heads, int(nh[2]) % n_heads
            clean = np.asarray(v["normal"], np.float32)
            abl = np.asarray(v["ablated"], np.float32)
            for i, pid in enumerate(prompt_of):
                rows.append((layer, neuron, hl, h, int(pid), clean[i], abl[i], clean[i] - abl[i],
                             (int(pid), hl, h) in active))
            recorded.append((layer, neuron, hl, h, v["act_diff_relevant"], v["act_diff_irrelevant"]))
    cols = ["layer", "neuron", "head_layer", "head", "prompt_id", "p_clean", "p_ablated", "decrease", "active"]
    df = pd.DataFrame(rows, columns=cols)
    for c in ("p_clean", "p_ablated", "decrease"):
        df[c] = df[c].astype(np.float32)
    df.attrs["mode"] = "zero"
    rec_df = pd.DataFrame(recorded, columns=["layer", "neuron", "head_layer", "head", "mean_decrease_active",
                                             "mean_decrease_inactive"])
    return df, rec_df


def load(folder: str, model: str = "gpt2-small", n_heads: Optional[int] = None) -> Recorded:
    """Read the authors' recorded files for ``model`` (as their file names spell it: ``gpt2-small``,
    ``gpt2-medium``, ...) from ``folder`` (their ``experiment_data/`` + ``notebooks/`` layout) into
    ctxlookup's tables: ``neurons``, ``prompts``, ``test_prompts`` (their texts, the neuron's
    token in ``token``), ``attribution`` / ``test_attribution`` (every eligible head of every
    prompt, ``active`` = one of the recorded top 3), ``heads`` (the explained heads, in their
    order), ``explanations`` (recorded requests and answers), ``scores`` and ``predictions`` (the
    recorded Yes/No answers on each head's first 20 test prompts, scored with the 2023 rules),
    ``ablation`` (recorded probabilities) and ``ablation_by_head``.

    A table whose files are missing or unreadable is left out and named in ``problems``.
    ``n_heads``: heads per layer (default from the model name, :data:`N_HEADS`)."""
    from .score import score_explanations
    from .stats import ablation_comparison

    data = AuthorsData.find(folder, model)
    H = n_heads or N_HEADS.get(model)
    if H is None:
        raise ValueError(f"heads per layer of {model!r} unknown; pass n_heads= (known: {', '.join(N_HEADS)})")
    r = Recorded(model, data)

    def attempt(name, fn):
        try:
            out = fn()
        except (MissingFile, ValueError, KeyError, OSError) as e:
            r.problems[name] = str(e)
            return None
        return out

    neurons = attempt("neurons", lambda: _neurons_table(data.need("neurons")[0]))
    tokens = {} if neurons is None else {(a, b): t for a, b, t in zip(neurons.layer, neurons.neuron, neurons.token)}
    if neurons is not None:
        r.tables["neurons"] = neurons
    if tokens:
        for src, pname, aname in (("attribution", "prompts", "attribution"),
                                  ("test_attribution", "test_prompts", "test_attribution")):
            pa = attempt(pname, lambda src=src: _prompts_and_attribution(data.need(src)[0], tokens, H))
            if pa is not None:
                r.tables[pname], r.tables[aname] = pa
    heads = attempt("heads", lambda: _heads_table(data.need("heads")[0], H))
    if heads is not None:
        r.tables["heads"] = heads

    def explanations():
        req, res, dct = data.need("explain_requests", "explain_results", "explain_dict")
        first = read_jsonl(req)
        r.llm_model = first[0]["model"] if first else None
        client = RecordedAnswers.from_results(res)
        r.explain_client = client
        prompts_by_head = _read_json(dct)
        rows = []
        for k, prompt in prompts_by_head.items():
            layer, neuron, flat = _tuple(k)
            answer = client.answers.get(prompt)
            rows.append(dict(layer=layer, neuron=neuron, head_layer=flat // H, head=flat % H,
                             token=tokens.get((layer, neuron)), prompt=prompt, explanation=answer,
                             error=None if answer is not None else "no recorded answer"))
        df = pd.DataFrame(rows, columns=["layer", "neuron", "head_layer", "head", "token", "prompt", "explanation", "error"])
        if heads is not None:
            df = df.merge(heads, on=["layer", "neuron", "head_layer", "head"], how="left")
            df = df[["layer", "neuron", "head_layer", "head", "token", "n_active", "n_inactive", "prompt",
                     "explanation", "error"]]
        return df

    ex = attempt("explanations", explanations) if tokens else None
    if ex is not None:
        r.tables["explanations"] = ex

    def classify_client():
        return RecordedAnswers.from_results(*data.need("classify_results", "classify_results_rest"))

    r.classify_client = attempt("predictions", classify_client)
    if ex is not None and r.classify_client is not None and "test_prompts" in r.tables:
        sc, pr = score_explanations(ex, r.tables["test_prompts"], r.tables["test_attribution"], r.classify_client,
                                    version="2023", one_class="keep", parse="exact", max_test=TEST_PROMPTS_PER_HEAD,
                                    temperature=None, return_predictions=True)
        r.tables["scores"], r.tables["predictions"] = sc.assign(group="next_token"), pr
    if "test_prompts" in r.tables:
        ab = attempt("ablation", lambda: _ablation_table(data.need("ablation")[0], r.tables["test_prompts"],
                                                         r.tables["test_attribution"], H))
        if ab is not None:
            r.tables["ablation"], recorded_means = ab
            r.tables["ablation_by_head"] = ablation_comparison(ab[0])
            r.tables["ablation_by_head"].attrs["recorded_means"] = recorded_means
    return r


# --------------------------------------------------------------------------- replay
def _eval_printout(path: str) -> pd.DataFrame:
    """``notebooks/eval_results_full_*_fr.txt``: per head ``(layer, neuron, flat_head), 'token', E``."""
    rx = re.compile(r"^\((\d+), (\d+), (\d+)\), '(.*)', (\S+)$")
    rows = []
    with open(path, encoding="utf-8") as f:
        for ln in f:
            m = rx.match(ln.rstrip("\n"))
            if m:
                e = m.group(5)
                rows.append(dict(layer=int(m.group(1)), neuron=int(m.group(2)), flat=int(m.group(3)), token=m.group(4),
                                 E=np.nan if e == "None" else float(e)))
    if not rows:
        raise ValueError(f"{path}: no '(layer, neuron, head), 'token', E' lines")
    return pd.DataFrame(rows)


def _same_requests(built: List[str], recorded: List[str]) -> tuple:
    same = sum(a == b for a, b in zip(built, recorded))
    return f"{len(recorded)} requests", f"{same} of {len(built)} identical", same == len(built) == len(recorded)


def replay(folder: str, model: str = "gpt2-small", n_heads: Optional[int] = None,
           recorded: Optional[Recorded] = None) -> pd.DataFrame:
    """Rebuild the authors' recorded results for ``model`` through ctxlookup's own functions (the
    2023 rules) and compare: ``[quantity, authors, ctxlookup, match]``, one row per quantity. A
    quantity whose files are missing or unreadable gets a row naming them, with ``match`` False.
    ``recorded``: the data :func:`load` already read for this folder and model (read again if None)."""
    from .selection import select_heads
    from .explain import explain_heads
    from .score import score_explanations
    from .stats import score_statistics

    r = recorded if recorded is not None else load(folder, model, n_heads)
    data, H = r.data, n_heads or N_HEADS[model]
    rows: list = []

    def row(q, a, c, ok):
        rows.append(dict(quantity=q, authors=str(a), ctxlookup=str(c), match=bool(ok)))

    def guarded(q, fn):
        try:
            fn()
        except (MissingFile, ValueError, KeyError, OSError) as e:
            row(q, "not available", str(e), False)

    for name, why in r.problems.items():
        row(f"load {name}", "not available", why, False)

    def explained_heads():
        if "attribution" not in r.tables or "heads" not in r.tables:
            raise MissingFile("needs the train attribution and the explained-head list (see the load rows)")
        sel = select_heads(r["attribution"], low=0.25, high=None, low_strict=True, order="first_active")
        keys = ["layer", "neuron", "head_layer", "head"]
        mine = list(sel[keys].itertuples(index=False, name=None))
        theirs = list(r["heads"][keys].itertuples(index=False, name=None))
        row("explained heads: set", f"{len(theirs)} heads", f"{len(set(mine) & set(theirs))} of {len(mine)} in theirs",
            set(mine) == set(theirs))
        row("explained heads: order", "recorded order", "same order" if mine == theirs else "different order", mine == theirs)
        sel_counts = sel.merge(r["heads"], on=keys)
        ok = (sel_counts.active_fraction * sel_counts.n_prompts).round().astype(int).equals(sel_counts.n_active)
        row("explained heads: active prompts per head", "recorded lists", "same counts" if ok else "different counts", ok)

    guarded("explained heads", explained_heads)

    explanations = None

    def explain_requests():
        nonlocal explanations
        if r.explain_client is None or "heads" not in r.tables or "prompts" not in r.tables:
            raise MissingFile("needs the explanation files, the prompts and the explained heads (see the load rows)")
        client = RecordedAnswers(r.explain_client.answers)
        explanations = explain_heads(r["heads"], r["prompts"], r["attribution"], client, max_tokens=200,
                                     temperature=None, version="2023", stage="explain")
        a, c, ok = _same_requests(client.bodies(r.llm_model), _lines(data.files["explain_requests"]))
        row("explanation requests (byte for byte)", a, c, ok)
        rec = r["explanations"]
        same = (explanations.prompt.to_numpy() == rec.prompt.to_numpy()).sum() if len(rec) == len(explanations) else 0
        row("explanation prompts by head (prompts_dict)", f"{len(rec)} heads", f"{same} of {len(explanations)} identical",
            same == len(rec) == len(explanations))
        row("explanations answered from the record", f"{len(rec)}", f"{int(explanations.explanation.notna().sum())}",
            bool(explanations.explanation.notna().all()))

    guarded("explanation requests", explain_requests)

    scores = None

    def classify_requests():
        nonlocal scores
        if explanations is None or r.classify_client is None or "test_prompts" not in r.tables:
            raise MissingFile("needs the explanations, the classification files and the test prompts")
        parts = {}
        for n in (10, TEST_PROMPTS_PER_HEAD):
            client = RecordedAnswers(r.classify_client.answers)
            sc = score_explanations(explanations, r["test_prompts"], r["test_attribution"], client, version="2023",
                                    one_class="keep", parse="exact", max_test=n, temperature=None)
            parts[n] = (client.bodies(r.llm_model), sc)
        first, every = parts[10][0], parts[TEST_PROMPTS_PER_HEAD][0]
        a, c, ok = _same_requests(first, _lines(data.files["classify_requests"]))
        row("classification requests, first 10 test prompts per head (byte for byte)", a, c, ok)
        seen = set(first)
        a, c, ok = _same_requests([b for b in every if b not in seen], _lines(data.need("classify_requests_rest")[0]))
        row("classification requests, test prompts 11-20 per head (byte for byte)", a, c, ok)
        if data.files.get("classify_requests_all"):
            a, c, ok = _same_requests(every, _lines(data.files["classify_requests_all"]))
            row("classification requests, all 20 per head (byte for byte)", a, c, ok)
        scores = parts[TEST_PROMPTS_PER_HEAD][1]
        answered = len(every) - sum(ans is None for ans in (client.answers.get(json.loads(b)["messages"][-1]["content"])
                                                            for b in every))
        row("classification requests answered in the record", f"{len(every)}", f"{answered}", answered == len(every))

    guarded("classification requests", classify_requests)

    def per_head_e():
        if scores is None:
            raise MissingFile("needs the rebuilt scores (see the rows above)")
        (path,) = data.need("eval_printout")
        pr = _eval_printout(path)
        mine = scores.assign(flat=scores.head_layer * H + scores["head"])
        m = pr.merge(mine[["layer", "neuron", "flat", "token", "E"]], on=["layer", "neuron", "flat"], how="left",
                     suffixes=("_authors", "_ctxlookup"))
        same = ((m.E_authors == m.E_ctxlookup) | (m.E_authors.isna() & m.E_ctxlookup.isna())) & (m.token_authors == m.token_ctxlookup)
        row(f"E per head ({os.path.basename(path)})", f"{len(pr)} heads", f"{int(same.sum())} of {len(mine)} equal",
            bool(same.all()) and len(pr) == len(mine))
        order = mine.sort_values("E", ascending=False, kind="stable")[["layer", "neuron", "flat"]]
        ok = order.to_numpy().tolist() == pr[["layer", "neuron", "flat"]].to_numpy().tolist()
        row("heads ranked by E (printout order)", "printout order", "same order" if ok else "different order", ok)

    guarded("E per head", per_head_e)

    def summary():
        if scores is None:
            raise MissingFile("needs the rebuilt scores (see the rows above)")
        st = score_statistics(scores.E, label=model, ddof=0).iloc[0]
        known = NOTEBOOK_SUMMARY.get(model)
        if known is None:
            row("mean / std (ddof 0) of E", "no recorded value", f"{st['mean']:.3f} / {st['std']:.3f}", False)
            return
        n, mean, std = known
        row("heads scored", n, int(st.n_heads), int(st.n_heads) == n)
        row("mean E (3 decimals, as the authors' notebook)", f"{mean:.3f}", f"{st['mean']:.3f}", round(st["mean"], 3) == mean)
        row("std E, ddof 0 (3 decimals)", f"{std:.3f}", f"{st['std']:.3f}", round(st["std"], 3) == std)

    guarded("summary statistics", summary)

    def ablation():
        if "ablation_by_head" not in r.tables:
            raise MissingFile("needs the ablation pickle and the test attribution (see the load rows)")
        comp = r["ablation_by_head"]
        rec = comp.attrs["recorded_means"]
        keys = ["layer", "neuron", "head_layer", "head"]
        m = rec.merge(comp, on=keys, suffixes=("_authors", "_ctxlookup"))
        n_same = 0
        for c in ("mean_decrease_active", "mean_decrease_inactive"):
            a, b = m[c + "_authors"].to_numpy(np.float64), m[c + "_ctxlookup"].to_numpy(np.float64)
            n_same += int(((a == b) | (np.isnan(a) & np.isnan(b))).sum())
        row("ablation: per-head mean decrease, active and inactive", f"{2 * len(rec)} recorded means",
            f"{n_same} of {2 * len(comp)} equal", n_same == 2 * len(rec) == 2 * len(comp))
        ks = comp.attrs["ks"]
        paper = PAPER_ABLATION_KS.get(model)
        if paper is None:
            from scipy import stats

            k = stats.ks_2samp(rec.mean_decrease_active.dropna(), rec.mean_decrease_inactive.dropna())
            row("ablation KS D (from the recorded means)", f"{k.statistic:.6f}", f"{ks['D']:.6f}", k.statistic == ks["D"])
            row("ablation KS p (from the recorded means)", f"{k.pvalue:.5g}", f"{ks['p']:.5g}", k.pvalue == ks["p"])
            return
        D, p = paper
        row("ablation KS D (paper §5.4, 6 decimals)", f"{D:.6f}", f"{ks['D']:.6f}", round(ks["D"], 6) == D)
        row("ablation KS p (paper §5.4, 5 significant digits)", f"{p:.4e}", f"{ks['p']:.4e}", f"{ks['p']:.4e}" == f"{p:.4e}")

    guarded("ablation", ablation)
    return pd.DataFrame(rows, columns=["quantity", "authors", "ctxlookup", "match"])


# --------------------------------------------------------------------------- command line
def _models_in(folder: str) -> List[str]:
    d = os.path.join(folder, "experiment_data", "1_next_token_neurons")
    if not os.path.isdir(d):
        return []
    rx = re.compile("^" + _STAMP + r"(.+)\.json$")
    return sorted({m.group(1) for m in map(rx.match, os.listdir(d)) if m})


def _run_replay(args) -> int:
    models = _models_in(args.dir) if args.model == "all" else [args.model]
    if not models:
        print(f"ctxlookup authors replay: no models in {args.dir} (expected experiment_data/1_next_token_neurons/"
              f"<time stamp>_<model>.json)")
        return 2
    ok = True
    with pd.option_context("display.max_colwidth", 80, "display.width", 200):
        for m in models:
            try:
                t = replay(args.dir, m)
            except (FileNotFoundError, ValueError) as e:
                print(f"{m}: {e}")
                ok = False
                continue
            print(f"== {m}")
            print(t.to_string(index=False))
            missing = AuthorsData.find(args.dir, m).missing()
            if missing:
                print("missing files: " + ", ".join(missing))
            ok &= bool(t["match"].all()) and len(t) > 0
    print("all quantities match" if ok else "some quantities do not match (see above)")
    return 0 if ok else 1


def _run_import(args) -> int:
    r = load(args.dir, args.model)
    os.makedirs(args.out, exist_ok=True)
    written = []
    for name in TABLES:
        if name in r.tables:
            df = r.tables[name].copy()
            df.attrs = {}
            df.to_parquet(os.path.join(args.out, f"{name}.parquet"), index=False)
            written.append(name)
    print(f"wrote {', '.join(written)} to {args.out}")
    for name, why in r.problems.items():
        print(f"not imported: {name}: {why}")
    return 0 if not r.problems else 1


def add_cli(subparsers) -> None:
    """``ctxlookup authors replay DIR [--model M|all]`` and ``ctxlookup authors import DIR --model M --out RUN_DIR``."""
    p = subparsers.add_parser("authors", help="import or replay the paper's authors' recorded experiment data",
                              description="The paper's authors' recorded data (their experiment_data/ and notebooks/ "
                                          "layout): replay it through ctxlookup's own code, or import it as tables.")
    sub = p.add_subparsers(dest="authors_command", required=True)
    rp = sub.add_parser("replay", help="rebuild their requests, scores, head selection and statistics and compare")
    rp.add_argument("dir", metavar="DIR", help="folder with experiment_data/ and notebooks/")
    rp.add_argument("--model", default="all", help="model as in their file names (gpt2-small, gpt2-medium, ...) or all "
                                                   "(default)")
    rp.set_defaults(func=_run_replay)
    ip = sub.add_parser("import", help="write their recorded results as ctxlookup's tables (Parquet)")
    ip.add_argument("dir", metavar="DIR", help="folder with experiment_data/ and notebooks/")
    ip.add_argument("--model", required=True, help="model as in their file names (gpt2-small, ...)")
    ip.add_argument("--out", required=True, metavar="RUN_DIR", help="folder for the tables")
    ip.set_defaults(func=_run_import)
