"""ctxlookup.tokenizer against Hugging Face `tokenizers` (the oracle) with the same files.

GPT-2: vocab.json + merges.txt, HF side = models.BPE.from_file + ByteLevel pre-tokenizer
(add_prefix_space=False, use_regex=True) + ByteLevel decoder + "<|endoftext|>" special, with the
hub gpt2 tokenizer.json's post-processor (ByteLevel, trim_offsets=False).
GPT-NeoX-20B / Pythia: tokenizers.Tokenizer.from_file(tokenizer.json).
"""
import glob
import gzip
import json
import os
import random
import shutil
import subprocess
import sys
import unicodedata

import numpy as np
import pytest

tokenizers = pytest.importorskip("tokenizers")
from tokenizers import AddedToken, decoders, models, normalizers, pre_tokenizers, processors  # noqa: E402

from ctxlookup import _core  # noqa: E402
from ctxlookup.tokenizer import FormatError, Tokenizer  # noqa: E402
from conftest import SANITIZE  # noqa: E402

from conftest import SHARED  # noqa: E402

DATA = os.environ.get("CTXLOOKUP_SHARED_DATA") or str(SHARED / "data")
GPT2_DIR = os.path.join(DATA, "tokenizers", "gpt2")
NEOX_DIR = os.path.join(DATA, "tokenizers", "gpt-neox-20b")
CORPUS = [os.path.join(DATA, "corpus", f) for f in ("pile-style-10k.jsonl.gz", "heldout-10k.jsonl.gz")]

pytestmark = pytest.mark.skipif(not (os.path.isdir(GPT2_DIR) and os.path.isdir(NEOX_DIR)),
                                reason=f"tokenizer files not found under {DATA}")


def hf_gpt2(trim_offsets=False):
    m = models.BPE.from_file(os.path.join(GPT2_DIR, "vocab.json"), os.path.join(GPT2_DIR, "merges.txt"))
    t = tokenizers.Tokenizer(m)
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    t.decoder = decoders.ByteLevel()
    t.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=trim_offsets)
    t.add_special_tokens([AddedToken("<|endoftext|>", special=True)])
    return t


@pytest.fixture(scope="module")
def pairs():
    return {
        "gpt2": (hf_gpt2(), Tokenizer.load(GPT2_DIR)),
        "neox": (tokenizers.Tokenizer.from_file(os.path.join(NEOX_DIR, "tokenizer.json")), Tokenizer.load(NEOX_DIR)),
    }


def hf_encode(hf, text, allow_special=True):
    hf.encode_special_tokens = not allow_special
    try:
        return hf.encode(text)
    finally:
        hf.encode_special_tokens = False


def check_same(hf, ours, text, allow_special=True, trim=None):
    """ids, offsets and decoded text identical to HF; returns our ids."""
    e = hf_encode(hf, text, allow_special)
    ids = ours.encode(text, allow_special=allow_special)
    assert ids.dtype == np.int32
    assert ids.tolist() == e.ids, f"ids differ for {text[:80]!r}"
    ids2, offs = ours.encode_with_offsets(text, allow_special=allow_special, trim_offsets=trim)
    assert ids2.tolist() == e.ids
    assert offs.shape == (len(e.ids), 2) and offs.dtype == np.int64
    assert [tuple(o) for o in offs.tolist()] == e.offsets, f"offsets differ for {text[:80]!r}"
    assert ours.decode(ids) == hf.decode(e.ids, skip_special_tokens=False), f"decode differs for {text[:80]!r}"
    return ids


# ---------------------------------------------------------------------------------------------
# loading, special ids


def test_special_ids_gpt2(pairs):
    _, t = pairs["gpt2"]
    assert (t.bos_token_id, t.eos_token_id, t.pad_token_id) == (50256, 50256, 50256)
    assert t.vocab_size == 50257 == len(t)
    assert t.special_token_ids == [50256]
    assert t.trim_offsets is False


def test_special_ids_neox(pairs):
    hf, t = pairs["neox"]
    assert (t.bos_token_id, t.eos_token_id, t.pad_token_id) == (0, 0, 1)
    assert t.vocab_size == hf.get_vocab_size() == 50277
    assert t.special_token_ids == [0, 1]
    assert t.trim_offsets is True and t.normalizer == "NFC"


def test_load_file_paths():
    a = Tokenizer.load(os.path.join(GPT2_DIR, "vocab.json"))
    b = Tokenizer.load(os.path.join(GPT2_DIR, "merges.txt"))
    c = Tokenizer.load(os.path.join(NEOX_DIR, "tokenizer.json"))
    assert a.encode("hello world").tolist() == b.encode("hello world").tolist() == [31373, 995]
    assert c.encode("hello world").tolist() == [25521, 1533]


