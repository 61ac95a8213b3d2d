/* cl_tok_private.h: what the tokenizer's files share, private to them (no binding includes it):
 * the tokenizer struct and its tables, the per-thread encoder state, small inline helpers (growth,
 * hashing, UTF-8) and the functions one file gives another. The files, by job:
 *   cl_tok_unicode.c      UTF-8 validation, Unicode properties, NFC with HF's alignments, GPT-2's byte map
 *   cl_tok_pretokenize.c  the GPT-2 pre-tokenizer regex
 *   cl_tok_bpe.c          the vocabulary and merge maps, BPE of one word
 *   cl_tok_load.c         loading: the builder shared by both file layouts, added tokens, special ids
 *   cl_tok_load_gpt2.c    vocab.json + merges.txt
 *   cl_tok_load_hf.c      tokenizer.json
 *   cl_tokenizer.c        the public encode / decode API: added-token matching, the encode pipeline */
#ifndef CL_TOK_PRIVATE_H
#define CL_TOK_PRIVATE_H

#include <cjson/cJSON.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cl_tokenizer.h"

/* ------------------------------------------------------------------------------------------ */
/* small helpers                                                                              */

#define MAX_TOKEN_ID (1 << 24) /* refuse absurd ids rather than allocating for them */

static inline int grow(void **p, size_t *cap, size_t need, size_t elem) {
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

static inline uint64_t hash_bytes(const void *p, size_t n) {
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

/* ------------------------------------------------------------------------------------------ */
/* Unicode properties and GPT-2's byte map (cl_tok_unicode.c)                                 */

enum { CLS_OTHER = 0, CLS_LETTER = 1, CLS_NUMBER = 2, CLS_SPACE = 3, PROP_UNSTABLE = 4 };

/* the two stages of the generated property table (cl_unicode_tables.h, included only by
 * cl_tok_unicode.c so that the tables exist once) */
#define CL_TOK_UBLOCK_SHIFT 7
#define CL_TOK_UBLOCK_MASK 127
extern const uint16_t *const cl_tok_uprop1;
extern const uint8_t *const cl_tok_uprop2;

/* class (CLS_*, low 2 bits) | PROP_UNSTABLE of a code point */
static inline uint8_t cl_tok_uprop(uint32_t cp) {
    return cl_tok_uprop2[((uint32_t)cl_tok_uprop1[cp >> CL_TOK_UBLOCK_SHIFT] << CL_TOK_UBLOCK_SHIFT) | (cp & CL_TOK_UBLOCK_MASK)];
}

extern uint32_t cl_tok_byte_char[256];  /* byte -> code point */
extern int16_t cl_tok_char_byte[0x144]; /* code point (< 0x144) -> byte, -1 if none */
void cl_tok_bytemap_init(void);         /* builds both once (thread-safe) */

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


/* ------------------------------------------------------------------------------------------ */
/* functions one file gives another                                                           */

/* cl_tok_bpe.c: the maps (open addressing) and BPE */
int cl_tok_smap_init(str_map *m, size_t expected);
int32_t cl_tok_smap_get(const str_map *m, const char *pool, const char *s, size_t n);
/* insert; returns the existing id when the string is already present, -1 when inserted */
int32_t cl_tok_smap_put(str_map *m, const char *pool, uint32_t off, uint32_t n, int32_t id);
int cl_tok_mmap_init(merge_map *m, size_t expected);
/* later duplicates overwrite earlier ones, as HF's HashMap collect does */
void cl_tok_mmap_put(merge_map *m, int32_t a, int32_t b, uint32_t rank, int32_t merged);
/* rank of the merge (a, b) and its result in *merged; UINT32_MAX when there is none */
static inline uint32_t cl_tok_mmap_get(const merge_map *m, int32_t a, int32_t b, int32_t *merged) {
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

#define BPE_SCAN_MAX 128           /* words up to this many symbols: O(n^2) scan, else a heap */
#define BPE_CHECK_EVERY (1u << 16) /* merges between cancel checks in a long word (~1 ms) */
/* BPE of one word (a pre-token's bytes), exactly HF's merge loop. Symbols land in st->sym[0,
 * return). -1: no memory; -2: cancelled (cancelled(ctx) non-zero; asked every BPE_CHECK_EVERY
 * merges of a long word, may be NULL). */
long cl_tok_bpe_word(const cl_tokenizer *t, tstate *st, const uint8_t *w, size_t n, int (*cancelled)(void *ctx), void *ctx);

/* cl_tok_pretokenize.c: end of the pre-token that starts at i < n of valid UTF-8 s */
size_t cl_tok_pretok_next(const uint8_t *s, size_t n, size_t i);

/* cl_tok_unicode.c: NFC of text[a, b) into st->nbuf (with per-byte original spans in st->astart /
 * st->aend when want). Returns 0 when the text is already NFC (nothing written), 1 when st->nbuf
 * holds *olen bytes, -1 when out of memory. */
int cl_tok_nfc_piece(tstate *st, const uint8_t *text, size_t a, size_t b, int want, size_t *olen);

/* cl_tokenizer.c: encoder states and the added-token trie */
tstate *cl_tok_state_new(void);
void cl_tok_state_free(tstate *st); /* accepts NULL */
int cl_tok_trie_add(trie *tr, const uint8_t *s, size_t n, int tok);

/* cl_tok_load.c: what both file loaders use */
typedef struct {
    uint32_t off, len;
    int32_t id;
} vocab_ent;

typedef struct {
    cl_tokenizer *t;
    vocab_ent *ents;
    size_t n_ents, cap_ents;
    cl_error *err;
} builder;

int cl_tok_pool_add(cl_tokenizer *t, const void *s, size_t n, uint32_t *off);
void cl_tok_line_col(const char *data, size_t off, int *line, int *col);
/* length of a prefix of s[0, n) of at most 60 bytes that ends on a character boundary */
int cl_tok_clip(const char *s, size_t n);
#define CLIP(s) cl_tok_clip((s), strlen(s)), (s)
#define CLIPN(s, n) cl_tok_clip((s), (n)), (s)
/* every string read from a file must be UTF-8, as Rust's serde_json and BufRead::lines demand */
cl_status cl_tok_check_file_utf8(const char *path, const char *data, size_t len, cl_error *err);
/* parse a JSON file; bad JSON -> CL_EFORMAT "path:line:col: invalid JSON" */
cl_status cl_tok_json_load(const char *path, cJSON **root, cl_error *err);
int cl_tok_json_id(const cJSON *v, int32_t *id); /* a JSON integer in [0, MAX_TOKEN_ID) */
cl_status cl_tok_load_vocab_object(builder *b, const char *file, const char *field, const cJSON *obj);
cl_status cl_tok_finish_vocab(builder *b, const char *file, const char *field);
/* a merge (a, b); where names the location for errors ("merges.txt:12" / "file: model.merges[3]") */
cl_status cl_tok_add_merge(builder *b, const char *where, const char *a, size_t na, const char *bb, size_t nb, uint32_t rank);
/* register an added token (content s, n bytes) with HF's id assignment (see cl_tok_load.c) */
cl_status cl_tok_add_added(builder *b, const char *file, int index, const char *s, size_t n, int32_t file_id, int special,
                    int normalized);

/* the two file layouts */
cl_status cl_tok_load_vocab_json(builder *b, const char *path);  /* cl_tok_load_gpt2.c */
cl_status cl_tok_load_merges_txt(builder *b, const char *path);  /* cl_tok_load_gpt2.c */
cl_status cl_tok_load_tokenizer_json(builder *b, const char *path); /* cl_tok_load_hf.c */

#endif
