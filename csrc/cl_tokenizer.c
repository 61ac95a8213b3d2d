/* cl_tokenizer.c: byte-level BPE (GPT-2, GPT-NeoX / Pythia) matching Hugging Face `tokenizers`
 * bit for bit. No Python, no printing; every failure is a cl_status with a message naming the
 * file and the line or field. See cl_tokenizer.h for the pipeline. */
#include "cl_tokenizer.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <omp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cl_unicode_tables.h"

/* ------------------------------------------------------------------------------------------ */
/* small helpers                                                                              */

#define MAX_TOKEN_ID (1 << 24) /* refuse absurd ids rather than allocating for them */

static int grow(void **p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return 1;
    size_t nc = *cap ? *cap : 16;
    while (nc < need) {
        if (nc > SIZE_MAX / 4 / elem) return 0;
        nc *= 2;
    }
    void *q = realloc(*p, nc * elem);
    if (!q) return 0;
    *p = q;
    *cap = nc;
    return 1;
}

static inline uint64_t mix64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
}

static uint64_t hash_bytes(const void *p, size_t n) {
    const uint8_t *s = p;
    uint64_t h = 0x9E3779B97F4A7C15ULL ^ (n * 0x100000001B3ULL);
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, s, 8);
        h = (h ^ mix64(w)) * 0x100000001B3ULL;
        s += 8;
        n -= 8;
    }
    uint64_t w = 0;
    memcpy(&w, s, n);
    return mix64(h ^ w);
}

/* decode one code point of VALID UTF-8 */
static inline uint32_t u8dec(const uint8_t *s, size_t i, int *len) {
    uint8_t c = s[i];
    if (c < 0x80) { *len = 1; return c; }
    if (c < 0xE0) { *len = 2; return ((uint32_t)(c & 0x1F) << 6) | (s[i + 1] & 0x3F); }
    if (c < 0xF0) {
        *len = 3;
        return ((uint32_t)(c & 0x0F) << 12) | ((uint32_t)(s[i + 1] & 0x3F) << 6) | (s[i + 2] & 0x3F);
    }
    *len = 4;
    return ((uint32_t)(c & 0x07) << 18) | ((uint32_t)(s[i + 1] & 0x3F) << 12) |
           ((uint32_t)(s[i + 2] & 0x3F) << 6) | (s[i + 3] & 0x3F);
}

static inline int u8enc(uint32_t cp, uint8_t *o) {
    if (cp < 0x80) { o[0] = (uint8_t)cp; return 1; }
    if (cp < 0x800) { o[0] = (uint8_t)(0xC0 | (cp >> 6)); o[1] = (uint8_t)(0x80 | (cp & 0x3F)); return 2; }
    if (cp < 0x10000) {
        o[0] = (uint8_t)(0xE0 | (cp >> 12));
        o[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (uint8_t)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (uint8_t)(0xF0 | (cp >> 18));
    o[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (uint8_t)(0x80 | (cp & 0x3F));
    return 4;
}

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

enum { CLS_OTHER = 0, CLS_LETTER = 1, CLS_NUMBER = 2, CLS_SPACE = 3, PROP_UNSTABLE = 4 };

static inline uint8_t uprop(uint32_t cp) {
    return cl_uprop_stage2[((uint32_t)cl_uprop_stage1[cp >> CL_UBLOCK_SHIFT] << CL_UBLOCK_SHIFT) |
                           (cp & CL_UBLOCK_MASK)];
}
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

static uint32_t g_byte_char[256];   /* byte -> code point */
static int16_t g_char_byte[0x144];  /* code point (< 0x144) -> byte, -1 if none */
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
    memcpy(g_byte_char, bc, sizeof bc);
    memcpy(g_char_byte, cb, sizeof cb);
}

static void bytemap_init(void) { pthread_once(&g_bytemap_once, bytemap_build); }

/* ------------------------------------------------------------------------------------------ */
/* the tokenizer                                                                              */

enum { ID_EXISTS = 1, ID_SPECIAL = 2, ID_ADDED = 4, ID_MODEL = 8 };

typedef struct {
    uint32_t str_off, str_len; /* token string as in the files ("Ġthe", added content) */
    uint32_t byt_off, byt_len; /* bytes it decodes to */
    uint16_t lead_ws, trail_ws;
    uint8_t flags;
} id_info;

typedef struct {
    uint32_t off, len; /* string in pool */
    int32_t id;        /* -1: empty slot */
} str_slot;

typedef struct {
    str_slot *slots;
    size_t mask, count;
} str_map;

typedef struct {
    uint64_t *keys; /* (a << 32) | b; UINT64_MAX empty */
    uint32_t *rank;
    int32_t *merged;
    size_t mask, count;
} merge_map;

typedef struct {
    uint32_t off, len; /* content in pool */
    int32_t id;
    uint8_t special, normalized;
} added_tok;

typedef struct {
    int32_t child, sibling, tok; /* tok: index into added[], -1 */
    uint8_t byte;
} trie_node;

typedef struct {
    trie_node *nodes;
    size_t n, cap;
    uint8_t first[256]; /* first[b]: some pattern starts with byte b */
    int empty;          /* no patterns */
} trie;

struct tstate;

#define CL_TOK_SPARES 16

struct cl_tokenizer {
    int32_t n_ids;
    id_info *info;
    char *pool;
    size_t pool_len, pool_cap;
    str_map vocab; /* model vocabulary: token string -> id */
    int32_t model_size; /* number of model vocabulary entries */
    int32_t byte_id[256];
    merge_map merges;
    added_tok *added;
    int n_added;
    trie raw_trie, norm_trie;
    int nfc, trim_offsets, pp_add_prefix_space, ignore_merges, fuse_unk;
    int32_t unk_id, bos_id, eos_id, pad_id;
    char *source;
    /* encoder states with warm word caches, each lent to one thread at a time */
    atomic_int spare_busy[CL_TOK_SPARES];
    struct tstate *spare[CL_TOK_SPARES];
};

static int pool_add(cl_tokenizer *t, const void *s, size_t n, uint32_t *off) {
    if (t->pool_len + n + 1 > UINT32_MAX) return 0;
    if (!grow((void **)&t->pool, &t->pool_cap, t->pool_len + n + 1, 1)) return 0;
    if (n) memcpy(t->pool + t->pool_len, s, n);
    t->pool[t->pool_len + n] = '\0';
    *off = (uint32_t)t->pool_len;
    t->pool_len += n + 1;
    return 1;
}

/* -- string map -- */

static int smap_init(str_map *m, size_t expected) {
    size_t cap = 64;
    while (cap < expected * 2) cap *= 2;
    m->slots = malloc(cap * sizeof *m->slots);
    if (!m->slots) return 0;
    for (size_t i = 0; i < cap; i++) m->slots[i].id = -1;
    m->mask = cap - 1;
    m->count = 0;
    return 1;
}

static int32_t smap_get(const str_map *m, const char *pool, const char *s, size_t n) {
    if (!m->slots) return -1;
    size_t h = (size_t)hash_bytes(s, n) & m->mask;
    for (;;) {
        const str_slot *sl = &m->slots[h];
        if (sl->id < 0) return -1;
        if (sl->len == n && memcmp(pool + sl->off, s, n) == 0) return sl->id;
        h = (h + 1) & m->mask;
    }
}

/* insert; returns the existing id when the string is already present, -1 when inserted */
static int32_t smap_put(str_map *m, const char *pool, uint32_t off, uint32_t n, int32_t id) {
    size_t h = (size_t)hash_bytes(pool + off, n) & m->mask;
    for (;;) {
        str_slot *sl = &m->slots[h];
        if (sl->id < 0) {
            sl->off = off;
            sl->len = n;
            sl->id = id;
            m->count++;
            return -1;
        }
        if (sl->len == n && memcmp(pool + sl->off, pool + off, n) == 0) return sl->id;
        h = (h + 1) & m->mask;
    }
}

/* -- merge map -- */

static int mmap_init(merge_map *m, size_t expected) {
    size_t cap = 64;
    while (cap < expected * 2) cap *= 2;
    m->keys = malloc(cap * sizeof *m->keys);
    m->rank = malloc(cap * sizeof *m->rank);
    m->merged = malloc(cap * sizeof *m->merged);
    if (!m->keys || !m->rank || !m->merged) return 0;
    for (size_t i = 0; i < cap; i++) m->keys[i] = UINT64_MAX;
    m->mask = cap - 1;
    m->count = 0;
    return 1;
}

/* later duplicates overwrite earlier ones, as HF's HashMap collect does */
static void mmap_put(merge_map *m, int32_t a, int32_t b, uint32_t rank, int32_t merged) {
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    size_t h = (size_t)mix64(key) & m->mask;
    while (m->keys[h] != UINT64_MAX && m->keys[h] != key) h = (h + 1) & m->mask;
    if (m->keys[h] == UINT64_MAX) m->count++;
    m->keys[h] = key;
    m->rank[h] = rank;
    m->merged[h] = merged;
}

static inline uint32_t mmap_get(const merge_map *m, int32_t a, int32_t b, int32_t *merged) {
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    size_t h = (size_t)mix64(key) & m->mask;
    for (;;) {
        uint64_t k = m->keys[h];
        if (k == key) {
            *merged = m->merged[h];
            return m->rank[h];
        }
        if (k == UINT64_MAX) return UINT32_MAX;
        h = (h + 1) & m->mask;
    }
}

/* -- trie of added tokens -- */

static int trie_add(trie *tr, const uint8_t *s, size_t n, int tok) {
    if (tr->n == 0) {
        if (!grow((void **)&tr->nodes, &tr->cap, 1, sizeof *tr->nodes)) return 0;
        tr->nodes[0] = (trie_node){-1, -1, -1, 0};
        tr->n = 1;
    }
    int32_t cur = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t c = tr->nodes[cur].child;
        while (c >= 0 && tr->nodes[c].byte != s[i]) c = tr->nodes[c].sibling;
        if (c < 0) {
            if (!grow((void **)&tr->nodes, &tr->cap, tr->n + 1, sizeof *tr->nodes)) return 0;
            c = (int32_t)tr->n++;
            tr->nodes[c] = (trie_node){-1, tr->nodes[cur].child, -1, s[i]};
            tr->nodes[cur].child = c;
        }
        cur = c;
    }
    if (tr->nodes[cur].tok < 0) tr->nodes[cur].tok = tok;
    tr->first[s[0]] = 1;
    tr->empty = 0;
    return 1;
}

/* longest pattern starting at s[i]; returns its length (0: none) and sets *tok */
static size_t trie_longest(const trie *tr, const uint8_t *s, size_t n, size_t i, int *tok) {
    int32_t cur = 0;
    size_t best = 0;
    for (size_t p = i; p < n; p++) {
        int32_t c = tr->nodes[cur].child;
        while (c >= 0 && tr->nodes[c].byte != s[p]) c = tr->nodes[c].sibling;
        if (c < 0) break;
        cur = c;
        if (tr->nodes[cur].tok >= 0) {
            best = p + 1 - i;
            *tok = tr->nodes[cur].tok;
        }
    }
    return best;
}

/* Next match at or after *pos in s[0, n): leftmost-longest, as Aho-Corasick's LeftmostLongest.
 * Returns 1 and [*ms, *me) with the added-token index, or 0. */
static int trie_find(const trie *tr, const uint8_t *s, size_t n, size_t from, size_t *ms,
                     size_t *me, int *tok) {
    if (tr->empty) return 0;
    for (size_t i = from; i < n; i++) {
        if (!tr->first[s[i]]) continue;
        size_t l = trie_longest(tr, s, n, i, tok);
        if (l) {
            *ms = i;
            *me = i + l;
            return 1;
        }
    }
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* per-thread encoder state                                                                   */

#define CACHE_SLOTS 8192
#define CACHE_KEY 22

typedef struct {
    uint32_t hash;
    uint8_t klen, n;
    char key[CACHE_KEY];
    int32_t ids[CACHE_KEY];
} cache_slot;

typedef struct {
    int32_t id;
    uint32_t start, end; /* byte span within the word */
} sym_t;

typedef struct {
    uint32_t rank;
    uint32_t pos;
} heap_ent;

typedef struct tstate {
    int slot; /* index in cl_tokenizer.spare, or -1 */
    cache_slot *cache;
    /* BPE scratch */
    sym_t *sym;
    size_t sym_cap;
    uint32_t *rk;
    size_t rk_cap;
    int32_t *mid;
    size_t mid_cap;
    int32_t *prev, *next;
    size_t prev_cap, next_cap;
    heap_ent *heap;
    size_t heap_cap;
    char *mapped; /* ignore_merges: the word as a byte-level string */
    size_t mapped_cap;
    /* NFC scratch */
    uint8_t *nbuf;
    size_t nbuf_cap;
    int64_t *astart, *aend; /* per normalized byte: original span */
    size_t astart_cap, aend_cap;
    uint32_t *seg_cp; /* the segment's characters and HF "changes" */
    int32_t *seg_chg;
    size_t seg_cp_cap, seg_chg_cap;
    int64_t *seg_os, *seg_oe; /* original spans of the segment's input chars */
    size_t seg_os_cap, seg_oe_cap;
    uint32_t *tmp_cp; /* counting sort of long runs of combining marks */
    int32_t *tmp_chg;
    size_t tmp_cp_cap, tmp_chg_cap;
} tstate;

static void tstate_free(tstate *st) {
    if (!st) return;
    free(st->cache);
    free(st->sym);
    free(st->rk);
    free(st->mid);
    free(st->prev);
    free(st->next);
    free(st->heap);
    free(st->mapped);
    free(st->nbuf);
    free(st->astart);
    free(st->aend);
    free(st->seg_cp);
    free(st->seg_chg);
    free(st->seg_os);
    free(st->seg_oe);
    free(st->tmp_cp);
    free(st->tmp_chg);
    free(st);
}

static tstate *tstate_new(void) {
    tstate *st = calloc(1, sizeof *st);
    if (!st) return NULL;
    st->slot = -1;
    st->cache = calloc(CACHE_SLOTS, sizeof *st->cache);
    if (!st->cache) {
        free(st);
        return NULL;
    }
    return st;
}

/* A state for one encode: a pooled one (warm cache) when free, else a fresh one. The pool is the
 * only mutable part of a loaded tokenizer; the atomic exchange gives exclusive ownership of a
 * slot and orders the accesses of successive owners. */
static tstate *tstate_borrow(const cl_tokenizer *tok) {
    cl_tokenizer *t = (cl_tokenizer *)tok;
    for (int k = 0; k < CL_TOK_SPARES; k++) {
        if (atomic_exchange(&t->spare_busy[k], 1) != 0) continue;
        if (!t->spare[k]) {
            t->spare[k] = tstate_new();
            if (!t->spare[k]) {
                atomic_store(&t->spare_busy[k], 0);
                break;
            }
            t->spare[k]->slot = k;
        }
        return t->spare[k];
    }
    return tstate_new();
}

static void tstate_return(const cl_tokenizer *tok, tstate *st) {
    cl_tokenizer *t = (cl_tokenizer *)tok;
    if (!st) return;
    if (st->slot >= 0) atomic_store(&t->spare_busy[st->slot], 0);
    else tstate_free(st);
}

/* ------------------------------------------------------------------------------------------ */
/* the GPT-2 pre-tokenizer regex, hand-compiled:                                              */
/*   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+              */

static inline int cls_at(const uint8_t *s, size_t i, int *len) {
    if (s[i] < 0x80) {
        *len = 1;
        return cl_uprop_stage2[s[i]] & 3; /* block 0 holds U+0000..U+007F */
    }
    return uprop(u8dec(s, i, len)) & 3;
}

/* end of the pre-token that starts at i < n */
static size_t pretok_next(const uint8_t *s, size_t n, size_t i) {
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
        i = pretok_next((const uint8_t *)text, len, i);
        ends[k++] = i;
    }
    return k;
}

/* ------------------------------------------------------------------------------------------ */
/* BPE                                                                                        */

#define BPE_SCAN_MAX 128 /* words up to this many symbols: O(n^2) scan, else a heap */

static int bpe_reserve(tstate *st, size_t n) {
    if (!grow((void **)&st->sym, &st->sym_cap, n, sizeof *st->sym)) return 0;
    if (!grow((void **)&st->rk, &st->rk_cap, n, sizeof *st->rk)) return 0;
    if (!grow((void **)&st->mid, &st->mid_cap, n, sizeof *st->mid)) return 0;
    return 1;
}

static void heap_push(heap_ent *h, size_t *n, heap_ent e) {
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (h[p].rank < e.rank || (h[p].rank == e.rank && h[p].pos < e.pos)) break;
        h[i] = h[p];
        i = p;
    }
    h[i] = e;
}

