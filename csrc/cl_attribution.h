/* cl_attribution.h: head -> neuron attribution at each prompt's last token, run as observers
 * inside the forward pass. */
#ifndef CL_ATTRIBUTION_H
#define CL_ATTRIBUTION_H

#include "cl_forward.h"

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