def test_gpt2_as_tokenizer_json(tmp_path):
    """GPT-2 saved by HF as a tokenizer.json (merges as pairs) loads and matches HF."""
    hf = hf_gpt2()
    hf.save(str(tmp_path / "tokenizer.json"))
    d = json.loads((tmp_path / "tokenizer.json").read_text())
    assert isinstance(d["model"]["merges"][0], list)
    ours = Tokenizer.load(tmp_path)
    assert (ours.bos_token_id, ours.eos_token_id, ours.pad_token_id, ours.vocab_size) == (50256, 50256, 50256, 50257)
    for s in HARD[:12] + ["a<|endoftext|>b"]:
        check_same(hf, ours, s)


def test_special_ids_from_config_files(tmp_path):
    shutil.copy(os.path.join(NEOX_DIR, "tokenizer.json"), tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<|padding|>"}))
    (tmp_path / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": "<|endoftext|>", "eos_token": {"content": "<|padding|>", "lstrip": False}}))
    (tmp_path / "config.json").write_text(json.dumps({"bos_token_id": 7, "eos_token_id": 7, "pad_token_id": 9}))
    t = Tokenizer.load(tmp_path)
    # tokenizer_config.json > special_tokens_map.json > config.json
    assert (t.bos_token_id, t.eos_token_id, t.pad_token_id) == (1, 1, 9)


def test_special_ids_config_json_only(tmp_path):
    for f in ("vocab.json", "merges.txt"):
        shutil.copy(os.path.join(GPT2_DIR, f), tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"bos_token_id": 50256, "eos_token_id": [50256, 13],
                                                      "pad_token_id": None}))
    t = Tokenizer.load(tmp_path)
    assert (t.bos_token_id, t.eos_token_id, t.pad_token_id) == (50256, 50256, 50256)


def test_vocab_lookups(pairs):
    _, g = pairs["gpt2"]
    assert g.token_to_id("Ġthe") == 262 and g.id_to_token(262) == "Ġthe"
    assert g.token_to_id("<|endoftext|>") == 50256 and g.id_to_token(50256) == "<|endoftext|>"
    assert g.token_to_id("no such token") is None
    with pytest.raises(ValueError):
        g.id_to_token(50257)
    hf, n = pairs["neox"]
    for i in (0, 1, 2, 500, 50253, 50254, 50276):
        assert n.id_to_token(i) == hf.id_to_token(i)
        assert n.token_to_id(hf.id_to_token(i)) == i


# ---------------------------------------------------------------------------------------------
# the corpus: every document of both files, both tokenizers


@pytest.fixture(scope="module")
def corpus():
    docs = []
    for path in CORPUS:
        if not os.path.exists(path):
            pytest.skip(f"corpus {path} not found")
        with gzip.open(path, "rt", encoding="utf-8") as f:
            docs += [json.loads(line)["text"] for line in f]
    assert len(docs) == 20000
    return docs[::20] if SANITIZE else docs


@pytest.mark.parametrize("name", ["gpt2", "neox"])
def test_corpus_identical_to_hf(pairs, corpus, name):
    hf, ours = pairs[name]
    hf.encode_special_tokens = False
    ref = hf.encode_batch(corpus)
    got = ours.encode_batch(corpus)
    bad = [i for i, (r, g) in enumerate(zip(ref, got)) if r.ids != g.tolist()]
    assert not bad, f"{len(bad)} documents differ, first {bad[:5]}"
    bad_off = []
    for i, (doc, r) in enumerate(zip(corpus, ref)):
        _, offs = ours.encode_with_offsets(doc)
        if not np.array_equal(offs, np.asarray(r.offsets, dtype=np.int64).reshape(-1, 2)):
            bad_off.append(i)
    assert not bad_off, f"offsets differ in {len(bad_off)} documents, first {bad_off[:5]}"
    decoded = hf.decode_batch([r.ids for r in ref], skip_special_tokens=False)
    bad_dec = [i for i in range(len(corpus)) if ours.decode(got[i]) != decoded[i] or decoded[i] != corpus[i]]
    assert not bad_dec, f"decode differs (or does not round-trip) in {len(bad_dec)} documents, first {bad_dec[:5]}"


def test_corpus_trimmed_offsets_gpt2(corpus):
    """trim_offsets=True matches HF's ByteLevel post-processor with trimming."""
    hf = hf_gpt2(trim_offsets=True)
    ours = Tokenizer.load(GPT2_DIR)
    docs = corpus[:2000]
    ref = hf.encode_batch(docs)
    for doc, r in zip(docs, ref):
        _, offs = ours.encode_with_offsets(doc, trim_offsets=True)
        assert [tuple(o) for o in offs.tolist()] == r.offsets


def test_batch_equals_single_and_threads(pairs, corpus):
    _, ours = pairs["neox"]
    docs = corpus[:3000] + ["", "<|endoftext|>", "a" * 5000]
    one = [ours.encode(d) for d in docs]
    for nt in (1, 2, 3):
        got = ours.encode_batch(docs, num_threads=nt)
        assert all(np.array_equal(a, b) for a, b in zip(one, got))
    assert ours.encode_batch([]) == []
    with pytest.raises(TypeError):
        ours.encode_batch("not a list")
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        ours.encode_batch(["ok", 3])


# ---------------------------------------------------------------------------------------------
# hard strings