static heap_ent heap_pop(heap_ent *h, size_t *n) {
    heap_ent top = h[0], last = h[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n && (h[c + 1].rank < h[c].rank || (h[c + 1].rank == h[c].rank && h[c + 1].pos < h[c].pos)))
            c++;
        if (last.rank < h[c].rank || (last.rank == h[c].rank && last.pos < h[c].pos)) break;
        h[i] = h[c];
        i = c;
    }
    if (*n) h[i] = last;
    return top;
}

/* Cancellation inside one long word: the encoder's check, forced (defined with enc_ctx below). */
static int bpe_cancelled(void *enc);
#define BPE_CHECK_EVERY (1u << 16) /* merges between cancel checks in a long word (~1 ms) */

/* BPE of one word (a pre-token's bytes). Symbols land in st->sym[0, return). -1: no memory;
 * -2: cancelled (enc's cancel check, every BPE_CHECK_EVERY merges of a long word). */
static long bpe_word(const cl_tokenizer *t, tstate *st, const uint8_t *w, size_t n, void *enc) {
    if (!bpe_reserve(st, n + 1)) return -1;
    sym_t *sy = st->sym;
    size_t m = 0;
    for (size_t k = 0; k < n; k++) {
        if (k % (BPE_CHECK_EVERY * 16) == BPE_CHECK_EVERY * 16 - 1 && bpe_cancelled(enc)) return -2;
        int32_t id = t->byte_id[w[k]];
        if (id < 0) {
            if (t->unk_id < 0) continue; /* HF: no unk token, the character is dropped */
            if (t->fuse_unk && m > 0 && sy[m - 1].id == t->unk_id && sy[m - 1].end == k) {
                sy[m - 1].end = (uint32_t)(k + 1);
                continue;
            }
            id = t->unk_id;
        }
        sy[m].id = id;
        sy[m].start = (uint32_t)k;
        sy[m].end = (uint32_t)(k + 1);
        m++;
    }
    if (m < 2) return (long)m;
    const merge_map *mm = &t->merges;
    if (m <= BPE_SCAN_MAX) {
        uint32_t *rk = st->rk;
        int32_t *mid = st->mid;
        for (size_t i = 0; i + 1 < m; i++) rk[i] = mmap_get(mm, sy[i].id, sy[i + 1].id, &mid[i]);
        while (m > 1) {
            uint32_t best = UINT32_MAX;
            size_t bi = 0;
            for (size_t i = 0; i + 1 < m; i++)
                if (rk[i] < best) {
                    best = rk[i];
                    bi = i;
                }
            if (best == UINT32_MAX) break;
            sy[bi].id = mid[bi];
            sy[bi].end = sy[bi + 1].end;
            size_t tail = m - (bi + 2);
            memmove(&sy[bi + 1], &sy[bi + 2], tail * sizeof *sy);
            if (tail) {
                memmove(&rk[bi + 1], &rk[bi + 2], (tail - 1) * sizeof *rk);
                memmove(&mid[bi + 1], &mid[bi + 2], (tail - 1) * sizeof *mid);
            }
            m--;
            if (bi > 0) rk[bi - 1] = mmap_get(mm, sy[bi - 1].id, sy[bi].id, &mid[bi - 1]);
            if (bi + 1 < m) rk[bi] = mmap_get(mm, sy[bi].id, sy[bi + 1].id, &mid[bi]);
        }
        return (long)m;
    }
    /* long words: linked symbols and a min-heap on (rank, position), exactly HF's loop */
    if (!grow((void **)&st->prev, &st->prev_cap, m, sizeof *st->prev)) return -1;
    if (!grow((void **)&st->next, &st->next_cap, m, sizeof *st->next)) return -1;
    if (!grow((void **)&st->heap, &st->heap_cap, 2 * m + 4, sizeof *st->heap)) return -1;
    int32_t *prev = st->prev, *next = st->next;
    heap_ent *heap = st->heap;
    size_t hn = 0;
    for (size_t i = 0; i < m; i++) {
        prev[i] = (int32_t)i - 1;
        next[i] = (i + 1 < m) ? (int32_t)(i + 1) : -1;
    }
    for (size_t i = 0; i + 1 < m; i++) {
        if (i % (BPE_CHECK_EVERY * 16) == BPE_CHECK_EVERY * 16 - 1 && bpe_cancelled(enc)) return -2;
        int32_t mg = -1;
        uint32_t r = mmap_get(mm, sy[i].id, sy[i + 1].id, &mg);
        if (r != UINT32_MAX) heap_push(heap, &hn, (heap_ent){r, (uint32_t)i});
    }
    size_t steps = 0;
    while (hn) {
        if (++steps % BPE_CHECK_EVERY == 0 && bpe_cancelled(enc)) return -2;
        heap_ent e = heap_pop(heap, &hn);
        size_t p = e.pos;
        if (sy[p].end == sy[p].start) continue; /* absorbed */
        int32_t q = next[p];
        if (q < 0) continue;
        int32_t mg = -1;
        if (mmap_get(mm, sy[p].id, sy[q].id, &mg) != e.rank) continue; /* stale */
        sy[p].id = mg;
        sy[p].end = sy[q].end;
        sy[q].end = sy[q].start; /* mark absorbed */
        next[p] = next[q];
        if (next[q] >= 0) prev[next[q]] = (int32_t)p;
        if (prev[p] >= 0) {
            uint32_t r = mmap_get(mm, sy[prev[p]].id, sy[p].id, &mg);
            if (r != UINT32_MAX) {
                if (!grow((void **)&st->heap, &st->heap_cap, hn + 1, sizeof *st->heap)) return -1;
                heap = st->heap;
                heap_push(heap, &hn, (heap_ent){r, (uint32_t)prev[p]});
            }
        }
        if (next[p] >= 0) {
            uint32_t r = mmap_get(mm, sy[p].id, sy[next[p]].id, &mg);
            if (r != UINT32_MAX) {
                if (!grow((void **)&st->heap, &st->heap_cap, hn + 1, sizeof *st->heap)) return -1;
                heap = st->heap;
                heap_push(heap, &hn, (heap_ent){r, (uint32_t)p});
            }
        }
    }
    size_t k = 0;
    for (int32_t i = 0; i >= 0; i = next[i]) sy[k++] = sy[i];
    return (long)k;
}

