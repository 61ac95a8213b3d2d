#!/usr/bin/env python3
"""Generate csrc/cl_unicode_tables.h: the Unicode data the C tokenizer needs.

    python tools/gen_unicode_tables.py            # writes csrc/cl_unicode_tables.h
    python tools/gen_unicode_tables.py --check    # exit 1 if the committed header is stale

Two different Unicode versions are needed, because Hugging Face `tokenizers` (the
reference we must match exactly) uses two different libraries:

* The GPT-2 pre-tokenizer regex (``\\p{L}``, ``\\p{N}``, ``\\s``) runs on Oniguruma
  (the `onig` crate), which carries Unicode 16.0 in tokenizers 0.21-0.23. The
  classes therefore come from ``unicodedata2`` 16.0.0 (``pip install
  unicodedata2==16.0.0``); Python's own ``unicodedata`` is older (3.11: 14.0) and
  would misclassify ~9,400 letters and digits added in 15.0/16.0. The script
  refuses another version unless ``--allow-version`` is given.
* NFC (GPT-NeoX's normalizer) comes from the `unicode-normalization-alignments`
  crate, whose tables are Unicode 9.0. Canonical decompositions, combining classes
  and composition exclusions never change for an assigned character, so the 9.0
  data is the 16.0 data restricted to characters assigned in 9.0. Which those are
  (DerivedAge) is not in Python's unicodedata; it is read from Perl's
  ``Unicode::UCD`` (``prop_invlist("Present_In=9.0")``, Perl ships DerivedAge.txt).

tests/test_tokenizer.py checks every code point against `tokenizers` (classes,
single-character NFC, and composition/reordering of every combining mark), so a
disagreement introduced by a future `tokenizers` upgrade shows up there.

Layout of the header (all tables are static const, two-stage lookups with 128-entry
blocks, identical blocks shared):
  cl_uprop(cp): bits 0-1 pre-tokenizer class (0 other, 1 letter \\p{L}, 2 number
                \\p{N}, 3 whitespace \\s), bit 2 "NFC-unstable" (not a safe
                boundary for NFC: ccc != 0, may compose with the previous character,
                or changes under NFC).
  cl_ccc(cp):   canonical combining class (Unicode 9.0).
  cl_decomp_*:  full canonical decomposition (9.0) of each character that has one,
                Hangul syllables excluded (done algorithmically).
  cl_comp_*:    primary composites (9.0): (first << 21 | second) -> composite, sorted.
"""
import argparse
import os
import subprocess
import sys

BLOCK = 128
NCP = 0x110000
HANGUL_S, HANGUL_L, HANGUL_V, HANGUL_T = 0xAC00, 0x1100, 0x1161, 0x11A7
HANGUL_SCOUNT = 11172


def load_unicodedata(allow_version):
    try:
        import unicodedata2 as ud
    except ImportError:
        import unicodedata as ud
    if ud.unidata_version != "16.0.0" and not allow_version:
        sys.exit(f"gen_unicode_tables: need Unicode 16.0.0 data (unicodedata2==16.0.0), found "
                 f"{ud.unidata_version}; pass --allow-version to generate anyway")
    return ud


def present_in_9():
    """Set of code points assigned in Unicode 9.0 (from Perl's Unicode::UCD)."""
    script = ('use Unicode::UCD qw(prop_invlist); '
              'print join(" ", prop_invlist("Present_In=9.0")), "\\n";')
    out = subprocess.check_output(["perl", "-e", script], text=True)
    inv = [int(x) for x in out.split()]
    present = bytearray(NCP)
    for i in range(0, len(inv), 2):
        lo = inv[i]
        hi = inv[i + 1] if i + 1 < len(inv) else NCP
        present[lo:hi] = b"\x01" * (hi - lo)
    return present


def pretok_class(ud, cp):
    c = chr(cp)
    cat = ud.category(c)
    if cat[0] == "L":
        return 1
    if cat[0] == "N":
        return 2
    # Oniguruma's \s in Unicode mode: 0x09-0x0D, 0x85 and Zs/Zl/Zp (= White_Space)
    if cp in (0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x85) or cat in ("Zs", "Zl", "Zp"):
        return 3
    return 0


def build_nfc(ud, present):
    ccc = [0] * NCP
    decomp1 = {}  # single-level canonical decomposition
    for cp in range(NCP):
        if not present[cp] or 0xD800 <= cp < 0xE000:
            continue
        c = chr(cp)
        ccc[cp] = ud.combining(c)
        d = ud.decomposition(c)
        if d and not d.startswith("<"):
            decomp1[cp] = [int(x, 16) for x in d.split()]

    def full(cp):
        if cp not in decomp1:
            return [cp]
        out = []
        for x in decomp1[cp]:
            out += full(x)
        return out

    decomp = {cp: full(cp) for cp in decomp1}
    comp = {}
    for cp, d in decomp1.items():
        # primary composite: two-character decomposition, not excluded (NFC(c) == c, which is
        # stable for assigned characters), starting with a starter
        if len(d) == 2 and ud.normalize("NFC", chr(cp)) == chr(cp) and ccc[d[0]] == 0:
            comp[(d[0], d[1])] = cp
    return ccc, decomp, comp


