/* cl_attribution.c: head -> neuron attribution at the last token of each prompt, as two observers
 * of one forward pass (hook_z of every layer up to the target's, and the target's mlp.hook_post).
 * Memory is O(prompts x heads); nothing of the activations is kept. */
#include "cl_attribution.h"

#include <math.h>
#include <stdlib.h>

cl_status cl_attribution_observe_z(void *ctx, int layer, const float *data, size_t stride, size_t N, const int32_t *start,
                                   const int32_t *lengths, int B, cl_error *err) {
    cl_attribution *at = ctx;
    const cl_config *c = &at->m->cfg;
    const int H = c->n_heads, dh = c->d_head, D = c->d_model, M = c->d_mlp, L = c->n_layers;
    const float *WO = at->m->W_O + (size_t)layer * H * dh * D; /* (H, dh, D) */
    float *wbuf = malloc((size_t)B * D * sizeof(float));   /* each prompt's W_in column, contiguous */
    if (!wbuf) return cl_fail(err, CL_ENOMEM, "out of memory");
#pragma omp parallel for schedule(dynamic, 1) num_threads(cl_num_threads())
    for (int b = 0; b < B; b++) {
        float *out = at->score + ((size_t)b * L + layer) * H;
        if (layer > at->target_layer[b]) {
            for (int h = 0; h < H; h++) out[h] = NAN;
            continue;
        }
        float *w = wbuf + (size_t)b * D;
        const float *col = at->m->W_in + (size_t)at->target_layer[b] * D * M + at->target_neuron[b];
        for (int d = 0; d < D; d++) w[d] = col[(size_t)d * M];
        const float *z = data + ((size_t)start[b] + lengths[b] - 1) * stride; /* (H, dh) */
        for (int h = 0; h < H; h++) {
            double sc = 0;
            for (int e = 0; e < dh; e++) {
                const float *row = WO + ((size_t)h * dh + e) * D;
                double v = 0;
                for (int d = 0; d < D; d++) v += (double)row[d] * w[d];
                sc += v * z[h * dh + e];
            }
            out[h] = (float)sc;
        }
    }
    free(wbuf);
    return CL_OK;
}

cl_status cl_attribution_observe_post(void *ctx, int layer, const float *data, size_t stride, size_t N,
                                      const int32_t *start, const int32_t *lengths, int B, cl_error *err) {
    cl_attribution *at = ctx;
    for (int b = 0; b < B; b++)
        if (at->target_layer[b] == layer)
            at->act[b] = data[((size_t)start[b] + lengths[b] - 1) * stride + at->target_neuron[b]];
    return CL_OK;
}