/* ------------------------------------------------------------------------------------------ */
/* encoding                                                                                   */

/* A piece of text after NFC: s[0, len), mapped back to the original text either by identity
 * (astart == NULL: byte k is original byte base + k) or through per-byte spans. */
typedef struct {
    const uint8_t *s;
    size_t len;
    size_t base;
    const int64_t *astart, *aend;
    const uint8_t *orig;
    size_t orig_len;
} piece_t;

typedef struct {
    const cl_tokenizer *t;
    tstate *st;
    cl_tok_result *out;
    unsigned flags;
    const cl_cancel *cancel;
    atomic_int *stop;
    size_t *since_check; /* bytes since the last cancel check, kept across a thread's documents */
    cl_error *err;
} enc_ctx;

static int res_push(enc_ctx *c, int32_t id, int64_t s, int64_t e) {
    cl_tok_result *r = c->out;
    if (!grow((void **)&r->ids, &r->cap, r->n + 1, sizeof *r->ids)) return 0;
    if (c->flags & CL_TOK_OFFSETS) {
        if (!grow((void **)&r->offsets, &r->offsets_cap, 2 * (r->n + 1), sizeof *r->offsets)) return 0;
        r->offsets[2 * r->n] = s;
        r->offsets[2 * r->n + 1] = e;
    }
    r->ids[r->n++] = id;
    return 1;
}

/* original span of piece bytes [x, y), y > x, as HF: first byte's span start, last byte's end */
static void piece_span(const piece_t *p, size_t x, size_t y, int64_t *s, int64_t *e) {
    if (p->astart) {
        *s = p->astart[x];
        *e = p->aend[y - 1];
        return;
    }
    size_t a = p->base + x, b = p->base + y - 1;
    while (a > 0 && (p->orig[a] & 0xC0) == 0x80) a--;
    b++;
    while (b < p->orig_len && (p->orig[b] & 0xC0) == 0x80) b++;
    *s = (int64_t)a;
    *e = (int64_t)b;
}

static cl_status check_cancel(enc_ctx *c, size_t nbytes);
static int bpe_cancelled(void *enc) { return enc && check_cancel(enc, (size_t)1 << 20) != CL_OK; }

static cl_status enc_nomem(enc_ctx *c) { return cl_fail(c->err, CL_ENOMEM, "tokenizer: out of memory"); }

static cl_status check_cancel(enc_ctx *c, size_t nbytes) {
    *c->since_check += nbytes;
    if (*c->since_check < (1u << 20)) return CL_OK;
    *c->since_check = 0;
    if (c->stop && atomic_load(c->stop)) return cl_fail(c->err, CL_ECANCELLED, "cancelled");
    if (cl_cancel_check(c->cancel)) {
        if (c->stop) atomic_store(c->stop, 1);
        return cl_fail(c->err, CL_ECANCELLED, "cancelled");
    }
    return CL_OK;
}

/* BPE-encode the pre-token p->s[x, y) and emit its tokens */
static cl_status emit_word(enc_ctx *c, const piece_t *p, size_t x, size_t y) {
    const cl_tokenizer *t = c->t;
    tstate *st = c->st;
    const uint8_t *w = p->s + x;
    size_t n = y - x;
    int want = (c->flags & CL_TOK_OFFSETS) != 0;
    if (n == 1 && t->byte_id[w[0]] >= 0) {
        int64_t s = 0, e = 0;
        if (want) piece_span(p, x, y, &s, &e);
        return res_push(c, t->byte_id[w[0]], s, e) ? CL_OK : enc_nomem(c);
    }
    if (t->ignore_merges) {
        /* HF: a word that is itself in the vocabulary is one token */
        if (!grow((void **)&st->mapped, &st->mapped_cap, 2 * n + 1, 1)) return enc_nomem(c);
        size_t ml = 0;
        for (size_t k = 0; k < n; k++) ml += (size_t)u8enc(g_byte_char[w[k]], (uint8_t *)st->mapped + ml);
        int32_t id = smap_get(&t->vocab, t->pool, st->mapped, ml);
        if (id >= 0) {
            int64_t s = 0, e = 0;
            if (want) piece_span(p, x, y, &s, &e);
            return res_push(c, id, s, e) ? CL_OK : enc_nomem(c);
        }
    }
    cache_slot *slot = NULL;
    uint32_t h = 0;
    if (n <= CACHE_KEY) {
        h = (uint32_t)hash_bytes(w, n);
        slot = &st->cache[h & (CACHE_SLOTS - 1)];
        if (slot->klen == n && slot->hash == h && memcmp(slot->key, w, n) == 0) {
            size_t pos = x;
            for (int k = 0; k < slot->n; k++) {
                int32_t id = slot->ids[k];
                size_t tl = t->info[id].byt_len;
                int64_t s = 0, e = 0;
                if (want) piece_span(p, pos, pos + tl, &s, &e);
                if (!res_push(c, id, s, e)) return enc_nomem(c);
                pos += tl;
            }
            return CL_OK;
        }
    }
    long m = bpe_word(t, st, w, n, c);
    if (m == -2) return CL_ECANCELLED; /* c->err filled by check_cancel */
    if (m < 0) return enc_nomem(c);
    /* cache only words whose tokens tile the word exactly (no dropped or unknown bytes) */
    int cacheable = slot != NULL;
    uint32_t expect = 0;
    for (long k = 0; k < m; k++) {
        const sym_t *sy = &st->sym[k];
        if (sy->start != expect || t->info[sy->id].byt_len != sy->end - sy->start) cacheable = 0;
        expect = sy->end;
        int64_t s = 0, e = 0;
        if (want) piece_span(p, x + sy->start, x + sy->end, &s, &e);
        if (!res_push(c, sy->id, s, e)) return enc_nomem(c);
    }
    if (cacheable && m > 0 && expect == n) {
        slot->hash = h;
        slot->klen = (uint8_t)n;
        slot->n = (uint8_t)m;
        memcpy(slot->key, w, n);
        for (long k = 0; k < m; k++) slot->ids[k] = st->sym[k].id;
    }
    return CL_OK;
}

/* pre-tokenize and BPE p->s[a, b) */
static cl_status emit_text(enc_ctx *c, const piece_t *p, size_t a, size_t b) {
    size_t i = a;
    while (i < b) {
        size_t j = pretok_next(p->s, b, i);
        cl_status st = emit_word(c, p, i, j);
        if (st) return st;
        if ((st = check_cancel(c, j - i))) return st;
        i = j;
    }
    return CL_OK;
}

