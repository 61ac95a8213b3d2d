/* cl_tok_unicode.c: the tokenizer's Unicode: UTF-8 validation, character classes, NFC exactly as
 * HF's NFC normalizer (Unicode 9.0 data) with its alignments back to the original bytes, and
 * GPT-2's byte <-> character map. The only file that includes the generated tables. */
#include <pthread.h>

#include "cl_tok_private.h"
#include "cl_unicode_tables.h"

_Static_assert(CL_TOK_UBLOCK_SHIFT == CL_UBLOCK_SHIFT && CL_TOK_UBLOCK_MASK == CL_UBLOCK_MASK, "table block size");
const uint16_t *const cl_tok_uprop1 = cl_uprop_stage1;
const uint8_t *const cl_tok_uprop2 = cl_uprop_stage2;

size_t cl_utf8_check(const char *text, size_t len) {
    const uint8_t *s = (const uint8_t *)text;
    size_t i = 0;
    while (i < len) {
        /* ASCII fast path, 8 bytes at a time */
        while (i + 8 <= len) {
            uint64_t w;
            memcpy(&w, s + i, 8);
            if (w & 0x8080808080808080ULL) break;
            i += 8;
        }
        if (i >= len) break;
        uint8_t c = s[i];
        if (c < 0x80) { i++; continue; }
        size_t n;
        uint32_t lo = 0x80, hi = 0xBF; /* allowed range of the second byte */
        if (c >= 0xC2 && c <= 0xDF) n = 2;
        else if (c >= 0xE0 && c <= 0xEF) {
            n = 3;
            if (c == 0xE0) lo = 0xA0;      /* overlong */
            if (c == 0xED) hi = 0x9F;      /* surrogates */
        } else if (c >= 0xF0 && c <= 0xF4) {
            n = 4;
            if (c == 0xF0) lo = 0x90;      /* overlong */
            if (c == 0xF4) hi = 0x8F;      /* > U+10FFFF */
        } else return i;
        if (i + n > len) return i;
        if (s[i + 1] < lo || s[i + 1] > hi) return i;
        for (size_t k = 2; k < n; k++)
            if ((s[i + k] & 0xC0) != 0x80) return i;
        i += n;
    }
    return len;
}

/* ------------------------------------------------------------------------------------------ */
/* Unicode properties (generated tables)                                                      */

static inline uint8_t ccc_of(uint32_t cp) {
    return cl_ccc_stage2[((uint32_t)cl_ccc_stage1[cp >> CL_UBLOCK_SHIFT] << CL_UBLOCK_SHIFT) |
                         (cp & CL_UBLOCK_MASK)];
}

#define H_SBASE 0xAC00u
#define H_LBASE 0x1100u
#define H_VBASE 0x1161u
#define H_TBASE 0x11A7u
#define H_LCOUNT 19u
#define H_VCOUNT 21u
#define H_TCOUNT 28u
#define H_NCOUNT (H_VCOUNT * H_TCOUNT)
#define H_SCOUNT (H_LCOUNT * H_NCOUNT)

/* full canonical decomposition of cp into out (at most 4 for 9.0 data; 18 is ample); returns
 * the length (1 when cp does not decompose) */
static int decompose(uint32_t cp, uint32_t *out) {
    if (cp - H_SBASE < H_SCOUNT) {
        uint32_t si = cp - H_SBASE;
        out[0] = H_LBASE + si / H_NCOUNT;
        out[1] = H_VBASE + (si % H_NCOUNT) / H_TCOUNT;
        uint32_t t = H_TBASE + si % H_TCOUNT;
        if (t != H_TBASE) { out[2] = t; return 3; }
        return 2;
    }
    size_t lo = 0, hi = CL_DECOMP_COUNT;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cl_decomp_index[mid][0] < cp) lo = mid + 1;
        else hi = mid;
    }
    if (lo < CL_DECOMP_COUNT && cl_decomp_index[lo][0] == cp) {
        uint32_t off = cl_decomp_index[lo][1], n = cl_decomp_index[lo][2];
        for (uint32_t k = 0; k < n; k++) out[k] = cl_decomp_data[off + k];
        return (int)n;
    }
    out[0] = cp;
    return 1;
}

/* primary composite of (a, b), or 0 */
static uint32_t compose(uint32_t a, uint32_t b) {
    if (a - H_LBASE < H_LCOUNT && b - H_VBASE < H_VCOUNT)
        return H_SBASE + ((a - H_LBASE) * H_VCOUNT + (b - H_VBASE)) * H_TCOUNT;
    if (a - H_SBASE < H_SCOUNT && (a - H_SBASE) % H_TCOUNT == 0 && b - H_TBASE - 1 < H_TCOUNT - 1)
        return a + (b - H_TBASE);
    uint64_t key = ((uint64_t)a << 21) | b;
    size_t lo = 0, hi = CL_COMP_COUNT;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cl_comp_keys[mid] < key) lo = mid + 1;
        else hi = mid;
    }
    if (lo < CL_COMP_COUNT && cl_comp_keys[lo] == key) return cl_comp_vals[lo];
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* GPT-2's byte <-> character mapping                                                         */