def _category_samples():
    """Some characters of every Unicode general category (Python's unicodedata), seeded."""
    rng = random.Random(1234)
    by_cat = {}
    for cp in range(0x110000):
        if 0xD800 <= cp < 0xE000:
            continue
        by_cat.setdefault(unicodedata.category(chr(cp)), []).append(cp)
    out = []
    for cat in sorted(by_cat):
        cps = by_cat[cat]
        pick = cps[:4] + rng.sample(cps, min(24, len(cps)))
        chars = "".join(chr(c) for c in pick)
        out.append(f"{cat}: x{chars} {chars}1{chars}!{chars}\n{chars} x")
    assert len(out) >= 29  # every category but Cs (surrogates cannot be encoded)
    return out


HARD = [
    "",
    " ",
    "Hello, world!",
    # emoji: ZWJ sequences, skin tones, flags, keycaps, variation selectors
    "👨‍👩‍👧‍👦 family, 👩🏽‍💻 coder, 🏳️‍🌈 flag, 👍🏻👍🏼👍🏽👍🏾👍🏿 tones, 🇺🇸🇫🇷🇯🇵, 1️⃣ #️⃣, ❤️ ☺︎",
    "🧑‍🤝‍🧑🫶🏾🫠" * 3,
    # CJK and other scripts
    "日本語のテキスト、中文文本。한국어 텍스트 ｶﾀｶﾅ 𠀀𠀁𪜀 〆 ー",
    "Ελληνικά Кириллица Հայերեն ქართული देवनागरी বাংলা தமிழ் ไทย ລາວ ᠮᠣᠩᠭᠣᠯ ꦗꦮ",
    # combining marks, precomposed and decomposed, Hangul jamo, singletons, Tibetan, zalgo
    "e\u0301 a\u0300\u0316\u0301 q\u0301\u0316 \u00e9\u0323 Tie\u0302\u0301ng Vie\u0323\u0302t",
    "\u1100\u1161\u11a8 \u1100\u1161 \uac00\u11a8 \u212b\u2126\u0344 \u0f73\u0f75 \u1e9b\u0323",
    "Z̤͔ͧ̑̓ä͖̭̈̇lͮ̒ͫǧ̗͖̓o̷ t̸̢̛͓̙̱͎̲̅̊͋͑e̶̡͍̟̣̓͂x̷̧̖͉̀͝t̶͖̘̓",
    "\u0301\u0301 leading marks, \u0345\u0313 \u05b0\u05bc\u05b0 \u0e38\u0e39 \u093c\u0915\u093c",
    "ḁ̵̀ ǻ\u0328 Ą\u030a \u0958 \u09cb \u0b4b \u0bca \u0cc0 \u1026 \u1b06 \U0001109a \U0001d15e",
    # right-to-left, bidi controls
    "مرحبا بالعالم، هذا نص عربي ١٢٣٤",
    "שָׁלוֹם עוֹלָם \u200f\u200e\u202b abc \u202c מילה",
    "abc مرحبا 123 שלום def",
    # line endings and whitespace
    "line1\r\nline2\r\n\r\nline3\rline4\n",
    "\n\n\n\nx\n \n \n",
    "\t\t\tindented\n\t x \t\n",
    " \t \n x  \u00a0\u00a0 y\u3000\u3000z\u2028\u2029\u0085\u000b\u000c end",
    # runs of spaces: NeoX's 2..24-space tokens
    "x" + " " * 30 + "y" + " " * 24 + "z" + " " * 25 + "w" + " " * 2 + "v" + " " * 3,
    "    def f(x):\n        return x  # comment\n\n\n    pass",
    " " * 100,
    " " * 49 + "\t" + " " * 3 + "\n" + " " * 7,
    # numbers
    "1234567890" * 10 + " 3.14159 1,000,000 -42 +7e10 0x1F 007",
    "٣٤٥ ۱۲۳ ①②③ Ⅻ ½ ¾ ²³ 𝟘𝟙𝟚 १२३",
    # contractions, upper case too
    "'s 't 're 've 'm 'll 'd 'S 'T 'RE 'VE 'M 'LL 'D",
    "I'm you're they've he'd we'll it's don't can't WON'T I'M THEY'RE",
    "''s ''' 'x 'Re 'vE  's rock'n'roll O'Neil's y'all'd've",
    # special tokens
    "Hello<|endoftext|>World",
    "<|endoftext|><|endoftext|> <|endoftext|>",
    "<|endoftext| <|endoftext <|padding|> <|endoftext|>x<|padding|>",
    "a <|endoftext|> b\n<|endoftext|>\n",
    # NUL and control bytes
    "a\x00b\x00\x00 \x00",
    "\x01\x02\x1b[31mred\x1b[0m\x7f",
    # misc
    "https://example.com/path?q=1&r=2#frag user@example.org",
    "naïve café résumé Ångström Œuvre ß ẞ ﬁ ﬀ",
    "\ufeffBOM \ufffd replacement \U0010ffff \U000e0001 \ue000 private",
]


