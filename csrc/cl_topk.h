/* cl_topk.h: one neuron's streaming top-k of (activation, document, position), shared by the
 * max-activating scanner (cl_scan.c) and Neuroscope's state (cl_scope.c). Entries are kept sorted:
 * activation descending, then document id ascending, then position ascending, so the list is the
 * same whatever order the entries arrive in. */
#ifndef CL_TOPK_H
#define CL_TOPK_H

#include <stddef.h>
#include <stdint.h>

/* One neuron's list: k slots, `*count` of them filled (the first ones). */
typedef struct {
    float *act;     /* (k) */
    int64_t *doc;   /* (k) */
    int32_t *pos;   /* (k) */
    int32_t *count; /* filled slots, <= k */
    int k;
} cl_topk;

/* Does (a, d, p) rank before (a2, d2, p2)? */
static inline int cl_topk_better(float a, int64_t d, int32_t p, float a2, int64_t d2, int32_t p2) {
    if (a != a2) return a > a2;
    if (d != d2) return d < d2;
    return p < p2;
}

/* Insert (a, d, p) in its place; the last entry drops out of a full list. a must not be NaN. */
void cl_topk_insert(cl_topk t, float a, int64_t d, int32_t p);
/* Empty slots: activation -inf, document and position -1. */
void cl_topk_clear(float *act /* (n) */, int64_t *doc, int32_t *pos, size_t n);

#endif
