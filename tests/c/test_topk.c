/* test_topk.c: the shared streaming top-k (cl_topk.c) against brute force: random entries with
 * many ties in activation and document, inserted in two different orders, give the first k of
 * the fully sorted list (activation descending, then document, then position), and the count
 * stops at k. */
#include <stdlib.h>
#include <string.h>

#include "cl_topk.h"
#include "ctest.h"

enum { N = 500, K = 7 };

typedef struct { float a; int64_t d; int32_t p; } entry;

static int cmp(const void *x, const void *y) {
    const entry *e = x, *f = y;
    if (cl_topk_better(e->a, e->d, e->p, f->a, f->d, f->p)) return -1;
    if (cl_topk_better(f->a, f->d, f->p, e->a, e->d, e->p)) return 1;
    return 0;
}

static void fill(cl_topk t, const entry *e, const int *order, int n) {
    for (int i = 0; i < n; i++) cl_topk_insert(t, e[order[i]].a, e[order[i]].d, e[order[i]].p);
}

int main(void) {
    entry e[N], sorted[N];
    int fwd[N], rev[N];
    srand(7);
    for (int i = 0; i < N; i++) {
        e[i].a = (float)(rand() % 9) - 4.0f; /* few values: ties in activation everywhere */
        e[i].d = rand() % 20;                 /* and in document */
        e[i].p = i;                           /* (document, position) pairs are distinct */
        fwd[i] = i;
        rev[i] = N - 1 - i;
    }
    memcpy(sorted, e, sizeof e);
    qsort(sorted, N, sizeof *sorted, cmp);
    float act[2][K];
    int64_t doc[2][K];
    int32_t pos[2][K], count[2] = {0, 0};
    for (int r = 0; r < 2; r++) {
        cl_topk_clear(act[r], doc[r], pos[r], K);
        CHECK(act[r][0] < -1e30f && doc[r][K - 1] == -1 && pos[r][K - 1] == -1, "cleared slots are empty");
        cl_topk t = {act[r], doc[r], pos[r], &count[r], K};
        fill(t, e, fwd, 3); /* a partial list keeps every entry, sorted */
        CHECK(count[r] == 3, "three entries, count %d", count[r]);
        count[r] = 0;
        cl_topk_clear(act[r], doc[r], pos[r], K);
        fill(t, e, r ? rev : fwd, N);
        CHECK(count[r] == K, "order %d: count stops at k (%d)", r, count[r]);
        for (int i = 0; i < K; i++)
            CHECK(act[r][i] == sorted[i].a && doc[r][i] == sorted[i].d && pos[r][i] == sorted[i].p,
                  "order %d entry %d: (%g, %lld, %d), brute force (%g, %lld, %d)", r, i, act[r][i], (long long)doc[r][i],
                  pos[r][i], sorted[i].a, (long long)sorted[i].d, sorted[i].p);
    }
    /* the ranking itself: activation first, then smaller document, then earlier position */
    CHECK(cl_topk_better(2, 9, 9, 1, 0, 0) && cl_topk_better(1, 0, 9, 1, 1, 0) && cl_topk_better(1, 1, 0, 1, 1, 1) &&
          !cl_topk_better(1, 1, 1, 1, 1, 1), "better() ranks by activation, document, position");
    return ctest_report();
}