@pytest.mark.parametrize("name", ["gpt2", "neox"])
@pytest.mark.parametrize("allow_special", [True, False])
def test_hard_strings(pairs, name, allow_special):
    hf, ours = pairs[name]
    for s in HARD + _category_samples():
        ids = check_same(hf, ours, s, allow_special)
        expected = hf.normalizer.normalize_str(s) if name == "neox" else s
        assert ours.decode(ids) == expected, f"round trip fails for {s[:60]!r}"


@pytest.mark.parametrize("name", ["gpt2", "neox"])
def test_round_trip_valid_text(pairs, name):
    _, ours = pairs[name]
    for s in HARD + _category_samples():
        if name == "gpt2" or hf_nfc(s) == s:
            assert ours.decode(ours.encode(s)) == s


def hf_nfc(s):
    return normalizers.NFC().normalize_str(s)


def test_special_tokens_as_text(pairs):
    _, g = pairs["gpt2"]
    assert g.encode("a<|endoftext|>b").tolist() == [64, 50256, 65]
    plain = g.encode("a<|endoftext|>b", allow_special=False).tolist()
    assert 50256 not in plain and g.decode(plain) == "a<|endoftext|>b"
    assert g.decode([64, 50256, 65], skip_special_tokens=True) == "ab"


def test_long_single_line(pairs):
    rng = random.Random(0)
    words = ["the", "tokenizer", "ünïcödé", "日本", "12345", "it's", "😀", "  ", "<|endoftext|>", "x" * 40]
    line = " ".join(rng.choice(words) for _ in range(150000))[: 1 << 20]
    line = line.encode("utf-8")[: 1 << 20].decode("utf-8", "ignore")
    assert len(line.encode()) > 1_000_000 - 8 and "\n" not in line
    for name in ("gpt2", "neox"):
        hf, ours = pairs[name]
        check_same(hf, ours, line)
        assert ours.decode(ours.encode(line)) == line


def test_long_words(pairs):
    """Single pre-tokens long enough for the heap-based BPE path (and one 200 KB word)."""
    rng = random.Random(5)
    alphabet = "abcdefghijklmnopqrstuvwxyzéàü"
    for name in ("gpt2", "neox"):
        hf, ours = pairs[name]
        for n in (127, 128, 129, 300, 5000):
            check_same(hf, ours, "".join(rng.choice(alphabet) for _ in range(n)))
        check_same(hf, ours, "a" * 200_000)
        check_same(hf, ours, "!" * 3000 + "9" * 3000)


def test_invalid_utf8(pairs):
    bad = [b"abc\xff\xfe", b"\xc3\x28", b"\xe2\x82", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc0\xaf",
           b"ok \xf0\x9f\x98", b"\x80"]
    for name in ("gpt2", "neox"):
        hf, ours = pairs[name]
        for b in bad:
            with pytest.raises(UnicodeDecodeError) as ei:
                ours.encode(b)
            with pytest.raises(UnicodeDecodeError) as py:
                b.decode("utf-8")
            assert ei.value.start == py.value.start
            with pytest.raises(UnicodeDecodeError):
                ours.encode_batch([b"fine", b])
            # errors="replace": what HF gives for the U+FFFD-decoded text
            ids = ours.encode(b, errors="replace")
            assert ids.tolist() == hf.encode(b.decode("utf-8", "replace")).ids
        # valid UTF-8 bytes behave as the str
        s = "héllo wörld 😀<|endoftext|>"
        assert ours.encode(s.encode()).tolist() == ours.encode(s).tolist()
        assert ours.encode(bytearray(s.encode())).tolist() == ours.encode(s).tolist()


def test_invalid_utf8_first_bad_byte(pairs):
    _, ours = pairs["gpt2"]
    with pytest.raises(UnicodeDecodeError) as ei:
        ours.encode(b"abc\xffdef")
    assert ei.value.start == 3


def test_lone_surrogate(pairs):
    hf, ours = pairs["gpt2"]
    with pytest.raises(UnicodeEncodeError):
        ours.encode("a\ud800b")
    with pytest.raises(Exception):
        hf.encode("a\ud800b")


def test_decode_lossy_like_hf(pairs):
    """Sequences of random tokens (many are partial UTF-8) decode as HF (from_utf8_lossy)."""
    rng = random.Random(7)
    for name in ("gpt2", "neox"):
        hf, ours = pairs[name]
        for _ in range(3000):
            ids = [rng.randrange(ours.vocab_size) for _ in range(rng.randint(1, 6))]
            assert ours.decode(ids) == hf.decode(ids, skip_special_tokens=False), ids
            assert ours.decode(ids, skip_special_tokens=True) == hf.decode(ids, skip_special_tokens=True), ids
        every = list(range(ours.vocab_size))
        assert ours.to_str_tokens(every) == [hf.decode([i], skip_special_tokens=False) for i in every]


