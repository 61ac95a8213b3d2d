/* cl_neurons.h: neuron-token congruence <W_out[i], u_t>, blockwise, with top-k per neuron and
 * top-2 per token (for the "mutually exclusive congruence" search). */
#ifndef CL_NEURONS_H
#define CL_NEURONS_H

#include "cl_common.h"

typedef struct {
    int top;                /* tokens kept per neuron */
    int32_t *top_tok;       /* (n_neurons, top) best allowed tokens, by congruence descending */
    float *top_val;         /* (n_neurons, top) */
    /* optional, per token over every neuron seen so far (across calls): best two neurons */
    int64_t *col_idx;       /* (n_tokens, 2) global neuron index, -1 if none; or NULL */
    float *col_val;         /* (n_tokens, 2) */
    int64_t neuron_offset;  /* global index of this call's neuron 0 */
} cl_congruence_out;

/* C = W_out (n_neurons, d_model) @ U^T with U (n_tokens, d_model) (the unembedding transposed, or
 * the embedding), computed in blocks of rows. allowed (n_tokens) or NULL: tokens eligible for a
 * neuron's top-k (the per-token top-2 uses every token). */
cl_status cl_congruence(const float *W_out, int n_neurons, int d_model, const float *U, int n_tokens,
                        const uint8_t *allowed, cl_congruence_out *out, const cl_cancel *cancel, cl_error *err);

#endif
