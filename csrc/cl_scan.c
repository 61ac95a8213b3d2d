/* cl_scan.c: the max-activating scan as an observer that turns one forward pass into search
 * results without keeping activations: the streaming top-k of documents per neuron, O(neurons x k)
 * memory. Keeps no model state and never allocates per batch. */
#include "cl_scan.h"

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
    for (size_t i = 0; i < (size_t)n * k; i++) { s->act[i] = -INFINITY; s->doc[i] = -1; s->pos[i] = -1; }
    *out = s;
    return CL_OK;
}

void cl_scanner_free(cl_scanner *s) {
    if (!s) return;
    free(s->layer); free(s->neuron); free(s->act); free(s->doc); free(s->pos); free(s->count);
    free(s);
}

/* (a, d, p) ranks before (a2, d2, p2)? */
static inline int better(float a, int64_t d, int32_t p, float a2, int64_t d2, int32_t p2) {
    if (a != a2) return a > a2;
    if (d != d2) return d < d2;
    return p < p2;
}

static void insert(cl_scanner *s, int j, float a, int64_t d, int32_t p) {
    const int k = s->k;
    float *act = s->act + (size_t)j * k;
    int64_t *doc = s->doc + (size_t)j * k;
    int32_t *pos = s->pos + (size_t)j * k;
    int n = s->count[j];
    if (n == k && !better(a, d, p, act[k - 1], doc[k - 1], pos[k - 1])) return;
    int i = n < k ? n : k - 1;
    while (i > 0 && better(a, d, p, act[i - 1], doc[i - 1], pos[i - 1])) {
        act[i] = act[i - 1]; doc[i] = doc[i - 1]; pos[i] = pos[i - 1];
        i--;
    }
    act[i] = a; doc[i] = d; pos[i] = p;
    if (n < k) s->count[j] = n + 1;
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
            if (mx == mx) insert(s, j, mx, s->batch_docs[b], best); /* NaN never ranks */
        }
    }
    return CL_OK;
}
