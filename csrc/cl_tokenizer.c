/* cl_tokenizer.c: the public encode / decode API of the byte-level BPE tokenizer (GPT-2, GPT-NeoX /
 * Pythia) matching Hugging Face `tokenizers` bit for bit: added-token matching, the encode pipeline
 * (normalize -> pre-tokenize -> BPE, with offsets), batches over threads, decoding and lookups.
 * No Python, no printing. See cl_tokenizer.h for the pipeline and cl_tok_private.h for the files. */
#include <omp.h>
#include <stdatomic.h>
#include <stdio.h>

#include "cl_tok_private.h"


/* -- trie of added tokens -- */

int cl_tok_trie_add(trie *tr, const uint8_t *s, size_t n, int tok) {
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
void cl_tok_state_free(tstate *st) {
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

tstate *cl_tok_state_new(void) {
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
            t->spare[k] = cl_tok_state_new();
            if (!t->spare[k]) {
                atomic_store(&t->spare_busy[k], 0);
                break;
            }
            t->spare[k]->slot = k;
        }
        return t->spare[k];
    }
    return cl_tok_state_new();
}

static void tstate_return(const cl_tokenizer *tok, tstate *st) {
    cl_tokenizer *t = (cl_tokenizer *)tok;
    if (!st) return;
    if (st->slot >= 0) atomic_store(&t->spare_busy[st->slot], 0);
    else cl_tok_state_free(st);
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
        for (size_t k = 0; k < n; k++) ml += (size_t)u8enc(cl_tok_byte_char[w[k]], (uint8_t *)st->mapped + ml);
        int32_t id = cl_tok_smap_get(&t->vocab, t->pool, st->mapped, ml);
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
    long m = cl_tok_bpe_word(t, st, w, n, bpe_cancelled, c);
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
        size_t j = cl_tok_pretok_next(p->s, b, i);
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

/* a piece of the raw text between non-normalized added tokens */
static cl_status emit_raw_piece(enc_ctx *c, const uint8_t *text, size_t len, size_t a, size_t b) {
    const cl_tokenizer *t = c->t;
    piece_t p = {text + a, b - a, a, NULL, NULL, text, len};
    if (a == b) return CL_OK;
    if (t->nfc) {
        size_t olen = 0;
        int want = (c->flags & CL_TOK_OFFSETS) != 0;
        int r = cl_tok_nfc_piece(c->st, text, a, b, want, &olen);
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
    return cl_tok_smap_get(&t->vocab, t->pool, s, len);
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
