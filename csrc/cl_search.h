/* cl_search.h: streaming max-activation search (top-k documents per neuron) and head -> neuron
 * attribution, both run as observers inside the forward pass. */
#ifndef CL_SEARCH_H
#define CL_SEARCH_H

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

/* Attribution of every head's output at each prompt's last token to that prompt's target neuron:
 * score[b, l, h] = <hook_result[last, l, h], W_in[tl_b][:, tn_b]> = <z[last, l, h], W_O[l, h] W_in[tl_b][:, tn_b]>,
 * for l <= tl_b (NaN beyond); act[b] = the neuron's mlp.hook_post at the last token. */
typedef struct {
    const cl_model *m;
    int B;
    const int32_t *target_layer, *target_neuron; /* (B) */
    float *score;                                /* (B, n_layers, n_heads) */
    float *act;                                  /* (B) */
} cl_attribution;

cl_status cl_attribution_observe_z(void *ctx, int layer, const float *data, size_t stride, size_t N, const int32_t *start,
                                   const int32_t *lengths, int B, cl_error *err);
cl_status cl_attribution_observe_post(void *ctx, int layer, const float *data, size_t stride, size_t N,
                                      const int32_t *start, const int32_t *lengths, int B, cl_error *err);

#endif