/* added-token matches of a trie in p->s[0, len): gaps go to emit_text */
static cl_status emit_normalized_piece(enc_ctx *c, const piece_t *p) {
    const cl_tokenizer *t = c->t;
    size_t from = 0, gap = 0, ms, me;
    int tk;
    while (trie_find(&t->norm_trie, p->s, p->len, from, &ms, &me, &tk)) {
        const added_tok *at = &t->added[tk];
        from = me;
        if (at->special && !(c->flags & CL_TOK_ALLOW_SPECIAL)) continue; /* consumed, kept as text */
        cl_status st = emit_text(c, p, gap, ms);
        if (st) return st;
        int64_t s = 0, e = 0;
        if (c->flags & CL_TOK_OFFSETS) piece_span(p, ms, me, &s, &e);
        if (!res_push(c, at->id, s, e)) return enc_nomem(c);
        gap = me;
    }
    return emit_text(c, p, gap, p->len);
}

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
static int nfc_piece(tstate *st, const uint8_t *text, size_t a, size_t b, int want, size_t *olen) {
    size_t i = a;
    int any = 0;
    while (i < b) {
        if (text[i] < 0xCC) { /* below U+0300: always stable */
            i++;
            continue;
        }
        int l;
        uint32_t cp = u8dec(text, i, &l);
        if (uprop(cp) & PROP_UNSTABLE) {
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
        if (!(uprop(cp) & PROP_UNSTABLE)) {
            last_stable = (long)p;
            p += (size_t)l;
            continue;
        }
        size_t s = (last_stable >= 0 && (size_t)last_stable >= copied) ? (size_t)last_stable : copied;
        size_t q = p + (size_t)l;
        while (q < b) {
            int l2;
            uint32_t c2 = u8dec(text, q, &l2);
            if (!(uprop(c2) & PROP_UNSTABLE)) break;
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

/* a piece of the raw text between non-normalized added tokens */
static cl_status emit_raw_piece(enc_ctx *c, const uint8_t *text, size_t len, size_t a, size_t b) {
    const cl_tokenizer *t = c->t;
    piece_t p = {text + a, b - a, a, NULL, NULL, text, len};
    if (a == b) return CL_OK;
    if (t->nfc) {
        size_t olen = 0;
        int want = (c->flags & CL_TOK_OFFSETS) != 0;
        int r = nfc_piece(c->st, text, a, b, want, &olen);
        if (r < 0) return enc_nomem(c);
        if (r > 0) {
            p.s = c->st->nbuf;
            p.len = olen;
            if (want) {
                p.astart = c->st->astart;
                p.aend = c->st->aend;
            }
        }
    }
    if (t->norm_trie.empty) return emit_text(c, &p, 0, p.len);
    return emit_normalized_piece(c, &p);
}

static void trim_offsets(const cl_tokenizer *t, cl_tok_result *r) {
    for (size_t i = 0; i < r->n; i++) {
        const id_info *in = &t->info[r->ids[i]];
        int64_t *o = &r->offsets[2 * i];
        size_t lead = in->lead_ws, trail = in->trail_ws;
        if (!lead && !trail) continue;
        if (lead) {
            int is_first = i == 0 || o[0] == 0;
            if (is_first && t->pp_add_prefix_space && lead == 1) lead = 0;
            o[0] = o[0] + (int64_t)lead < o[1] ? o[0] + (int64_t)lead : o[1];
        }
        if (trail && o[1] >= (int64_t)trail) o[1] = o[1] - (int64_t)trail > o[0] ? o[1] - (int64_t)trail : o[0];
    }
}

static cl_status encode_one(const cl_tokenizer *t, tstate *st, const char *text, size_t len,
                            unsigned flags, cl_tok_result *out, const cl_cancel *cancel,
                            atomic_int *stop, size_t *since_check, cl_error *err) {
    out->n = 0;
    size_t bad = cl_utf8_check(text, len);
    if (bad != len) return cl_fail(err, CL_EINVAL, "invalid UTF-8 at byte %zu", bad);
    enc_ctx c = {t, st, out, flags, cancel, stop, since_check, err};
    *since_check += 64; /* a little per document, so that many tiny texts still get checked */
    const uint8_t *s = (const uint8_t *)text;
    size_t from = 0, gap = 0, ms, me;
    int tk;
    cl_status rc;
    while (trie_find(&t->raw_trie, s, len, from, &ms, &me, &tk)) {
        const added_tok *at = &t->added[tk];
        from = me;
        if (at->special && !(flags & CL_TOK_ALLOW_SPECIAL)) continue;
        if ((rc = emit_raw_piece(&c, s, len, gap, ms))) return rc;
        if (!res_push(&c, at->id, (int64_t)ms, (int64_t)me)) return enc_nomem(&c);
        gap = me;
    }
    if ((rc = emit_raw_piece(&c, s, len, gap, len))) return rc;
    if ((flags & CL_TOK_OFFSETS) && (flags & CL_TOK_TRIM_OFFSETS)) trim_offsets(t, out);
    return CL_OK;
}

cl_status cl_tokenizer_encode(const cl_tokenizer *tok, const char *text, size_t len, unsigned flags,
                              cl_tok_result *out, const cl_cancel *cancel, cl_error *err) {
    if (!tok || !out || (!text && len)) return cl_fail(err, CL_EINVAL, "cl_tokenizer_encode: NULL argument");
    tstate *st = tstate_borrow(tok);
    if (!st) return cl_fail(err, CL_ENOMEM, "tokenizer: out of memory");
    size_t since_check = 0;
    cl_status rc = encode_one(tok, st, text ? text : "", len, flags, out, cancel, NULL, &since_check, err);
    tstate_return(tok, st);
    return rc;
}

cl_status cl_tokenizer_encode_batch(const cl_tokenizer *tok, size_t n, const char *const *texts,
                                    const size_t *lens, unsigned flags, int num_threads,
                                    cl_tok_result *outs, const cl_cancel *cancel, cl_error *err) {
    if (!tok || (n && (!texts || !lens || !outs)))
        return cl_fail(err, CL_EINVAL, "cl_tokenizer_encode_batch: NULL argument");
    if (n == 0) return CL_OK;
    int nt = num_threads > 0 ? num_threads : cl_num_threads();
    if ((size_t)nt > n) nt = (int)n;
    atomic_int stop = 0;
    cl_status first = CL_OK;
    cl_error first_err = {CL_OK, ""};
#pragma omp parallel num_threads(nt)
    {
        int me = omp_get_thread_num();
        tstate *st = tstate_borrow(tok);
        size_t since_check = 0;
        const cl_cancel *cc = me == 0 ? cancel : NULL; /* only the thread that released the GIL */
        cl_error lerr = {CL_OK, ""};
        if (!st) {
            cl_fail(&lerr, CL_ENOMEM, "tokenizer: out of memory");
            atomic_store(&stop, 1);
        }
#pragma omp for schedule(dynamic, 4)
        for (size_t i = 0; i < n; i++) {
            if (atomic_load(&stop)) continue;
            cl_status rc = encode_one(tok, st, texts[i] ? texts[i] : "", texts[i] ? lens[i] : 0,
                                      flags, &outs[i], cc, &stop, &since_check, &lerr);
            if (rc) {
                if (rc != CL_ECANCELLED) {
                    char m[sizeof lerr.msg];
                    snprintf(m, sizeof m, "%s", lerr.msg);
                    cl_fail(&lerr, rc, "text %zu: %s", i, m);
                }
                atomic_store(&stop, 1);
            }
        }
        tstate_return(tok, st);
#pragma omp critical(cl_tok_batch_err)
        {
            if (lerr.code != CL_OK && (first == CL_OK || first == CL_ECANCELLED)) {
                if (!(first == CL_ECANCELLED && lerr.code == CL_ECANCELLED)) {
                    first = lerr.code;
                    first_err = lerr;
                }
            }
        }
    }
    if (first != CL_OK) {
        if (err) *err = first_err;
        return first;
    }
    return CL_OK;
}

void cl_tok_result_free(cl_tok_result *r) {
    if (!r) return;
    free(r->ids);
    free(r->offsets);
    r->ids = NULL;
    r->offsets = NULL;
    r->n = r->cap = r->offsets_cap = 0;
}

cl_status cl_tokenizer_nfc(const char *text, size_t len, char **out, size_t *out_len, cl_error *err) {
    *out = NULL;
    *out_len = 0;
    size_t bad = cl_utf8_check(text, len);
    if (bad != len) return cl_fail(err, CL_EINVAL, "invalid UTF-8 at byte %zu", bad);
    tstate *st = tstate_new();
    if (!st) return cl_fail(err, CL_ENOMEM, "out of memory");
    size_t olen = 0;
    int r = nfc_piece(st, (const uint8_t *)text, 0, len, 0, &olen);
    const char *src = r > 0 ? (const char *)st->nbuf : text;
    size_t n = r > 0 ? olen : len;
    char *o = r >= 0 ? malloc(n + 1) : NULL;
    if (!o) {
        tstate_free(st);
        return cl_fail(err, CL_ENOMEM, "out of memory");
    }
    if (n) memcpy(o, src, n);
    o[n] = '\0';
    tstate_free(st);
    *out = o;
    *out_len = n;
    return CL_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* decoding and lookups                                                                       */

cl_status cl_tokenizer_decode(const cl_tokenizer *t, const int32_t *ids, size_t n, int skip_special,
                              char **out, size_t *out_len, cl_error *err) {
    *out = NULL;
    *out_len = 0;
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t id = ids[i];
        if (id < 0 || id >= t->n_ids || !(t->info[id].flags & ID_EXISTS))
            return cl_fail(err, CL_EINVAL, "decode: token id %d (position %zu) is not in the vocabulary "
                           "(size %d)", (int)id, i, (int)t->n_ids);
        if (skip_special && (t->info[id].flags & ID_SPECIAL)) continue;
        total += t->info[id].byt_len;
    }
    char *o = malloc(total + 1);
    if (!o) return cl_fail(err, CL_ENOMEM, "decode: out of memory");
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        const id_info *in = &t->info[ids[i]];
        if (skip_special && (in->flags & ID_SPECIAL)) continue;
        memcpy(o + k, t->pool + in->byt_off, in->byt_len);
        k += in->byt_len;
    }
    o[k] = '\0';
    *out = o;
    *out_len = k;
    return CL_OK;
}

const char *cl_tokenizer_id_to_token(const cl_tokenizer *t, int32_t id, size_t *len) {
    if (id < 0 || id >= t->n_ids || !(t->info[id].flags & ID_EXISTS)) return NULL;
    *len = t->info[id].str_len;
    return t->pool + t->info[id].str_off;
}

const char *cl_tokenizer_id_to_bytes(const cl_tokenizer *t, int32_t id, size_t *len) {
    if (id < 0 || id >= t->n_ids || !(t->info[id].flags & ID_EXISTS)) return NULL;
    *len = t->info[id].byt_len;
    return t->pool + t->info[id].byt_off;
}

int32_t cl_tokenizer_token_to_id(const cl_tokenizer *t, const char *s, size_t len) {
    for (int i = 0; i < t->n_added; i++)
        if (t->added[i].len == len && memcmp(t->pool + t->added[i].off, s, len) == 0) return t->added[i].id;
    return smap_get(&t->vocab, t->pool, s, len);
}

int cl_tokenizer_is_special(const cl_tokenizer *t, int32_t id) {
    return id >= 0 && id < t->n_ids && (t->info[id].flags & ID_SPECIAL) != 0;
}

void cl_tokenizer_get_info(const cl_tokenizer *t, cl_tokenizer_info *info) {
    info->vocab_size = t->n_ids;
    info->bos_id = t->bos_id;
    info->eos_id = t->eos_id;
    info->pad_id = t->pad_id;
    info->unk_id = t->unk_id;
    info->nfc = t->nfc;
    info->trim_offsets = t->trim_offsets;
    info->add_prefix_space = t->pp_add_prefix_space;
    info->n_added = t->n_added;
    info->source = t->source;
}

void cl_offsets_bytes_to_chars(const char *text, size_t len, int64_t *offsets, size_t n_offsets) {
    /* offsets move locally: walk from one to the next, forward or back */
    const uint8_t *s = (const uint8_t *)text;
    size_t pos = 0, chars = 0; /* chars = number of characters starting before pos */
    for (size_t k = 0; k < n_offsets; k++) {
        int64_t o = offsets[k];
        if (o < 0 || (uint64_t)o > len) continue;
        size_t target = (size_t)o;
        while (pos > target) {
            pos--;
            if ((s[pos] & 0xC0) != 0x80) chars--;
        }
        while (pos < target) {
            if ((s[pos] & 0xC0) != 0x80) chars++;
            pos++;
        }
        /* inside a character: its index (the character started before target) */
        if (target < len && (s[target] & 0xC0) == 0x80) offsets[k] = (int64_t)chars - 1;
        else offsets[k] = (int64_t)chars;
    }
}

/* ------------------------------------------------------------------------------------------ */
/* loading                                                                                    */

void cl_tokenizer_free(cl_tokenizer *t) {
    if (!t) return;
    free(t->info);
    free(t->pool);
    free(t->vocab.slots);
    free(t->merges.keys);
    free(t->merges.rank);
    free(t->merges.merged);
    free(t->added);
    free(t->raw_trie.nodes);
    free(t->norm_trie.nodes);
    free(t->source);
    for (int k = 0; k < CL_TOK_SPARES; k++) tstate_free(t->spare[k]);
    free(t);
}

static const char *base_name(const char *path) {
    const char *b = strrchr(path, '/');
    return b ? b + 1 : path;
}

static void line_col(const char *data, size_t off, int *line, int *col) {
    int l = 1, c = 1;
    for (size_t i = 0; i < off; i++) {
        if (data[i] == '\n') {
            l++;
            c = 1;
        } else c++;
    }
    *line = l;
    *col = c;
}

/* length of a prefix of s[0, n) of at most 60 bytes that ends on a character boundary: file
 * content quoted in a message stays short and valid UTF-8 */
static int clip(const char *s, size_t n) {
    if (n <= 60) return (int)n;
    size_t k = 60;
    while (k > 0 && ((uint8_t)s[k] & 0xC0) == 0x80) k--;
    return (int)k;
}
#define CLIP(s) clip((s), strlen(s)), (s)
#define CLIPN(s, n) clip((s), (n)), (s)

/* a message cut by the fixed-size buffer (or quoting a file) must still be UTF-8 for the binding */
static void msg_fix_utf8(cl_error *err) {
    if (!err) return;
    size_t len = strlen(err->msg), bad;
    while ((bad = cl_utf8_check(err->msg, len)) != len) {
        size_t k = bad + 1;
        while (k < len && ((uint8_t)err->msg[k] & 0xC0) == 0x80) k++;
        if (k == len) { /* an incomplete character at the end */
            err->msg[bad] = '\0';
            len = bad;
        } else {
            err->msg[bad] = '?';
        }
    }
}

/* every string we read from a file must be UTF-8, as Rust's serde_json and BufRead::lines demand */
static cl_status check_file_utf8(const char *path, const char *data, size_t len, cl_error *err) {
    size_t bad = cl_utf8_check(data, len);
    if (bad == len) return CL_OK;
    int line, col;
    line_col(data, bad, &line, &col);
    return cl_fail(err, CL_EFORMAT, "%s:%d:%d: invalid UTF-8 (byte 0x%02X)", path, line, col, (unsigned)(uint8_t)data[bad]);
}

/* parse a JSON file; bad JSON -> CL_EFORMAT "path:line:col: invalid JSON" */
static cl_status json_load(const char *path, cJSON **root, cl_error *err) {
    *root = NULL;
    char *data = NULL;
    size_t len = 0;
    cl_status st = cl_read_file(path, &data, &len, err);
    if (st) return st;
    if ((st = check_file_utf8(path, data, len, err))) {
        free(data);
        return st;
    }
    const char *end = NULL;
    cJSON *r = cJSON_ParseWithLengthOpts(data, len, &end, 0);
    if (!r) {
        size_t off = end && end >= data && end <= data + len ? (size_t)(end - data) : 0;
        int line, col;
        line_col(data, off, &line, &col);
        char near[24] = "";
        size_t k = 0;
        for (size_t i = off; i < len && k < 20; i++) near[k++] = (data[i] == '\n' || data[i] == '\r') ? ' ' : data[i];
        near[k] = '\0';
        free(data);
        return cl_fail(err, CL_EFORMAT, "%s:%d:%d: invalid JSON near '%.*s'", path, line, col, CLIP(near));
    }
    /* trailing garbage after the value */
    if (end) {
        size_t off = (size_t)(end - data);
        while (off < len && (data[off] == ' ' || data[off] == '\n' || data[off] == '\r' || data[off] == '\t')) off++;
        if (off < len) {
            int line, col;
            line_col(data, off, &line, &col);
            free(data);
            cJSON_Delete(r);
            return cl_fail(err, CL_EFORMAT, "%s:%d:%d: invalid JSON: unexpected data after the top-level value",
                           path, line, col);
        }
    }
    free(data);
    *root = r;
    return CL_OK;
}

static int file_exists(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
}

static char *join_path(const char *dir, const char *name) {
    size_t a = strlen(dir), b = strlen(name);
    char *p = malloc(a + b + 2);
    if (!p) return NULL;
    memcpy(p, dir, a);
    size_t k = a;
    if (k && p[k - 1] != '/') p[k++] = '/';
    memcpy(p + k, name, b + 1);
    return p;
}

/* an id value: a JSON integer in [0, MAX_TOKEN_ID) */
static int json_id(const cJSON *v, int32_t *id) {
    if (!cJSON_IsNumber(v)) return 0;
    double d = v->valuedouble;
    if (!(d >= 0 && d < MAX_TOKEN_ID) || d != (double)(int32_t)d) return 0;
    *id = (int32_t)d;
    return 1;
}

typedef struct {
    uint32_t off, len;
    int32_t id;
} vocab_ent;

/* decoded bytes of a token string: each char through GPT-2's byte map when all chars map,
 * else the UTF-8 string itself (HF's ByteLevel decoder) */
static int token_bytes(const char *s, size_t n, uint8_t *out, size_t *outn) {
    size_t k = 0;
    size_t i = 0;
    const uint8_t *u = (const uint8_t *)s;
    while (i < n) {
        int l;
        uint32_t cp = u8dec(u, i, &l);
        if (cp >= 0x144 || g_char_byte[cp] < 0) {
            memcpy(out, s, n);
            *outn = n;
            return 0;
        }
        out[k++] = (uint8_t)g_char_byte[cp];
        i += (size_t)l;
    }
    *outn = k;
    return 1;
}

static void count_ws(const char *s, size_t n, uint16_t *lead, uint16_t *trail) {
    const uint8_t *u = (const uint8_t *)s;
    size_t i = 0, nl = 0, nt = 0;
    int leading = 1;
    while (i < n) {
        int l;
        uint32_t cp = u8dec(u, i, &l);
        int ws = cp == 0x120 || (uprop(cp) & 3) == CLS_SPACE;
        if (leading && ws) nl++;
        else leading = 0;
        nt = ws ? nt + 1 : 0;
        i += (size_t)l;
    }
    *lead = (uint16_t)(nl > 65535 ? 65535 : nl);
    *trail = (uint16_t)(nt > 65535 ? 65535 : nt);
}

typedef struct {
    cl_tokenizer *t;
    vocab_ent *ents;
    size_t n_ents, cap_ents;
    cl_error *err;
} builder;

/* add a model vocabulary entry (string s of n bytes, id) */
static cl_status add_vocab(builder *b, const char *file, const char *s, size_t n, int32_t id) {
    cl_tokenizer *t = b->t;
    uint32_t off;
    if (!pool_add(t, s, n, &off)) return cl_fail(b->err, CL_ENOMEM, "%s: out of memory", file);
    int32_t old = smap_put(&t->vocab, t->pool, off, (uint32_t)n, id);
    if (old >= 0)
        return cl_fail(b->err, CL_EFORMAT, "%s: field \"%.*s\": the token appears twice in the vocabulary", file,
                       CLIPN(s, n));
    if (!grow((void **)&b->ents, &b->cap_ents, b->n_ents + 1, sizeof *b->ents))
        return cl_fail(b->err, CL_ENOMEM, "%s: out of memory", file);
    b->ents[b->n_ents++] = (vocab_ent){off, (uint32_t)n, id};
    return CL_OK;
}

/* vocabulary object {"token": id, ...} */
static cl_status load_vocab_object(builder *b, const char *file, const char *field, const cJSON *obj) {
    if (!cJSON_IsObject(obj))
        return cl_fail(b->err, CL_EFORMAT, "%s: %s must be a JSON object {\"token\": id}", file, field);
    size_t n = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, obj) n++;
    if (!smap_init(&b->t->vocab, n + 1)) return cl_fail(b->err, CL_ENOMEM, "%s: out of memory", file);
    cJSON_ArrayForEach(it, obj) {
        int32_t id;
        if (!it->string) return cl_fail(b->err, CL_EFORMAT, "%s: %s: entry without a key", file, field);
        if (!json_id(it, &id))
            return cl_fail(b->err, CL_EFORMAT, "%s: %s[\"%.*s\"]: the id must be an integer in [0, %d)", file,
                           field, CLIP(it->string), MAX_TOKEN_ID);
        cl_status st = add_vocab(b, file, it->string, strlen(it->string), id);
        if (st) return st;
    }
    return CL_OK;
}

static int cmp_ent_id(const void *a, const void *b) {
    const vocab_ent *x = a, *y = b;
    return (x->id > y->id) - (x->id < y->id);
}

/* check ids are unique; size info[] */
static cl_status finish_vocab(builder *b, const char *file, const char *field) {
    cl_tokenizer *t = b->t;
    if (b->n_ents == 0) return cl_fail(b->err, CL_EFORMAT, "%s: %s is empty", file, field);
    qsort(b->ents, b->n_ents, sizeof *b->ents, cmp_ent_id);
    for (size_t i = 1; i < b->n_ents; i++)
        if (b->ents[i].id == b->ents[i - 1].id)
            return cl_fail(b->err, CL_EFORMAT, "%s: %s: duplicate id %d, used by \"%.*s\" and \"%.*s\"", file, field,
                           (int)b->ents[i].id, CLIP(t->pool + b->ents[i - 1].off), CLIP(t->pool + b->ents[i].off));
    t->model_size = (int32_t)b->n_ents;
    return CL_OK;
}

/* a merge (a, b); where names the location for errors ("merges.txt:12" / "file: model.merges[3]") */
static cl_status add_merge(builder *b, const char *where, const char *a, size_t na, const char *bb, size_t nb,
                           uint32_t rank) {
    cl_tokenizer *t = b->t;
    int32_t ia = smap_get(&t->vocab, t->pool, a, na);
    if (ia < 0) return cl_fail(b->err, CL_EFORMAT, "%s: merge \"%.*s %.*s\": token \"%.*s\" is not in the vocabulary",
                               where, CLIPN(a, na), CLIPN(bb, nb), CLIPN(a, na));
    int32_t ib = smap_get(&t->vocab, t->pool, bb, nb);
    if (ib < 0) return cl_fail(b->err, CL_EFORMAT, "%s: merge \"%.*s %.*s\": token \"%.*s\" is not in the vocabulary",
                               where, CLIPN(a, na), CLIPN(bb, nb), CLIPN(bb, nb));
    char stackbuf[256];
    char *cat = na + nb <= sizeof stackbuf ? stackbuf : malloc(na + nb);
    if (!cat) return cl_fail(b->err, CL_ENOMEM, "out of memory");
    memcpy(cat, a, na);
    memcpy(cat + na, bb, nb);
    int32_t im = smap_get(&t->vocab, t->pool, cat, na + nb);
    if (cat != stackbuf) free(cat);
    if (im < 0) return cl_fail(b->err, CL_EFORMAT, "%s: merge \"%.*s %.*s\": the merged token \"%.*s%.*s\" is not in the vocabulary",
                               where, CLIPN(a, na), CLIPN(bb, nb), CLIPN(a, na), CLIPN(bb, nb));
    mmap_put(&t->merges, ia, ib, rank, im);
    return CL_OK;
}

static cl_status load_merges_txt(builder *b, const char *path) {
    char *data = NULL;
    size_t len = 0;
    cl_status st = cl_read_file(path, &data, &len, b->err);
    if (st) return st;
    if ((st = check_file_utf8(path, data, len, b->err))) {
        free(data);
        return st;
    }
    size_t lines = 1;
    for (size_t i = 0; i < len; i++) lines += data[i] == '\n';
    if (!mmap_init(&b->t->merges, lines)) {
        free(data);
        return cl_fail(b->err, CL_ENOMEM, "%s: out of memory", path);
    }
    uint32_t rank = 0;
    size_t i = 0;
    int lineno = 0;
    char where[600];
    while (i < len) {
        size_t e = i;
        while (e < len && data[e] != '\n') e++;
        size_t ll = e;
        lineno++;
        if (ll > i && data[ll - 1] == '\r') ll--;
        const char *line = data + i;
        size_t n = ll - i;
        i = e + (e < len);
        if (n >= 8 && memcmp(line, "#version", 8) == 0) continue;
        /* HF: split(' ') must give exactly two parts */
        const char *sp = memchr(line, ' ', n);
        snprintf(where, sizeof where, "%s:%d", path, lineno);
        if (!sp || memchr(sp + 1, ' ', n - (size_t)(sp + 1 - line))) {
            /* the message quotes the line: format it before freeing the text it points into */
            st = cl_fail(b->err, CL_EFORMAT, "%s: expected two tokens separated by one space, got \"%.*s\"",
                         where, CLIPN(line, n));
            free(data);
            return st;
        }
        st = add_merge(b, where, line, (size_t)(sp - line), sp + 1, n - (size_t)(sp + 1 - line), rank++);
        if (st) {
            free(data);
            return st;
        }
    }
    free(data);
    return CL_OK;
}

static cl_status load_merges_json(builder *b, const char *path, const cJSON *merges) {
    if (!cJSON_IsArray(merges))
        return cl_fail(b->err, CL_EFORMAT, "%s: model.merges must be an array", path);
    int n = cJSON_GetArraySize(merges);
    if (!mmap_init(&b->t->merges, (size_t)n + 1)) return cl_fail(b->err, CL_ENOMEM, "%s: out of memory", path);
    const cJSON *it;
    uint32_t rank = 0;
    char where[600];
    cJSON_ArrayForEach(it, merges) {
        snprintf(where, sizeof where, "%s: model.merges[%u]", path, rank);
        const char *a, *bb;
        size_t na, nb;
        if (cJSON_IsString(it)) {
            const char *s = it->valuestring;
            size_t n2 = strlen(s);
            const char *sp = strchr(s, ' ');
            if (!sp || strchr(sp + 1, ' '))
                return cl_fail(b->err, CL_EFORMAT, "%s: expected \"a b\" (two tokens, one space), got \"%.*s\"", where, CLIP(s));
            a = s;
            na = (size_t)(sp - s);
            bb = sp + 1;
            nb = n2 - na - 1;
        } else if (cJSON_IsArray(it) && cJSON_GetArraySize(it) == 2 && cJSON_IsString(it->child) &&
                   cJSON_IsString(it->child->next)) {
            a = it->child->valuestring;
            na = strlen(a);
            bb = it->child->next->valuestring;
            nb = strlen(bb);
        } else {
            return cl_fail(b->err, CL_EFORMAT, "%s: expected a string \"a b\" or a pair [\"a\", \"b\"]", where);
        }
        cl_status st = add_merge(b, where, a, na, bb, nb, rank++);
        if (st) return st;
    }
    return CL_OK;
}

/* lay out info[] for model ids */
static cl_status build_info(builder *b, const char *file) {
    cl_tokenizer *t = b->t;
    int32_t n_ids = 0;
    for (size_t i = 0; i < b->n_ents; i++)
        if (b->ents[i].id + 1 > n_ids) n_ids = b->ents[i].id + 1;
    for (int i = 0; i < t->n_added; i++)
        if (t->added[i].id + 1 > n_ids) n_ids = t->added[i].id + 1;
    t->n_ids = n_ids;
    t->info = calloc((size_t)n_ids, sizeof *t->info);
    if (!t->info) return cl_fail(b->err, CL_ENOMEM, "%s: out of memory", file);
    size_t maxlen = 0;
    for (size_t i = 0; i < b->n_ents; i++) maxlen = b->ents[i].len > maxlen ? b->ents[i].len : maxlen;
    for (int i = 0; i < t->n_added; i++) maxlen = t->added[i].len > maxlen ? t->added[i].len : maxlen;
    uint8_t *tmp = malloc(maxlen + 1);
    if (!tmp) return cl_fail(b->err, CL_ENOMEM, "%s: out of memory", file);
    for (size_t pass = 0; pass < 2; pass++) {
        size_t cnt = pass == 0 ? b->n_ents : (size_t)t->n_added;
        for (size_t i = 0; i < cnt; i++) {
            uint32_t off, len;
            int32_t id;
            if (pass == 0) {
                off = b->ents[i].off;
                len = b->ents[i].len;
                id = b->ents[i].id;
            } else {
                off = t->added[i].off;
                len = t->added[i].len;
                id = t->added[i].id;
            }
            id_info *in = &t->info[id];
            size_t bl;
            token_bytes(t->pool + off, len, tmp, &bl);
            uint32_t boff;
            if (!pool_add(t, tmp, bl, &boff)) {
                free(tmp);
                return cl_fail(b->err, CL_ENOMEM, "%s: out of memory", file);
            }
            in->str_off = off;
            in->str_len = len;
            in->byt_off = boff;
            in->byt_len = (uint32_t)bl;
            count_ws(t->pool + off, len, &in->lead_ws, &in->trail_ws);
            in->flags |= ID_EXISTS | (pass == 0 ? ID_MODEL : ID_ADDED);
            if (pass == 1 && t->added[i].special) in->flags |= ID_SPECIAL;
        }
    }
    free(tmp);
    /* byte-level alphabet */
    for (int by = 0; by < 256; by++) {
        uint8_t u[4];
        int l = u8enc(g_byte_char[by], u);
        t->byte_id[by] = smap_get(&t->vocab, t->pool, (const char *)u, (size_t)l);
    }
    return CL_OK;
}

/* register an added token (content s, n bytes) with HF's id assignment. file_id < 0: no id given
 * in the file (GPT-2 layout). */
static cl_status add_added(builder *b, const char *file, int index, const char *s, size_t n, int32_t file_id,
                           int special, int normalized) {
    cl_tokenizer *t = b->t;
    if (n == 0) return CL_OK; /* HF ignores empty added tokens */
    for (int i = 0; i < t->n_added; i++)
        if (t->added[i].len == n && memcmp(t->pool + t->added[i].off, s, n) == 0) {
            if (file_id < 0) { /* GPT-2 layout: a token named twice (config files): keep, upgrade */
                if (special) t->added[i].special = 1;
                return CL_OK;
            }
            return cl_fail(b->err, CL_EFORMAT, "%s: added_tokens[%d]: \"%.*s\" duplicates an earlier added token",
                           file, index, CLIPN(s, n));
        }
    /* HF: the model's id when the content is in the model vocabulary, else max(added) + 1 or the
     * model size */
    int32_t id = smap_get(&t->vocab, t->pool, s, n);
    if (id < 0) {
        int32_t mx = -1;
        for (int i = 0; i < t->n_added; i++) mx = t->added[i].id > mx ? t->added[i].id : mx;
        id = (mx >= t->model_size || t->model_size == 0) ? mx + 1 : t->model_size;
        if (mx < 0) id = t->model_size;
    }
    if (file_id >= 0 && file_id != id)
        return cl_fail(b->err, CL_EFORMAT,
                       "%s: added_tokens[%d].id: \"%.*s\" has id %d but Hugging Face assigns it id %d (model vocabulary "
                       "of %d entries, added tokens in order); fix the id", file, index, CLIPN(s, n), (int)file_id, (int)id,
                       (int)t->model_size);
    if (id >= MAX_TOKEN_ID) return cl_fail(b->err, CL_EFORMAT, "%s: added_tokens[%d]: id too large", file, index);
    uint32_t off;
    if (!pool_add(t, s, n, &off)) return cl_fail(b->err, CL_ENOMEM, "%s: out of memory", file);
    added_tok *na = realloc(t->added, ((size_t)t->n_added + 1) * sizeof *na);
    if (!na) return cl_fail(b->err, CL_ENOMEM, "%s: out of memory", file);
    t->added = na;
    t->added[t->n_added++] = (added_tok){off, (uint32_t)n, id, (uint8_t)(special != 0), (uint8_t)(normalized != 0)};
    return CL_OK;
}

static cl_status build_tries(builder *b, const char *file) {
    cl_tokenizer *t = b->t;
    t->raw_trie.empty = 1;
    t->norm_trie.empty = 1;
    /* HF order: special tokens first, then the others; for equal content the first wins */
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < t->n_added; i++) {
            added_tok *a = &t->added[i];
            if ((pass == 0) != (a->special != 0)) continue;
            /* normalized tokens are matched on normalized text: normalize their content too */
            trie *tr = a->normalized ? &t->norm_trie : &t->raw_trie;
            const uint8_t *s = (const uint8_t *)t->pool + a->off;
            size_t n = a->len;
            char *norm = NULL;
            size_t nn = 0;
            if (a->normalized && t->nfc) {
                cl_status st = cl_tokenizer_nfc((const char *)s, n, &norm, &nn, b->err);
                if (st) return st;
                s = (const uint8_t *)norm;
                n = nn;
            }
            int ok = n == 0 || trie_add(tr, s, n, i);
            free(norm);
            if (!ok) return cl_fail(b->err, CL_ENOMEM, "%s: out of memory", file);
        }
    return CL_OK;
}

static int json_bool(const cJSON *obj, const char *key, int dflt) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (cJSON_IsBool(v)) return cJSON_IsTrue(v);
    return dflt;
}