def test_to_str_tokens(pairs):
    _, g = pairs["gpt2"]
    assert g.to_str_tokens("Hello world<|endoftext|>😀") == ["Hello", " world", "<|endoftext|>", "\ufffd", "\ufffd"]
    ids = g.encode("a b c")
    assert g.to_str_tokens(ids) == ["a", " b", " c"]
    assert g.to_str_tokens(ids.tolist()) == ["a", " b", " c"]
    assert g.to_str_tokens(np.stack([ids, ids])) == [["a", " b", " c"]] * 2
    assert g.decode(np.array([], dtype=np.int64)) == ""
    assert g.decode(262) == " the"
    with pytest.raises(ValueError, match="out of range"):
        g.decode([1, 50257])
    with pytest.raises(ValueError, match="out of range"):
        g.decode([-1])
    with pytest.raises(TypeError):
        g.decode([1.5])


def test_nul_bytes_and_empty(pairs):
    for name in ("gpt2", "neox"):
        hf, ours = pairs[name]
        assert ours.encode("").tolist() == [] and ours.encode("").dtype == np.int32
        ids, offs = ours.encode_with_offsets("")
        assert ids.shape == (0,) and offs.shape == (0, 2)
        check_same(hf, ours, "\x00" * 7)
        assert ours.decode(ours.encode("x\x00y")) == "x\x00y"


# ---------------------------------------------------------------------------------------------
# Unicode tables against HF, code point by code point


def _codepoints_to_check():
    """Every BMP code point, every assigned one above it, and a stride through the rest."""
    try:
        import unicodedata2 as ud
    except ImportError:
        ud = unicodedata
    out = []
    for cp in range(0x110000):
        if 0xD800 <= cp < 0xE000:
            continue
        if cp < 0x10000 or cp % 61 == 0 or (cp < 0xF0000 and ud.category(chr(cp)) != "Cn"):
            out.append(cp)
    return out


def test_pretokenizer_classes_match_hf():
    """\\p{L}, \\p{N}, \\s of our tables = HF's Oniguruma for each code point (Unicode 16.0)."""
    pt = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    cps = _codepoints_to_check()
    for k in range(0, len(cps), 20000):
        s = "".join("a" + chr(c) + "1" + chr(c) + "!" + chr(c) + "\n" for c in cps[k:k + 20000])
        ref = [o for _, o in pt.pre_tokenize_str(s)]
        got, p = [], 0
        for piece in _core._tokenizer_pretokenize(s):
            got.append((p, p + len(piece)))
            p += len(piece)
        if ref != got:
            i = next(i for i in range(min(len(ref), len(got))) if ref[i] != got[i])
            ctx = s[ref[i][0] - 4:ref[i][1] + 4]
            pytest.fail(f"pre-tokenizer differs from HF near {ctx!r} ({[hex(ord(c)) for c in ctx]})")


def test_nfc_matches_hf():
    """NFC (HF uses Unicode 9.0 normalization data): every code point alone, every canonical
    decomposition recomposed, and every combining mark reordered/composed."""
    try:
        import unicodedata2 as ud
    except ImportError:
        ud = unicodedata
    n = normalizers.NFC()
    cps = [c for c in range(0x110000) if not 0xD800 <= c < 0xE000]
    s = "\n".join(chr(c) for c in cps)
    assert _core._tokenizer_nfc(s) == n.normalize_str(s)
    dec = [c for c in cps if ud.decomposition(chr(c)) and not ud.decomposition(chr(c)).startswith("<")]
    s = "\n".join(ud.normalize("NFD", chr(c)) for c in dec)
    assert _core._tokenizer_nfc(s) == n.normalize_str(s)
    marks = [chr(c) for c in cps if ud.combining(chr(c))]
    s = "\n".join(f"a{m}\u0334\na\u0301{m}\nq{m}\u0316\u0301\n{m}e\u0301{m}\n\u1e9b{m}\u0323" for m in marks)
    assert _core._tokenizer_nfc(s) == n.normalize_str(s)


