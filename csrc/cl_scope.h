/* cl_scope.h: the all-neurons streaming state behind Neuroscope. For every neuron of the chosen
 * layers, one forward pass keeps
 *   - the top-k documents by the document's maximum of mlp.hook_post (document id, position of
 *     the maximum, activation), ordered by activation descending, then document id, then position;
 *   - a histogram of every counted token's activation over the observed range;
 *   - a few token examples per histogram band (`samples` per band), a uniform pseudo-random
 *     sample: the entries with the smallest key(doc, position), key = a fixed 64-bit hash.
 *
 * The histogram's bins are fixed by the observed range alone, so states merge exactly and in any
 * order: bin width w = 2^e, bin edges at multiples of w (a grid anchored at 0), e the smallest
 * integer >= max(CL_SCOPE_EXP_MIN, ilogb(max(|min|, |max|)) - 20) such that the cells of min and
 * max are fewer than `bins` apart; the first bin is the cell of min. Grids with larger e nest the
 * finer ones, so a state made with a finer grid is coarsened exactly (counts of 2^d neighbours
 * add up). While streaming, a value outside the current bins widens the grid; cl_scope_normalize
 * then brings every neuron to the grid of its final (min, max), the canonical form: two states
 * that saw the same multiset of (document, position, activation) are equal bit for bit.
 * Sample bands are groups of `bins / CL_SCOPE_BANDS` bins on the same grid (band index = bin
 * index >> log2 of that), `bands` of them cover the bins. Non-finite activations are counted in
 * `nonfinite` and otherwise ignored. */
#ifndef CL_SCOPE_H
#define CL_SCOPE_H

#include "cl_forward.h"

#define CL_SCOPE_EXP_MIN (-24) /* the finest bin width, 2^-24 */
#define CL_SCOPE_BANDS 16      /* sample bands per histogram (plus one: bands need not align with the first bin) */

typedef struct {
    int n_layers;              /* layers observed */
    int32_t *layers;           /* (n_layers) model layer of each, ascending */
    int d_mlp, k, bins, samples, bands, band_shift;
    int n;                     /* neurons, sorted by (layer, neuron): all d_mlp of each layer, or a chosen subset */
    int32_t *first;            /* (n_layers + 1) the neurons of layers[li] are j in [first[li], first[li + 1]) */
    int32_t *col;              /* (n) neuron j's index within its layer (its column in mlp.hook_post) */
    /* top-k documents */
    float *top_act;            /* (n, k) */
    int64_t *top_doc;          /* (n, k), -1 = empty */
    int32_t *top_pos;          /* (n, k) */
    int32_t *top_count;        /* (n) */
    /* histogram */
    int64_t *hist;             /* (n, bins) */
    int32_t *hist_exp;         /* (n) bin width 2^hist_exp */
    int64_t *hist_start;       /* (n) grid index of the first bin: floor(min / 2^hist_exp) */
    float *vmin, *vmax;        /* (n) observed range (+inf / -inf while empty) */
    int64_t *total;            /* (n) values in the histogram */
    int64_t *nonfinite;        /* (n) */
    /* samples per band */
    uint64_t *s_key;           /* (n, bands, samples) ascending within a band */
    int64_t *s_doc;            /* (n, bands, samples) */
    int32_t *s_pos;            /* (n, bands, samples) */
    float *s_act;              /* (n, bands, samples) */
    int32_t *s_count;          /* (n, bands) */
    /* the batch being observed */
    const int64_t *batch_docs; /* (B) */
    int skip_first;            /* positions < skip_first never count (a prepended BOS) */
} cl_scope;

cl_status cl_scope_new(int n_layers, const int32_t *layers, int d_mlp, int k, int bins, int samples, cl_scope **out,
                       cl_error *err);
/* A state for the chosen neurons only: n (layer, neuron) pairs, distinct and sorted by layer, then
 * neuron; each neuron's state is the same as in a state of its whole layer. */
cl_status cl_scope_new_subset(int n, const int32_t *layer /* (n) */, const int32_t *neuron /* (n) */, int d_mlp, int k,
                              int bins, int samples, cl_scope **out, cl_error *err);
void cl_scope_free(cl_scope *s);
/* The layer of neuron j. */
int cl_scope_layer_of(const cl_scope *s, int j);
/* The sample key of a token: a fixed hash of (document id, position). */
uint64_t cl_scope_key(int64_t doc, int32_t pos);
/* Observer for blocks.{layer}.mlp.hook_post (ctx = the scope). */
cl_status cl_scope_observe(void *ctx, int layer, const float *data, size_t stride, size_t N, const int32_t *start,
                           const int32_t *lengths, int B, cl_error *err);
/* Bring every histogram to the canonical grid of its (min, max). */
cl_status cl_scope_normalize(cl_scope *s, cl_error *err);
/* dst += src (same layers, d_mlp, k, bins, samples); both end normalized. The caller sees to it
 * that the two saw disjoint documents. */
cl_status cl_scope_merge(cl_scope *dst, cl_scope *src, cl_error *err);
/* Check a state set from outside (counts in range, grids consistent with min/max): CL_EINVAL
 * naming the first bad neuron. */
cl_status cl_scope_validate(const cl_scope *s, cl_error *err);

#endif