static const char *json_type(const cJSON *obj) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, "type");
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static cl_status load_tokenizer_json(builder *b, const char *path) {
    cl_tokenizer *t = b->t;
    cJSON *root = NULL;
    cl_status st = json_load(path, &root, b->err);
    if (st) return st;
    cl_error *err = b->err;
#define FAIL(...)                                  \
    do {                                           \
        st = cl_fail(err, CL_EFORMAT, __VA_ARGS__); \
        goto done;                                 \
    } while (0)
    if (!cJSON_IsObject(root)) FAIL("%s: the top level must be a JSON object", path);
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    if (!cJSON_IsObject(model)) FAIL("%s: field \"model\" is missing or not an object", path);
    const char *mtype = json_type(model);
    if (mtype && strcmp(mtype, "BPE") != 0)
        FAIL("%s: model.type \"%s\" is not supported (only \"BPE\", byte-level)", path, mtype);
    if (!mtype && !cJSON_GetObjectItemCaseSensitive(model, "merges"))
        FAIL("%s: model.type is missing and the model has no merges: only BPE is supported", path);
    {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(model, "dropout");
        if (v && !cJSON_IsNull(v) && !(cJSON_IsNumber(v) && v->valuedouble == 0.0))
            FAIL("%s: model.dropout is not supported (must be null)", path);
        const char *keys[2] = {"continuing_subword_prefix", "end_of_word_suffix"};
        for (int k = 0; k < 2; k++) {
            v = cJSON_GetObjectItemCaseSensitive(model, keys[k]);
            if (v && !cJSON_IsNull(v) && !(cJSON_IsString(v) && v->valuestring[0] == '\0'))
                FAIL("%s: model.%s is not supported (must be null)", path, keys[k]);
        }
        if (json_bool(model, "byte_fallback", 0)) FAIL("%s: model.byte_fallback=true is not supported", path);
        t->fuse_unk = json_bool(model, "fuse_unk", 0);
        t->ignore_merges = json_bool(model, "ignore_merges", 0);
    }
    st = load_vocab_object(b, path, "model.vocab", cJSON_GetObjectItemCaseSensitive(model, "vocab"));
    if (st) goto done;
    if ((st = finish_vocab(b, path, "model.vocab"))) goto done;
    st = load_merges_json(b, path, cJSON_GetObjectItemCaseSensitive(model, "merges"));
    if (st) goto done;
    {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(model, "unk_token");
        if (v && !cJSON_IsNull(v)) {
            if (!cJSON_IsString(v)) FAIL("%s: model.unk_token must be a string or null", path);
            t->unk_id = smap_get(&t->vocab, t->pool, v->valuestring, strlen(v->valuestring));
            if (t->unk_id < 0) FAIL("%s: model.unk_token \"%.*s\" is not in model.vocab", path, CLIP(v->valuestring));
        }
    }
    /* normalizer: none or NFC (possibly inside a Sequence) */
    {
        const cJSON *nz = cJSON_GetObjectItemCaseSensitive(root, "normalizer");
        if (nz && !cJSON_IsNull(nz)) {
            const char *ty = json_type(nz);
            if (ty && strcmp(ty, "NFC") == 0) t->nfc = 1;
            else if (ty && strcmp(ty, "Sequence") == 0) {
                const cJSON *arr = cJSON_GetObjectItemCaseSensitive(nz, "normalizers"), *it;
                if (!cJSON_IsArray(arr)) FAIL("%s: normalizer.normalizers must be an array", path);
                int k = 0;
                cJSON_ArrayForEach(it, arr) {
                    const char *t2 = json_type(it);
                    if (!t2 || strcmp(t2, "NFC") != 0)
                        FAIL("%s: normalizer.normalizers[%d].type \"%s\" is not supported (only NFC)", path, k,
                             t2 ? t2 : "?");
                    t->nfc = 1;
                    k++;
                }
            } else FAIL("%s: normalizer.type \"%s\" is not supported (only NFC or null)", path, ty ? ty : "?");
        }
    }
    /* pre-tokenizer: ByteLevel, no prefix space, GPT-2 regex */
    {
        const cJSON *pt = cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer");
        const char *ty = pt ? json_type(pt) : NULL;
        if (!ty || strcmp(ty, "ByteLevel") != 0)
            FAIL("%s: pre_tokenizer.type \"%s\" is not supported (only ByteLevel)", path, ty ? ty : "null");
        if (json_bool(pt, "add_prefix_space", 0))
            FAIL("%s: pre_tokenizer.add_prefix_space=true is not supported", path);
        if (!json_bool(pt, "use_regex", 1)) FAIL("%s: pre_tokenizer.use_regex=false is not supported", path);
    }
    {
        const cJSON *dc = cJSON_GetObjectItemCaseSensitive(root, "decoder");
        const char *ty = dc && !cJSON_IsNull(dc) ? json_type(dc) : NULL;
        if (dc && !cJSON_IsNull(dc) && (!ty || strcmp(ty, "ByteLevel") != 0))
            FAIL("%s: decoder.type \"%s\" is not supported (only ByteLevel)", path, ty ? ty : "?");
    }
    {
        const cJSON *pp = cJSON_GetObjectItemCaseSensitive(root, "post_processor");
        if (pp && !cJSON_IsNull(pp)) {
            const char *ty = json_type(pp);
            if (ty && strcmp(ty, "ByteLevel") == 0) {
                t->trim_offsets = json_bool(pp, "trim_offsets", 1);
                t->pp_add_prefix_space = json_bool(pp, "add_prefix_space", 1);
            } else if (ty && strcmp(ty, "TemplateProcessing") == 0) {
                const cJSON *sp = cJSON_GetObjectItemCaseSensitive(pp, "special_tokens");
                if (sp && cJSON_GetArraySize(sp) > 0)
                    FAIL("%s: post_processor: TemplateProcessing that adds special tokens is not supported", path);
            } else FAIL("%s: post_processor.type \"%s\" is not supported (ByteLevel or null)", path, ty ? ty : "?");
        }
    }
    /* added tokens */
    {
        const cJSON *arr = cJSON_GetObjectItemCaseSensitive(root, "added_tokens"), *it;
        if (arr && !cJSON_IsNull(arr)) {
            if (!cJSON_IsArray(arr)) FAIL("%s: added_tokens must be an array", path);
            int k = 0;
            cJSON_ArrayForEach(it, arr) {
                const cJSON *content = cJSON_GetObjectItemCaseSensitive(it, "content");
                int32_t id;
                if (!cJSON_IsObject(it) || !cJSON_IsString(content))
                    FAIL("%s: added_tokens[%d].content must be a string", path, k);
                if (!json_id(cJSON_GetObjectItemCaseSensitive(it, "id"), &id))
                    FAIL("%s: added_tokens[%d].id must be an integer in [0, %d)", path, k, MAX_TOKEN_ID);
                const char *opts[3] = {"single_word", "lstrip", "rstrip"};
                for (int o = 0; o < 3; o++)
                    if (json_bool(it, opts[o], 0))
                        FAIL("%s: added_tokens[%d].%s=true is not supported", path, k, opts[o]);
                int special = json_bool(it, "special", 0);
                int normalized = json_bool(it, "normalized", !special);
                st = add_added(b, path, k, content->valuestring, strlen(content->valuestring), id, special,
                               normalized);
                if (st) goto done;
                k++;
            }
        }
    }
    st = CL_OK;
done:
#undef FAIL
    cJSON_Delete(root);
    return st;
}