def test_unicode_tables_up_to_date():
    """csrc/cl_unicode_tables.h is what tools/gen_unicode_tables.py generates (needs
    unicodedata2==16.0.0 and Perl's Unicode::UCD; the code-point tests above do not)."""
    try:
        import unicodedata2
    except ImportError:
        pytest.skip("unicodedata2 not installed (pip install unicodedata2==16.0.0)")
    if unicodedata2.unidata_version != "16.0.0" or shutil.which("perl") is None:
        pytest.skip("needs unicodedata2 16.0.0 and perl")
    root = os.path.join(os.path.dirname(__file__), "..")
    r = subprocess.run([sys.executable, os.path.join(root, "tools", "gen_unicode_tables.py"), "--check"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_nfc_offsets_fuzz(pairs):
    """Random runs of bases and combining marks through NeoX: ids and HF's NFC alignments."""
    hf, ours = pairs["neox"]
    pool = ([chr(c) for c in range(0x300, 0x370)] + list("aeiouAEOqxsnc ") +
            ["\u1100", "\u1161", "\u11a8", "\uac00", "\u212b", "\u2126", "\u0344", "\u0f73", "\u0f71", "\u0f72",
             "\u0f80", "\u1e9b", "\u00e9", "\u00c5", "\u0b47", "\u0b3e", "\u0b57", "\u09c7", "\u09be", "\u05b0",
             "\u05bc", "\u0340", "\u0341", "\u0343", "\u1f00", "\u03b1", "\u0345", "\u0958", "\u093c", "\u0915",
             "😀", "  ", "<|endoftext|>"])
    rng = random.Random(3)
    for _ in range(3000):
        s = "".join(rng.choice(pool) for _ in range(rng.randint(1, 12)))
        check_same(hf, ours, s)
    # long runs of combining marks (the stable sort of a run) and many short segments
    marks = [chr(c) for c in range(0x300, 0x370)] + ["\u05b0", "\u05bc", "\u093c", "\u0f72", "\u0f80", "\u0345"]
    for n in (33, 1000, 50000):
        check_same(hf, ours, "a" + "".join(rng.choice(marks) for _ in range(n)) + " x")
    check_same(hf, ours, "e\u0301 " * 20000)


# ---------------------------------------------------------------------------------------------
# malformed files: the message names the file and the line or field


def _byte_vocab():
    """A minimal byte-level vocabulary: the 256 byte symbols plus two merges."""
    from tokenizers.pre_tokenizers import ByteLevel
    alphabet = sorted(ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(alphabet)}
    vocab["Ġt"] = 256
    vocab["he"] = 257
    return vocab, ["Ġ t", "h e"]


def _write_gpt2(tmp_path, vocab_text=None, merges_text=None):
    vocab, merges = _byte_vocab()
    (tmp_path / "vocab.json").write_text(vocab_text if vocab_text is not None else json.dumps(vocab))
    (tmp_path / "merges.txt").write_text(merges_text if merges_text is not None
                                         else "#version: 0.2\n" + "\n".join(merges) + "\n")
    return tmp_path


def _tokenizer_json(**changes):
    vocab, merges = _byte_vocab()
    d = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": 258, "content": "<|endoftext|>", "special": True, "single_word": False,
                          "lstrip": False, "rstrip": False, "normalized": False}],
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "vocab": vocab, "merges": merges},
    }
    for k, v in changes.items():
        if "." in k:
            a, b = k.split(".")
            d[a][b] = v
        else:
            d[k] = v
    return d


def _write_tj(tmp_path, d):
    p = tmp_path / "tokenizer.json"
    p.write_text(json.dumps(d, indent=1) if not isinstance(d, str) else d)
    return p


def test_synthetic_files_are_valid_and_match_hf(tmp_path):
    p = _write_tj(tmp_path, _tokenizer_json())
    ours, hf = Tokenizer.load(p), tokenizers.Tokenizer.from_file(str(p))
    for s in ("the the<|endoftext|>he", "héllo"):
        assert ours.encode(s).tolist() == hf.encode(s).ids
    gdir = tmp_path / "g"
    gdir.mkdir()
    g = Tokenizer.load(_write_gpt2(gdir))
    assert g.encode(" the").tolist() == [256, 257]


def test_bad_vocab_json(tmp_path):
    _write_gpt2(tmp_path, vocab_text='{"a": 0,\n "b": 1,\n "c": }\n')
    with pytest.raises(FormatError, match=r"vocab\.json:3:\d+: invalid JSON"):
        Tokenizer.load(tmp_path)


def test_vocab_json_duplicate_id(tmp_path):
    vocab, _ = _byte_vocab()
    vocab["he"] = 5
    _write_gpt2(tmp_path, vocab_text=json.dumps(vocab))
    with pytest.raises(FormatError, match=r"vocab\.json: .*duplicate id 5.*\"he\""):
        Tokenizer.load(tmp_path)


def test_vocab_json_bad_id(tmp_path):
    vocab, _ = _byte_vocab()
    vocab["he"] = "x"
    _write_gpt2(tmp_path, vocab_text=json.dumps(vocab))
    with pytest.raises(FormatError, match=r"vocab\.json: .*\[\"he\"\]: the id must be an integer"):
        Tokenizer.load(tmp_path)


def test_vocab_json_invalid_utf8(tmp_path):
    _write_gpt2(tmp_path)
    (tmp_path / "vocab.json").write_bytes(b'{"a": 0,\n "\xff": 1}')
    with pytest.raises(FormatError, match=r"vocab\.json:2:3: invalid UTF-8"):
        Tokenizer.load(tmp_path)


def test_long_bad_token_message_is_clipped(tmp_path):
    _write_gpt2(tmp_path, merges_text="#version: 0.2\n" + "é" * 300 + " e\n")
    with pytest.raises(FormatError, match=r"merges\.txt:2: merge") as ei:
        Tokenizer.load(tmp_path)
    assert len(str(ei.value)) < 400


def test_merges_unknown_token(tmp_path):
    _write_gpt2(tmp_path, merges_text="#version: 0.2\nĠ t\nzz e\n")
    with pytest.raises(FormatError, match=r"merges\.txt:3: merge \"zz e\": token \"zz\" is not in the vocabulary"):
        Tokenizer.load(tmp_path)


def test_merges_merged_token_missing(tmp_path):
    _write_gpt2(tmp_path, merges_text="#version: 0.2\na b\n")
    with pytest.raises(FormatError, match=r"merges\.txt:2: .*merged token \"ab\""):
        Tokenizer.load(tmp_path)