def build_props(ud, ccc, decomp, comp):
    seconds = {b for (_, b) in comp}
    seconds.update(range(HANGUL_V, HANGUL_V + 21))
    seconds.update(range(HANGUL_T + 1, HANGUL_T + 28))
    props = bytearray(NCP)
    for cp in range(NCP):
        if 0xD800 <= cp < 0xE000:
            continue
        p = pretok_class(ud, cp)
        unstable = ccc[cp] != 0 or cp in seconds
        if cp in decomp:
            d = decomp[cp]
            first = d[0]
            recomposes = ud.normalize("NFC", chr(cp)) == chr(cp)
            if not recomposes or ccc[first] != 0 or first in seconds:
                unstable = True
        if unstable:
            p |= 4
        props[cp] = p
    return props


def two_stage(values, name, ctype):
    blocks, index, stage1 = {}, [], []
    for b in range(0, NCP, BLOCK):
        blk = bytes(values[b:b + BLOCK])
        if blk not in blocks:
            blocks[blk] = len(index)
            index.append(blk)
        stage1.append(blocks[blk])
    lines = [f"/* {name}: {len(index)} distinct blocks of {BLOCK} */",
             f"static const uint16_t {name}_stage1[{len(stage1)}] = {{"]
    for i in range(0, len(stage1), 16):
        lines.append("    " + ", ".join(str(x) for x in stage1[i:i + 16]) + ",")
    lines.append("};")
    lines.append(f"static const {ctype} {name}_stage2[{len(index) * BLOCK}] = {{")
    for blk in index:
        for i in range(0, BLOCK, 32):
            lines.append("    " + ",".join(str(x) for x in blk[i:i + 32]) + ",")
    lines.append("};")
    return lines


def render(ud):
    present = present_in_9()
    ccc, decomp, comp = build_nfc(ud, present)
    props = build_props(ud, ccc, decomp, comp)
    out = [
        "/* cl_unicode_tables.h: GENERATED by tools/gen_unicode_tables.py; do not edit.",
        f" * Pre-tokenizer classes: Unicode {ud.unidata_version} (Oniguruma in HF tokenizers).",
        " * NFC data: Unicode 9.0 (unicode-normalization-alignments in HF tokenizers). */",
        "#ifndef CL_UNICODE_TABLES_H",
        "#define CL_UNICODE_TABLES_H",
        "",
        "#include <stdint.h>",
        "",
        f'#define CL_UNICODE_CLASSES_VERSION "{ud.unidata_version}"',
        '#define CL_UNICODE_NFC_VERSION "9.0.0"',
        f"#define CL_UBLOCK_SHIFT {BLOCK.bit_length() - 1}",
        f"#define CL_UBLOCK_MASK {BLOCK - 1}",
        "",
    ]
    out += two_stage(props, "cl_uprop", "uint8_t")
    out.append("")
    out += two_stage(bytes(ccc), "cl_ccc", "uint8_t")
    out.append("")
    keys = sorted(decomp)
    data, index = [], []
    for cp in keys:
        index.append((cp, len(data), len(decomp[cp])))
        data += decomp[cp]
    out.append(f"#define CL_DECOMP_COUNT {len(index)}")
    out.append("/* {code point, offset into cl_decomp_data, length} */")
    out.append(f"static const uint32_t cl_decomp_index[{len(index)}][3] = {{")
    for i in range(0, len(index), 6):
        out.append("    " + " ".join(f"{{0x{a:X},{b},{c}}}," for a, b, c in index[i:i + 6]))
    out.append("};")
    out.append(f"static const uint32_t cl_decomp_data[{len(data)}] = {{")
    for i in range(0, len(data), 10):
        out.append("    " + " ".join(f"0x{x:X}," for x in data[i:i + 10]))
    out.append("};")
    out.append("")
    pairs = sorted(((a << 21) | b, c) for (a, b), c in comp.items())
    out.append(f"#define CL_COMP_COUNT {len(pairs)}")
    out.append("/* (first << 21 | second) -> primary composite, sorted by key */")
    out.append(f"static const uint64_t cl_comp_keys[{len(pairs)}] = {{")
    for i in range(0, len(pairs), 6):
        out.append("    " + " ".join(f"0x{k:X}ULL," for k, _ in pairs[i:i + 6]))
    out.append("};")
    out.append(f"static const uint32_t cl_comp_vals[{len(pairs)}] = {{")
    for i in range(0, len(pairs), 10):
        out.append("    " + " ".join(f"0x{v:X}," for _, v in pairs[i:i + 10]))
    out.append("};")
    out.append("")
    out.append("#endif")
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "csrc",
                                                   "cl_unicode_tables.h"))
    ap.add_argument("--check", action="store_true", help="compare with the existing file")
    ap.add_argument("--allow-version", action="store_true")
    args = ap.parse_args()
    text = render(load_unicodedata(args.allow_version))
    if args.check:
        with open(args.out) as f:
            if f.read() != text:
                sys.exit(f"{args.out} is stale: rerun tools/gen_unicode_tables.py")
        print(f"{args.out} is up to date")
        return
    with open(args.out, "w") as f:
        f.write(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