static cl_status load_vocab_json(builder *b, const char *path) {
    cJSON *root = NULL;
    cl_status st = json_load(path, &root, b->err);
    if (st) return st;
    st = load_vocab_object(b, path, "the vocabulary", root);
    if (!st) st = finish_vocab(b, path, "the vocabulary");
    cJSON_Delete(root);
    return st;
}

/* a special-token entry of tokenizer_config.json / special_tokens_map.json: "str" or {"content": "str"} */
static const char *token_entry(const cJSON *v) {
    if (cJSON_IsString(v)) return v->valuestring;
    if (cJSON_IsObject(v)) {
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(v, "content");
        if (cJSON_IsString(c)) return c->valuestring;
    }
    return NULL;
}

/* bos / eos / pad: tokenizer_config.json, then special_tokens_map.json, then config.json, then the
 * tokenizer's own tokens ("<|endoftext|>" for BOS/EOS, "<|padding|>" else EOS for pad) */
static cl_status resolve_special_ids(builder *b, const char *dir, int gpt2_layout) {
    cl_tokenizer *t = b->t;
    static const char *names[3] = {"bos", "eos", "pad"};
    int32_t *slots[3] = {&t->bos_id, &t->eos_id, &t->pad_id};
    int found[3] = {0, 0, 0};
    static const char *files[3] = {"tokenizer_config.json", "special_tokens_map.json", "config.json"};
    cl_status st = CL_OK;
    for (int f = 0; f < 3; f++) {
        char *p = join_path(dir, files[f]);
        if (!p) return cl_fail(b->err, CL_ENOMEM, "out of memory");
        if (!file_exists(p)) {
            free(p);
            continue;
        }
        cJSON *root = NULL;
        st = json_load(p, &root, b->err);
        if (st) {
            free(p);
            return st;
        }
        if (!cJSON_IsObject(root)) {
            cJSON_Delete(root);
            st = cl_fail(b->err, CL_EFORMAT, "%s: the top level must be a JSON object", p);
            free(p);
            return st;
        }
        for (int k = 0; k < 3 && !st; k++) {
            if (found[k]) continue;
            char key[32];
            if (f < 2) {
                snprintf(key, sizeof key, "%s_token", names[k]);
                const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
                if (!v || cJSON_IsNull(v)) continue;
                const char *s = token_entry(v);
                if (!s) {
                    st = cl_fail(b->err, CL_EFORMAT, "%s: field \"%s\" must be a string or {\"content\": ...}", p, key);
                    break;
                }
                if (gpt2_layout) {
                    /* like transformers: special tokens named in the config are special added tokens */
                    if (smap_get(&t->vocab, t->pool, s, strlen(s)) >= 0)
                        st = add_added(b, p, -1, s, strlen(s), -1, 1, 0);
                    if (st) break;
                }
                int32_t id = cl_tokenizer_token_to_id(t, s, strlen(s));
                if (id < 0) {
                    st = cl_fail(b->err, CL_EFORMAT, "%s: field \"%s\": token \"%.*s\" is not in the vocabulary", p, key, CLIP(s));
                    break;
                }
                *slots[k] = id;
                found[k] = 1;
            } else {
                snprintf(key, sizeof key, "%s_token_id", names[k]);
                const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
                if (!v || cJSON_IsNull(v)) continue;
                if (cJSON_IsArray(v) && cJSON_GetArraySize(v) > 0) v = v->child; /* eos lists: the first */
                int32_t id;
                if (!json_id(v, &id)) {
                    st = cl_fail(b->err, CL_EFORMAT, "%s: field \"%s\" must be a non-negative integer", p, key);
                    break;
                }
                *slots[k] = id;
                found[k] = 1;
            }
        }
        cJSON_Delete(root);
        free(p);
        if (st) return st;
    }
    if (!found[0]) t->bos_id = cl_tokenizer_token_to_id(t, "<|endoftext|>", 13);
    if (!found[1]) t->eos_id = cl_tokenizer_token_to_id(t, "<|endoftext|>", 13);
    if (!found[2]) {
        t->pad_id = cl_tokenizer_token_to_id(t, "<|padding|>", 11);
        if (t->pad_id < 0) t->pad_id = t->eos_id;
    }
    return CL_OK;
}