uint32_t cl_tok_byte_char[256];   /* byte -> code point */
int16_t cl_tok_char_byte[0x144];  /* code point (< 0x144) -> byte, -1 if none */
static pthread_once_t g_bytemap_once = PTHREAD_ONCE_INIT;

static void bytemap_build(void) {
    uint32_t bc[256];
    int used[256] = {0};
    for (int b = '!'; b <= '~'; b++) used[b] = 1;
    for (int b = 0xA1; b <= 0xAC; b++) used[b] = 1;
    for (int b = 0xAE; b <= 0xFF; b++) used[b] = 1;
    uint32_t n = 0;
    for (int b = 0; b < 256; b++) bc[b] = used[b] ? (uint32_t)b : 256 + n++;
    int16_t cb[0x144];
    for (int i = 0; i < 0x144; i++) cb[i] = -1;
    for (int b = 0; b < 256; b++) cb[bc[b]] = (int16_t)b;
    memcpy(cl_tok_byte_char, bc, sizeof bc);
    memcpy(cl_tok_char_byte, cb, sizeof cb);
}

void cl_tok_bytemap_init(void) { pthread_once(&g_bytemap_once, bytemap_build); }

/* -- NFC with HF's alignments -- */

static int nbuf_put(tstate *st, size_t *olen, uint32_t cp, int64_t s, int64_t e, int want) {
    if (!grow((void **)&st->nbuf, &st->nbuf_cap, *olen + 4, 1)) return 0;
    int l = u8enc(cp, st->nbuf + *olen);
    if (want) {
        if (!grow((void **)&st->astart, &st->astart_cap, *olen + 4, sizeof *st->astart)) return 0;
        if (!grow((void **)&st->aend, &st->aend_cap, *olen + 4, sizeof *st->aend)) return 0;
        for (int k = 0; k < l; k++) {
            st->astart[*olen + k] = s;
            st->aend[*olen + k] = e;
        }
    }
    *olen += (size_t)l;
    return 1;
}

/* copy text[a, b) unchanged (identity alignment) */
static int nbuf_copy(tstate *st, size_t *olen, const uint8_t *text, size_t a, size_t b, int want) {
    size_t i = a;
    while (i < b) {
        int l;
        uint32_t cp = u8dec(text, i, &l);
        if (!nbuf_put(st, olen, cp, (int64_t)i, (int64_t)(i + (size_t)l), want)) return 0;
        i += (size_t)l;
    }
    return 1;
}

/* Canonical decomposition, reordering and composition of text[a, b), tracking HF's "changes"
 * (0: replaces the next original char, +1: inserted, -n: replaces and removes n more). */
static int nfc_segment(tstate *st, size_t *olen, const uint8_t *text, size_t a, size_t b,
                       int64_t base, int want) {
    size_t nin = 0, nout = 0;
    /* input chars and their original spans */
    for (size_t i = a; i < b;) {
        int l;
        uint32_t cp = u8dec(text, i, &l);
        if (!grow((void **)&st->seg_os, &st->seg_os_cap, nin + 1, sizeof *st->seg_os)) return 0;
        if (!grow((void **)&st->seg_oe, &st->seg_oe_cap, nin + 1, sizeof *st->seg_oe)) return 0;
        st->seg_os[nin] = (int64_t)i;
        st->seg_oe[nin] = (int64_t)(i + (size_t)l);
        nin++;
        uint32_t d[18];
        int nd = decompose(cp, d);
        if (!grow((void **)&st->seg_cp, &st->seg_cp_cap, nout + (size_t)nd, sizeof *st->seg_cp)) return 0;
        if (!grow((void **)&st->seg_chg, &st->seg_chg_cap, nout + (size_t)nd, sizeof *st->seg_chg)) return 0;
        for (int k = 0; k < nd; k++) {
            st->seg_cp[nout] = d[k];
            st->seg_chg[nout] = k ? 1 : 0;
            nout++;
        }
        i += (size_t)l;
    }
    uint32_t *cp = st->seg_cp;
    int32_t *chg = st->seg_chg;
    /* canonical ordering: a stable sort by ccc of each run of non-starters (the changes travel
     * with their characters); insertion sort for short runs, counting sort for long ones */
    for (size_t r0 = 0; r0 < nout;) {
        if (ccc_of(cp[r0]) == 0) {
            r0++;
            continue;
        }
        size_t r1 = r0 + 1;
        while (r1 < nout && ccc_of(cp[r1]) != 0) r1++;
        size_t rn = r1 - r0;
        if (rn <= 32) {
            for (size_t i = r0 + 1; i < r1; i++) {
                uint8_t ci = ccc_of(cp[i]);
                for (size_t j = i; j > r0 && ccc_of(cp[j - 1]) > ci; j--) {
                    uint32_t tc = cp[j];
                    cp[j] = cp[j - 1];
                    cp[j - 1] = tc;
                    int32_t tg = chg[j];
                    chg[j] = chg[j - 1];
                    chg[j - 1] = tg;
                }
            }
        } else {
            if (!grow((void **)&st->tmp_cp, &st->tmp_cp_cap, rn, sizeof *st->tmp_cp)) return 0;
            if (!grow((void **)&st->tmp_chg, &st->tmp_chg_cap, rn, sizeof *st->tmp_chg)) return 0;
            size_t start[257] = {0};
            for (size_t i = r0; i < r1; i++) start[ccc_of(cp[i]) + 1]++;
            for (int v = 1; v <= 256; v++) start[v] += start[v - 1];
            for (size_t i = r0; i < r1; i++) {
                size_t at = start[ccc_of(cp[i])]++;
                st->tmp_cp[at] = cp[i];
                st->tmp_chg[at] = chg[i];
            }
            memcpy(cp + r0, st->tmp_cp, rn * sizeof *cp);
            memcpy(chg + r0, st->tmp_chg, rn * sizeof *chg);
        }
        r0 = r1;
    }
    /* canonical composition, in place */
    size_t k = 0;
    long starter = -1;
    int last_ccc = -1;
    for (size_t i = 0; i < nout; i++) {
        uint32_t c = cp[i];
        int cc = ccc_of(c);
        if (starter >= 0 && (last_ccc == -1 || last_ccc < cc)) {
            uint32_t comp = compose(cp[starter], c);
            if (comp) {
                cp[starter] = comp;
                chg[starter] += chg[i] - 1;
                continue;
            }
        }
        if (cc == 0) {
            starter = (long)k;
            last_ccc = -1;
        } else {
            last_ccc = cc;
        }
        cp[k] = c;
        chg[k] = chg[i];
        k++;
    }
    /* alignments as HF's NormalizedString::transform */
    size_t off = 0;
    for (size_t i = 0; i < k; i++) {
        int64_t s, e;
        if (chg[i] > 0) {
            if (off == 0) {
                s = e = base;
            } else {
                s = st->seg_os[off - 1];
                e = st->seg_oe[off - 1];
            }
        } else {
            s = st->seg_os[off];
            e = st->seg_oe[off];
            off += 1 + (size_t)(-chg[i]);
        }
        if (!nbuf_put(st, olen, cp[i], s, e, want)) return 0;
    }
    return 1;
}

