/* cl_tok_pretokenize.c: the GPT-2 pre-tokenizer regex, compiled by hand, on valid UTF-8. Knows
 * nothing of vocabularies; the classes come from cl_tok_unicode.c. */
#include "cl_tok_private.h"

/* ------------------------------------------------------------------------------------------ */
/* the GPT-2 pre-tokenizer regex, hand-compiled:                                              */
/*   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+              */

static inline int cls_at(const uint8_t *s, size_t i, int *len) {
    if (s[i] < 0x80) {
        *len = 1;
        return cl_tok_uprop2[s[i]] & 3; /* block 0 holds U+0000..U+007F */
    }
    return cl_tok_uprop(u8dec(s, i, len)) & 3;
}

/* end of the pre-token that starts at i < n */
size_t cl_tok_pretok_next(const uint8_t *s, size_t n, size_t i) {
    uint8_t c = s[i];
    if (c == '\'' && i + 1 < n) {
        uint8_t d = s[i + 1];
        if (d == 's' || d == 't' || d == 'm' || d == 'd') return i + 2;
        if (i + 2 < n) {
            uint8_t e = s[i + 2];
            if ((d == 'r' && e == 'e') || (d == 'v' && e == 'e') || (d == 'l' && e == 'l')) return i + 3;
        }
    }
    int l;
    int k = cls_at(s, i, &l);
    size_t j = i;
    if (c == ' ' && i + 1 < n) {
        int l1;
        int k1 = cls_at(s, i + 1, &l1);
        if (k1 != CLS_SPACE) {
            k = k1;
            j = i + 1;
        }
    }
    if (k != CLS_SPACE) {
        size_t p = j;
        while (p < n) {
            if (cls_at(s, p, &l) != k) break;
            p += (size_t)l;
        }
        return p;
    }
    size_t p = i, last = i;
    while (p < n) {
        if (cls_at(s, p, &l) != CLS_SPACE) break;
        last = p;
        p += (size_t)l;
    }
    if (p == n) return n;      /* \s+(?!\S) at the end of the text */
    if (last > i) return last; /* \s+(?!\S): all but the last whitespace character */
    return p;                  /* \s+: a single whitespace character before non-space */
}

size_t cl_pretokenize(const char *text, size_t len, size_t *ends) {
    size_t i = 0, k = 0;
    while (i < len) {
        i = cl_tok_pretok_next((const uint8_t *)text, len, i);
        ends[k++] = i;
    }
    return k;
}