static char *dir_of(const char *path) {
    const char *sl = strrchr(path, '/');
    if (!sl) return strdup(".");
    if (sl == path) return strdup("/");
    size_t n = (size_t)(sl - path);
    char *d = malloc(n + 1);
    if (!d) return NULL;
    memcpy(d, path, n);
    d[n] = '\0';
    return d;
}

cl_status cl_tokenizer_load(const char *path, cl_tokenizer **out, cl_error *err) {
    *out = NULL;
    if (!path) return cl_fail(err, CL_EINVAL, "cl_tokenizer_load: NULL path");
    bytemap_init();
    cl_tokenizer *t = calloc(1, sizeof *t);
    builder b = {t, NULL, 0, 0, err};
    char *dir = NULL, *tj = NULL, *vj = NULL, *mt = NULL;
    cl_status st = CL_OK;
    if (!t) return cl_fail(err, CL_ENOMEM, "out of memory");
    t->unk_id = t->bos_id = t->eos_id = t->pad_id = -1;
    struct stat sb;
    if (stat(path, &sb) != 0) {
        st = cl_fail(err, CL_EIO, "%s: cannot open: %s", path, strerror(errno));
        goto done;
    }
    if (S_ISDIR(sb.st_mode)) {
        dir = strdup(path);
        tj = join_path(path, "tokenizer.json");
        vj = join_path(path, "vocab.json");
        mt = join_path(path, "merges.txt");
        if (!dir || !tj || !vj || !mt) {
            st = cl_fail(err, CL_ENOMEM, "out of memory");
            goto done;
        }
        if (file_exists(tj)) {
            free(vj);
            free(mt);
            vj = mt = NULL;
        } else if (file_exists(vj) && file_exists(mt)) {
            free(tj);
            tj = NULL;
        } else {
            st = cl_fail(err, CL_EIO, "%s: no tokenizer.json, nor vocab.json and merges.txt, in this folder", path);
            goto done;
        }
    } else {
        dir = dir_of(path);
        const char *bn = base_name(path);
        if (!dir) {
            st = cl_fail(err, CL_ENOMEM, "out of memory");
            goto done;
        }
        if (strcmp(bn, "vocab.json") == 0 || strcmp(bn, "merges.txt") == 0) {
            vj = join_path(dir, "vocab.json");
            mt = join_path(dir, "merges.txt");
            if (!vj || !mt) {
                st = cl_fail(err, CL_ENOMEM, "out of memory");
                goto done;
            }
            const char *missing = !file_exists(vj) ? vj : !file_exists(mt) ? mt : NULL;
            if (missing) {
                st = cl_fail(err, CL_EIO, "%s: cannot open: %s (GPT-2 layout needs vocab.json and merges.txt side by side)",
                             missing, strerror(ENOENT));
                goto done;
            }
        } else {
            tj = strdup(path);
            if (!tj) {
                st = cl_fail(err, CL_ENOMEM, "out of memory");
                goto done;
            }
        }
    }
    if (tj) {
        if ((st = load_tokenizer_json(&b, tj))) goto done;
        t->source = strdup(tj);
    } else {
        if ((st = load_vocab_json(&b, vj))) goto done;
        if ((st = load_merges_txt(&b, mt))) goto done;
        /* transformers' GPT2Tokenizer: "<|endoftext|>" is the bos/eos/unk special token */
        if (smap_get(&t->vocab, t->pool, "<|endoftext|>", 13) >= 0)
            if ((st = add_added(&b, vj, -1, "<|endoftext|>", 13, -1, 1, 0))) goto done;
        size_t n = strlen(vj) + strlen(mt) + 4;
        t->source = malloc(n);
        if (t->source) snprintf(t->source, n, "%s + %s", vj, mt);
    }
    if (!t->source) {
        st = cl_fail(err, CL_ENOMEM, "out of memory");
        goto done;
    }
    if ((st = resolve_special_ids(&b, dir, tj == NULL))) goto done;
    if ((st = build_info(&b, t->source))) goto done;
    if ((st = build_tries(&b, t->source))) goto done;
    for (int k = 0; k < 3; k++) {
        int32_t id = k == 0 ? t->bos_id : k == 1 ? t->eos_id : t->pad_id;
        if (id >= t->n_ids || (id >= 0 && !(t->info[id].flags & ID_EXISTS))) {
            st = cl_fail(err, CL_EFORMAT, "%s: %s id %d is not in the vocabulary", dir,
                         k == 0 ? "bos" : k == 1 ? "eos" : "pad", (int)id);
            goto done;
        }
    }
    *out = t;
    t = NULL;
done:
    if (st) msg_fix_utf8(err);
    free(b.ents);
    free(dir);
    free(tj);
    free(vj);
    free(mt);
    cl_tokenizer_free(t);
    return st;
}