/* NFC of text[a, b). Returns 0 when the text is already NFC (nothing written), 1 when st->nbuf
 * (and astart/aend if want) hold the normalized text of *olen bytes, -1 on no memory. */
int cl_tok_nfc_piece(tstate *st, const uint8_t *text, size_t a, size_t b, int want, size_t *olen) {
    size_t i = a;
    int any = 0;
    while (i < b) {
        if (text[i] < 0xCC) { /* below U+0300: always stable */
            i++;
            continue;
        }
        int l;
        uint32_t cp = u8dec(text, i, &l);
        if (cl_tok_uprop(cp) & PROP_UNSTABLE) {
            any = 1;
            break;
        }
        i += (size_t)l;
    }
    if (!any) return 0;
    *olen = 0;
    size_t copied = a, p = a;
    long last_stable = -1;
    while (p < b) {
        int l;
        uint32_t cp = u8dec(text, p, &l);
        if (!(cl_tok_uprop(cp) & PROP_UNSTABLE)) {
            last_stable = (long)p;
            p += (size_t)l;
            continue;
        }
        size_t s = (last_stable >= 0 && (size_t)last_stable >= copied) ? (size_t)last_stable : copied;
        size_t q = p + (size_t)l;
        while (q < b) {
            int l2;
            uint32_t c2 = u8dec(text, q, &l2);
            if (!(cl_tok_uprop(c2) & PROP_UNSTABLE)) break;
            q += (size_t)l2;
        }
        if (!nbuf_copy(st, olen, text, copied, s, want)) return -1;
        if (!nfc_segment(st, olen, text, s, q, (int64_t)a, want)) return -1;
        copied = q;
        p = q;
        last_stable = -1;
    }
    if (!nbuf_copy(st, olen, text, copied, b, want)) return -1;
    return 1;
}

cl_status cl_tokenizer_nfc(const char *text, size_t len, char **out, size_t *out_len, cl_error *err) {
    *out = NULL;
    *out_len = 0;
    size_t bad = cl_utf8_check(text, len);
    if (bad != len) return cl_fail(err, CL_EINVAL, "invalid UTF-8 at byte %zu", bad);
    tstate *st = cl_tok_state_new();
    if (!st) return cl_fail(err, CL_ENOMEM, "out of memory");
    size_t olen = 0;
    int r = cl_tok_nfc_piece(st, (const uint8_t *)text, 0, len, 0, &olen);
    const char *src = r > 0 ? (const char *)st->nbuf : text;
    size_t n = r > 0 ? olen : len;
    char *o = r >= 0 ? malloc(n + 1) : NULL;
    if (!o) {
        cl_tok_state_free(st);
        return cl_fail(err, CL_ENOMEM, "out of memory");
    }
    if (n) memcpy(o, src, n);
    o[n] = '\0';
    cl_tok_state_free(st);
    *out = o;
    *out_len = n;
    return CL_OK;
}