def test_merges_bad_line(tmp_path):
    _write_gpt2(tmp_path, merges_text="#version: 0.2\nĠ t\nh e x\n")
    with pytest.raises(FormatError, match=r"merges\.txt:3: expected two tokens"):
        Tokenizer.load(tmp_path)


def test_tokenizer_json_bad_json(tmp_path):
    p = _write_tj(tmp_path, json.dumps(_tokenizer_json(), indent=1)[:-40] + ",,}")
    with pytest.raises(FormatError, match=r"tokenizer\.json:\d+:\d+: invalid JSON"):
        Tokenizer.load(p)


def test_tokenizer_json_duplicate_ids(tmp_path):
    d = _tokenizer_json()
    d["model"]["vocab"]["he"] = 7
    p = _write_tj(tmp_path, d)
    with pytest.raises(FormatError, match=r"tokenizer\.json: model\.vocab: duplicate id 7"):
        Tokenizer.load(p)


def test_tokenizer_json_merge_of_unknown_tokens(tmp_path):
    d = _tokenizer_json()
    d["model"]["merges"] = ["Ġ t", "h e", "q zz"]
    p = _write_tj(tmp_path, d)
    with pytest.raises(FormatError, match=r"tokenizer\.json: model\.merges\[2\]: merge \"q zz\": token \"zz\""):
        Tokenizer.load(p)


def test_tokenizer_json_unsupported_model(tmp_path):
    d = _tokenizer_json()
    d["model"]["type"] = "WordPiece"
    p = _write_tj(tmp_path, d)
    with pytest.raises(FormatError, match=r"tokenizer\.json: model\.type \"WordPiece\" is not supported"):
        Tokenizer.load(p)


def test_tokenizer_json_unsupported_normalizer(tmp_path):
    p = _write_tj(tmp_path, _tokenizer_json(normalizer={"type": "Lowercase"}))
    with pytest.raises(FormatError, match=r"tokenizer\.json: normalizer\.type \"Lowercase\""):
        Tokenizer.load(p)


def test_tokenizer_json_unsupported_pre_tokenizer(tmp_path):
    p = _write_tj(tmp_path, _tokenizer_json(pre_tokenizer={"type": "Whitespace"}))
    with pytest.raises(FormatError, match=r"tokenizer\.json: pre_tokenizer\.type \"Whitespace\""):
        Tokenizer.load(p)
    p = _write_tj(tmp_path, _tokenizer_json(pre_tokenizer={"type": "ByteLevel", "add_prefix_space": True}))
    with pytest.raises(FormatError, match=r"pre_tokenizer\.add_prefix_space"):
        Tokenizer.load(p)


def test_tokenizer_json_added_token_id(tmp_path):
    d = _tokenizer_json()
    d["added_tokens"][0]["id"] = 300
    p = _write_tj(tmp_path, d)
    with pytest.raises(FormatError, match=r"tokenizer\.json: added_tokens\[0\]\.id: .* has id 300 but Hugging Face assigns it id 258"):
        Tokenizer.load(p)


def test_tokenizer_json_added_token_options(tmp_path):
    d = _tokenizer_json()
    d["added_tokens"][0]["lstrip"] = True
    p = _write_tj(tmp_path, d)
    with pytest.raises(FormatError, match=r"added_tokens\[0\]\.lstrip=true is not supported"):
        Tokenizer.load(p)


def test_tokenizer_json_missing_model(tmp_path):
    d = _tokenizer_json()
    del d["model"]
    p = _write_tj(tmp_path, d)
    with pytest.raises(FormatError, match=r"tokenizer\.json: field \"model\""):
        Tokenizer.load(p)


def test_missing_files(tmp_path):
    with pytest.raises(OSError, match="cannot open"):
        Tokenizer.load(tmp_path / "nope")
    with pytest.raises(OSError, match="no tokenizer.json"):
        Tokenizer.load(tmp_path)
    (tmp_path / "vocab.json").write_text("{}")
    with pytest.raises(OSError, match=r"merges\.txt: cannot open"):
        Tokenizer.load(tmp_path / "vocab.json")


