/* cl_topk.c: the sorted streaming top-k list (see cl_topk.h). */
#include "cl_topk.h"

#include <math.h>
#include <stddef.h>

void cl_topk_insert(cl_topk t, float a, int64_t d, int32_t p) {
    const int k = t.k, n = *t.count;
    if (n == k && !cl_topk_better(a, d, p, t.act[k - 1], t.doc[k - 1], t.pos[k - 1])) return;
    int i = n < k ? n : k - 1;
    while (i > 0 && cl_topk_better(a, d, p, t.act[i - 1], t.doc[i - 1], t.pos[i - 1])) {
        t.act[i] = t.act[i - 1]; t.doc[i] = t.doc[i - 1]; t.pos[i] = t.pos[i - 1];
        i--;
    }
    t.act[i] = a; t.doc[i] = d; t.pos[i] = p;
    if (n < k) *t.count = n + 1;
}

void cl_topk_clear(float *act, int64_t *doc, int32_t *pos, size_t n) {
    for (size_t i = 0; i < n; i++) { act[i] = -INFINITY; doc[i] = -1; pos[i] = -1; }
}
