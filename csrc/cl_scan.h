/* cl_scan.h: the streaming max-activation scan (top-k documents per neuron), run as an observer
 * inside the forward pass. */
#ifndef CL_SCAN_H
#define CL_SCAN_H

#include "cl_forward.h"

/* Top-k documents per neuron by psi(doc) = max over counted positions of mlp.hook_post. Entries
 * are kept sorted: activation descending, then doc id ascending, then position ascending. */
typedef struct {
    int n, k, d_mlp;
    int32_t *layer, *neuron; /* (n) */
    float *act;              /* (n, k) */
    int64_t *doc;            /* (n, k), -1 = empty */
    int32_t *pos;            /* (n, k) position of the maximum within the document's tokens */
    int32_t *count;          /* (n) filled entries */
    /* the batch being observed */
    const int64_t *batch_docs; /* (B) */
    int skip_first;            /* positions < skip_first never count (a prepended BOS) */
} cl_scanner;

cl_status cl_scanner_new(int n, const int32_t *layers, const int32_t *neurons, int d_mlp, int k, cl_scanner **out,
                         cl_error *err);
void cl_scanner_free(cl_scanner *s);
/* Observer for blocks.{layer}.mlp.hook_post (ctx = the scanner). */
cl_status cl_scanner_observe(void *ctx, int layer, const float *data, size_t stride, size_t N, const int32_t *start,
                             const int32_t *lengths, int B, cl_error *err);

#endif
