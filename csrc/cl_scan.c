/* cl_scan.c: the max-activating scan as an observer that turns one forward pass into search
 * results without keeping activations: the streaming top-k of documents per neuron, O(neurons x k)
 * memory. Keeps no model state and never allocates per batch. */
#include "cl_scan.h"

#include "cl_topk.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

cl_status cl_scanner_new(int n, const int32_t *layers, const int32_t *neurons, int d_mlp, int k, cl_scanner **out,
                         cl_error *err) {
    *out = NULL;
    if (n < 1) return cl_fail(err, CL_EINVAL, "no neurons to scan");
    if (k < 1) return cl_fail(err, CL_EINVAL, "k must be >= 1, got %d", k);
    for (int i = 0; i < n; i++)
        if (neurons[i] < 0 || neurons[i] >= d_mlp)
            return cl_fail(err, CL_EINVAL, "neuron %d (entry %d) is outside [0, %d)", neurons[i], i, d_mlp);
    cl_scanner *s = calloc(1, sizeof *s);
    if (!s) return cl_fail(err, CL_ENOMEM, "out of memory");
    s->n = n; s->k = k; s->d_mlp = d_mlp;
    s->layer = malloc((size_t)n * sizeof *s->layer);
    s->neuron = malloc((size_t)n * sizeof *s->neuron);
    s->act = malloc((size_t)n * k * sizeof *s->act);
    s->doc = malloc((size_t)n * k * sizeof *s->doc);
    s->pos = malloc((size_t)n * k * sizeof *s->pos);
    s->count = calloc((size_t)n, sizeof *s->count);
    if (!s->layer || !s->neuron || !s->act || !s->doc || !s->pos || !s->count) {
        cl_scanner_free(s);
        return cl_fail(err, CL_ENOMEM, "out of memory for %d x %d top-k entries", n, k);
    }
    memcpy(s->layer, layers, (size_t)n * sizeof *layers);
    memcpy(s->neuron, neurons, (size_t)n * sizeof *neurons);
    cl_topk_clear(s->act, s->doc, s->pos, (size_t)n * k);
    *out = s;
    return CL_OK;
}

void cl_scanner_free(cl_scanner *s) {
    if (!s) return;
    free(s->layer); free(s->neuron); free(s->act); free(s->doc); free(s->pos); free(s->count);
    free(s);
}

static inline cl_topk top_of(cl_scanner *s, int j) {
    const size_t o = (size_t)j * s->k;
    cl_topk t = {s->act + o, s->doc + o, s->pos + o, s->count + j, s->k};
    return t;
}

cl_status cl_scanner_observe(void *ctx, int layer, const float *data, size_t stride, size_t N, const int32_t *start,
                             const int32_t *lengths, int B, cl_error *err) {
    cl_scanner *s = ctx;
#pragma omp parallel for schedule(dynamic, 4) num_threads(cl_num_threads())
    for (int j = 0; j < s->n; j++) {
        if (s->layer[j] != layer) continue;
        const int32_t nr = s->neuron[j];
        for (int b = 0; b < B; b++) {
            if (lengths[b] <= s->skip_first) continue;
            const float *col = data + (size_t)start[b] * stride + nr;
            int best = s->skip_first;
            float mx = col[(size_t)best * stride];
            for (int t = best + 1; t < lengths[b]; t++) {
                float v = col[(size_t)t * stride];
                if (v > mx) { mx = v; best = t; }
            }
            if (mx == mx) cl_topk_insert(top_of(s, j), mx, s->batch_docs[b], best); /* NaN never ranks */
        }
    }
    return CL_OK;
}
