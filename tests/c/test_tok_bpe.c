/* test_tok_bpe.c: the BPE merge loop (cl_tok_bpe.c) on its own, on a tiny vocabulary: the short-word
 * scan, the long-word heap (more than 128 symbols), cancellation inside one long word, and the
 * merge map. Oracle: HF tokenizers' models.BPE(vocab, merges).tokenize(word) with the same
 * vocabulary and merges (recorded with tokenizers 0.2x). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cl_tok_private.h"
#include "ctest.h"

static const char *VOCAB = "{\"a\": 0, \"b\": 1, \"c\": 2, \"d\": 3, \"ab\": 4, \"cd\": 5, \"abcd\": 6, \"bc\": 7, \"aa\": 8, \"aaaa\": 9}";
static const char *MERGES = "#version: 0.2\na b\nc d\nab cd\nb c\na a\naa aa\n";

static void put(const char *dir, const char *name, const char *text) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (f) { fputs(text, f); fclose(f); }
}

/* ids of BPE(word) */
static long bpe(const cl_tokenizer *t, tstate *st, const char *w, size_t n, int32_t *ids, size_t cap) {
    long m = cl_tok_bpe_word(t, st, (const uint8_t *)w, n, NULL, NULL);
    for (long k = 0; k < m && (size_t)k < cap; k++) ids[k] = st->sym[k].id;
    return m;
}

static void expect_bpe(const cl_tokenizer *t, tstate *st, const char *w, const int32_t *want, long n) {
    int32_t got[16];
    long m = bpe(t, st, w, strlen(w), got, 16);
    int ok = m == n;
    for (long k = 0; ok && k < n; k++) ok = got[k] == want[k];
    CHECK(ok, "BPE(\"%s\"): %ld symbols, want %ld", w, m, n);
}

/* a long word of `reps` copies of unit: every symbol is `id`, and there are reps of them */
static void expect_repeated(const cl_tokenizer *t, tstate *st, const char *unit, int reps, int32_t id) {
    size_t u = strlen(unit), n = u * (size_t)reps;
    char *w = malloc(n);
    int32_t *ids = malloc((size_t)reps * sizeof *ids);
    for (int r = 0; r < reps; r++) memcpy(w + (size_t)r * u, unit, u);
    long m = bpe(t, st, w, n, ids, (size_t)reps);
    int ok = m == reps;
    for (long k = 0; ok && k < m; k++) ok = ids[k] == id;
    CHECK(ok, "BPE(\"%s\" x %d) (%s path): %ld symbols, want %d x id %d", unit, reps, n > 128 ? "heap" : "scan", m, reps, id);
    free(w);
    free(ids);
}

static int calls;
static int cancel_after_first(void *ctx) { return ++calls > 1; }

int main(void) {
    char dir[] = "/tmp/test_tok_bpe_XXXXXX";
    if (!mkdtemp(dir)) { printf("cannot make a temporary folder\n"); return 2; }
    put(dir, "vocab.json", VOCAB);
    put(dir, "merges.txt", MERGES);
    cl_tokenizer *t = NULL;
    cl_error err = {CL_OK, ""};
    CHECK(cl_tokenizer_load(dir, &t, &err) == CL_OK, "load: %s", err.msg);
    tstate *st = cl_tok_state_new();
    if (!t || !st) return ctest_report();

    int32_t merged = -1;
    CHECK(cl_tok_mmap_get(&t->merges, 4, 5, &merged) == 2 && merged == 6, "merge (ab, cd) has rank 2 and gives abcd");
    CHECK(cl_tok_mmap_get(&t->merges, 5, 4, &merged) == UINT32_MAX, "no merge (cd, ab)");
    CHECK(cl_tok_smap_get(&t->vocab, t->pool, "aaaa", 4) == 9 && cl_tok_smap_get(&t->vocab, t->pool, "abc", 3) == -1,
          "vocabulary lookups");

    expect_bpe(t, st, "abcd", (int32_t[]){6}, 1);
    expect_bpe(t, st, "bcd", (int32_t[]){1, 5}, 2);          /* (c d) ranks before (b c) */
    expect_bpe(t, st, "bca", (int32_t[]){7, 0}, 2);
    expect_bpe(t, st, "dcba", (int32_t[]){3, 2, 1, 0}, 4);   /* no merges apply */
    expect_bpe(t, st, "bcbcb", (int32_t[]){7, 7, 1}, 3);      /* leftmost first among equal ranks */
    expect_bpe(t, st, "aaaaaaa", (int32_t[]){9, 8, 0}, 3);
    expect_bpe(t, st, "xay", (int32_t[]){0}, 1);               /* bytes outside the vocabulary are dropped (no unk) */
    expect_repeated(t, st, "ab", 60, 4);                      /* 120 symbols: the scan */
    expect_repeated(t, st, "ab", 100, 4);                     /* 200 symbols: the heap */
    expect_repeated(t, st, "abcd", 40, 6);

    /* 200 a's + b on the heap path: HF gives 49 x aaaa, then aa, a, ab */
    char w[201];
    memset(w, 'a', 200);
    w[200] = 'b';
    int32_t ids[64];
    long m = bpe(t, st, w, 201, ids, 64);
    CHECK(m == 52 && ids[0] == 9 && ids[48] == 9 && ids[49] == 8 && ids[50] == 0 && ids[51] == 4,
          "BPE(a x 200 + b): %ld symbols", m);

    /* a word long enough for BPE_CHECK_EVERY merges asks the cancel callback, and stops with -2 */
    size_t n = 4 * (size_t)BPE_CHECK_EVERY;
    char *big = malloc(n);
    memset(big, 'a', n);
    calls = 0;
    long r = cl_tok_bpe_word(t, st, (const uint8_t *)big, n, cancel_after_first, NULL);
    CHECK(r == -2 && calls == 2, "a long word is cancelled inside its merges (%ld, %d calls)", r, calls);
    calls = -1000000;
    r = cl_tok_bpe_word(t, st, (const uint8_t *)big, n, cancel_after_first, NULL);
    CHECK(r == (long)n / 4 && st->sym[0].id == 9, "not cancelled: %ld symbols of aaaa", r);
    free(big);

    cl_tok_state_free(st);
    cl_tokenizer_free(t);
    char path[600];
    snprintf(path, sizeof path, "%s/vocab.json", dir); unlink(path);
    snprintf(path, sizeof path, "%s/merges.txt", dir); unlink(path);
    rmdir(dir);
    return ctest_report();
}
