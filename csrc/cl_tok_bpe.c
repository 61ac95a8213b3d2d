/* cl_tok_bpe.c: the BPE model: the vocabulary and merge hash maps and the merge loop of one word,
 * bit-identical to HF's (an O(n^2) scan for short words, a heap for long ones). No file reading,
 * no text splitting. */
#include "cl_tok_private.h"


/* -- string map -- */

int cl_tok_smap_init(str_map *m, size_t expected) {
    size_t cap = 64;
    while (cap < expected * 2) cap *= 2;
    m->slots = malloc(cap * sizeof *m->slots);
    if (!m->slots) return 0;
    for (size_t i = 0; i < cap; i++) m->slots[i].id = -1;
    m->mask = cap - 1;
    m->count = 0;
    return 1;
}

int32_t cl_tok_smap_get(const str_map *m, const char *pool, const char *s, size_t n) {
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
int32_t cl_tok_smap_put(str_map *m, const char *pool, uint32_t off, uint32_t n, int32_t id) {
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

int cl_tok_mmap_init(merge_map *m, size_t expected) {
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
void cl_tok_mmap_put(merge_map *m, int32_t a, int32_t b, uint32_t rank, int32_t merged) {
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    size_t h = (size_t)mix64(key) & m->mask;
    while (m->keys[h] != UINT64_MAX && m->keys[h] != key) h = (h + 1) & m->mask;
    if (m->keys[h] == UINT64_MAX) m->count++;
    m->keys[h] = key;
    m->rank[h] = rank;
    m->merged[h] = merged;
}

/* ------------------------------------------------------------------------------------------ */
/* BPE                                                                                        */


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


long cl_tok_bpe_word(const cl_tokenizer *t, tstate *st, const uint8_t *w, size_t n, int (*cancelled)(void *ctx), void *ctx) {
    if (!bpe_reserve(st, n + 1)) return -1;
    sym_t *sy = st->sym;
    size_t m = 0;
    for (size_t k = 0; k < n; k++) {
        if (k % (BPE_CHECK_EVERY * 16) == BPE_CHECK_EVERY * 16 - 1 && (cancelled && cancelled(ctx))) return -2;
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
        for (size_t i = 0; i + 1 < m; i++) rk[i] = cl_tok_mmap_get(mm, sy[i].id, sy[i + 1].id, &mid[i]);
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
            if (bi > 0) rk[bi - 1] = cl_tok_mmap_get(mm, sy[bi - 1].id, sy[bi].id, &mid[bi - 1]);
            if (bi + 1 < m) rk[bi] = cl_tok_mmap_get(mm, sy[bi].id, sy[bi + 1].id, &mid[bi]);
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
        if (i % (BPE_CHECK_EVERY * 16) == BPE_CHECK_EVERY * 16 - 1 && (cancelled && cancelled(ctx))) return -2;
        int32_t mg = -1;
        uint32_t r = cl_tok_mmap_get(mm, sy[i].id, sy[i + 1].id, &mg);
        if (r != UINT32_MAX) heap_push(heap, &hn, (heap_ent){r, (uint32_t)i});
    }
    size_t steps = 0;
    while (hn) {
        if (++steps % BPE_CHECK_EVERY == 0 && (cancelled && cancelled(ctx))) return -2;
        heap_ent e = heap_pop(heap, &hn);
        size_t p = e.pos;
        if (sy[p].end == sy[p].start) continue; /* absorbed */
        int32_t q = next[p];
        if (q < 0) continue;
        int32_t mg = -1;
        if (cl_tok_mmap_get(mm, sy[p].id, sy[q].id, &mg) != e.rank) continue; /* stale */
        sy[p].id = mg;
        sy[p].end = sy[q].end;
        sy[q].end = sy[q].start; /* mark absorbed */
        next[p] = next[q];
        if (next[q] >= 0) prev[next[q]] = (int32_t)p;
        if (prev[p] >= 0) {
            uint32_t r = cl_tok_mmap_get(mm, sy[prev[p]].id, sy[p].id, &mg);
            if (r != UINT32_MAX) {
                if (!grow((void **)&st->heap, &st->heap_cap, hn + 1, sizeof *st->heap)) return -1;
                heap = st->heap;
                heap_push(heap, &hn, (heap_ent){r, (uint32_t)prev[p]});
            }
        }
        if (next[p] >= 0) {
            uint32_t r = cl_tok_mmap_get(mm, sy[p].id, sy[next[p]].id, &mg);
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