def test_bad_config_files(tmp_path):
    shutil.copy(os.path.join(NEOX_DIR, "tokenizer.json"), tmp_path)
    (tmp_path / "tokenizer_config.json").write_text('{"bos_token": "<|endoftext|>",}')
    with pytest.raises(FormatError, match=r"tokenizer_config\.json:1:\d+: invalid JSON"):
        Tokenizer.load(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text('{"eos_token": "<nope>"}')
    with pytest.raises(FormatError, match=r"tokenizer_config\.json: field \"eos_token\": token \"<nope>\""):
        Tokenizer.load(tmp_path)
    (tmp_path / "tokenizer_config.json").unlink()
    (tmp_path / "config.json").write_text('{"pad_token_id": -3}')
    with pytest.raises(FormatError, match=r"config\.json: field \"pad_token_id\""):
        Tokenizer.load(tmp_path)


# ---------------------------------------------------------------------------------------------
# the C-only test


def test_c_library(tmp_path):
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler")
    root = os.path.join(os.path.dirname(__file__), "..")
    try:
        cj = subprocess.check_output(["pkg-config", "--cflags", "--libs", "libcjson"], text=True).split()
    except (OSError, subprocess.CalledProcessError):
        cj = ["-lcjson"]
    exe = str(tmp_path / "test_tokenizer")
    subprocess.run([cc, "-std=c11", "-O1", "-fopenmp", "-D_GNU_SOURCE", "-Wall", "-Wextra", "-Werror",
                    "-Wno-unused-parameter", "-Wno-missing-field-initializers",
                    "-I" + os.path.join(root, "csrc"), os.path.join(root, "tests", "c", "test_tokenizer.c"),
                    os.path.join(root, "csrc", "cl_tokenizer.c"), *sorted(glob.glob(os.path.join(root, "csrc", "cl_tok_*.c"))),
                    os.path.join(root, "csrc", "cl_common.c"),
                    *cj, "-o", exe], check=True)
    r = subprocess.run([exe, GPT2_DIR, NEOX_DIR, str(tmp_path)], capture_output=True, text=True, timeout=300)
    sys.stdout.write(r.stdout)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip().splitlines()[-1].endswith(" 0 failed")


# ---------------------------------------------------------------------------------------------
# threads: the GIL is released, Ctrl-C stops long work


def _progress_while(fn):
    """How many times the main thread got to run while fn ran in another thread."""
    import threading
    done = threading.Event()
    result = {}

    def work():
        try:
            result["value"] = fn()
        finally:
            done.set()

    th = threading.Thread(target=work)
    count = 0
    th.start()
    while not done.is_set():
        count += 1
        sum(range(200))
    th.join()
    return count, result.get("value")


def test_gil_released(pairs):
    _, ours = pairs["gpt2"]
    docs = ["the quick brown fox jumps over the lazy dog 12345 " * 400] * 400  # ~8 MB
    count, out = _progress_while(lambda: ours.encode_batch(docs, num_threads=1))
    assert len(out) == len(docs) and count > 50, count
    long_text = "".join(docs[:100])
    count, out = _progress_while(lambda: ours.encode(long_text))
    assert len(out) > 100000 and count > 50, count


def test_ctrl_c_stops_batch(pairs):
    import _thread
    import threading
    _, ours = pairs["neox"]
    docs = ["lorem ipsum dolor sit amet, consectetur adipiscing elit " * 1000] * 1500  # ~85 MB
    timer = threading.Timer(0.05, _thread.interrupt_main)
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            ours.encode_batch(docs, num_threads=2)
    finally:
        timer.cancel()


def test_ctrl_c_inside_one_huge_word_takes_effect_promptly():
    """One 16 MB pre-token (about 10 s of BPE): the merge loop itself checks for Ctrl-C (every
    65536 merges, and every million symbols while setting up), not only between words."""
    import signal
    import time

    code = (
        "import sys, time\n"
        "from ctxlookup.tokenizer import Tokenizer\n"
        f"tok = Tokenizer.load({GPT2_DIR!r})\n"
        "word = 'ab' * (8 << 20)\n"
        "print('ready', flush=True)\n"
        "t0 = time.perf_counter()\n"
        "try:\n"
        "    tok.encode(word)\n"
        "    print('finished', time.perf_counter() - t0, flush=True)\n"
        "except KeyboardInterrupt:\n"
        "    print(f'interrupted {time.perf_counter() - t0:.3f}', flush=True)\n"
        "print('alive', tok.encode('hello').tolist(), flush=True)\n")
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(_core.__file__)))
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    assert p.stdout.readline().strip() == "ready"
    time.sleep(1.0)  # well inside the merges (the whole word takes several seconds)
    sent = time.perf_counter()
    p.send_signal(signal.SIGINT)
    line = p.stdout.readline()
    latency = time.perf_counter() - sent
    p.wait(timeout=60)
    out = p.stdout.read()  # through the text wrapper: readline may already hold the next line in its buffer
    assert line.startswith("interrupted"), line + out
    assert latency < (2.0 if SANITIZE else 0.5), latency
    assert p.returncode == 0 and "alive [31373]" in out, out


def test_fifo_named_like_a_tokenizer_file_is_refused_at_once(tmp_path):
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(os.path.join(GPT2_DIR, name), tmp_path / name)
    os.mkfifo(tmp_path / "tokenizer.json")
    with pytest.raises(OSError, match=r"tokenizer.json: is a FIFO \(named pipe\), not a regular file"):
        Tokenizer.load(str(tmp_path / "tokenizer.json"))  # the file itself: refused, not blocked on
    os.remove(tmp_path / "vocab.json")
    os.mkfifo(tmp_path / "vocab.json")
    os.remove(tmp_path / "tokenizer.json")
    with pytest.raises(OSError, match="no tokenizer.json, nor vocab.json and merges.txt"):  # a FIFO is no file
        Tokenizer.load(str(tmp_path))
