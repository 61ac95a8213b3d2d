/* cl_neurons.c: congruence of MLP neurons with tokens, <W_out[i], u_t>, in row blocks of
 * W_out so memory is (block, n_tokens), never (n_neurons, n_tokens). Per neuron: the top-k
 * allowed tokens; per token: the best two neurons (across calls, for all-layer searches). Ties
 * go to the smaller token id / neuron index, so results are deterministic. */
#include "cl_neurons.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cl_blas.h"

enum { ROWS = 256 };

/* insert (v, t) into the descending list (vals, toks) of length k; ties keep the smaller id first */
static void topk_insert(float *vals, int32_t *toks, int k, float v, int32_t t) {
    if (!(v > vals[k - 1]) && !(v == vals[k - 1] && toks[k - 1] > t)) return;
    int i = k - 1;
    while (i > 0 && (v > vals[i - 1] || (v == vals[i - 1] && t < toks[i - 1]))) {
        vals[i] = vals[i - 1];
        toks[i] = toks[i - 1];
        i--;
    }
    vals[i] = v;
    toks[i] = t;
}

cl_status cl_congruence(const float *W_out, int n_neurons, int d_model, const float *U, int n_tokens,
                        const uint8_t *allowed, cl_congruence_out *out, const cl_cancel *cancel, cl_error *err) {
    if (out->top < 1) return cl_fail(err, CL_EINVAL, "top must be >= 1");
    float *S = malloc((size_t)ROWS * n_tokens * sizeof(float));
    if (!S) return cl_fail(err, CL_ENOMEM, "out of memory for a (%d, %d) congruence block", ROWS, n_tokens);
    const int k = out->top;
    for (size_t i = 0; i < (size_t)n_neurons * k; i++) { out->top_val[i] = -INFINITY; out->top_tok[i] = -1; }
    cl_status st = CL_OK;
    for (int r0 = 0; r0 < n_neurons; r0 += ROWS) {
        if (cl_cancel_check(cancel)) { st = cl_fail(err, CL_ECANCELLED, "cancelled"); break; }
        int rows = n_neurons - r0 < ROWS ? n_neurons - r0 : ROWS;
        cl_sgemm(0, 1, rows, n_tokens, d_model, W_out + (size_t)r0 * d_model, d_model, U, d_model, 0.0f, S, n_tokens);
#pragma omp parallel for schedule(static) num_threads(cl_num_threads())
        for (int r = 0; r < rows; r++) {
            const float *s = S + (size_t)r * n_tokens;
            float *tv = out->top_val + (size_t)(r0 + r) * k;
            int32_t *tt = out->top_tok + (size_t)(r0 + r) * k;
            for (int t = 0; t < n_tokens; t++)
                if (!allowed || allowed[t]) topk_insert(tv, tt, k, s[t], t);
        }
        if (out->col_idx) {
#pragma omp parallel for schedule(static) num_threads(cl_num_threads())
            for (int t = 0; t < n_tokens; t++) {
                float *cv = out->col_val + (size_t)t * 2;
                int64_t *ci = out->col_idx + (size_t)t * 2;
                for (int r = 0; r < rows; r++) {
                    float v = S[(size_t)r * n_tokens + t];
                    int64_t id = out->neuron_offset + r0 + r;
                    if (ci[0] < 0 || v > cv[0]) { cv[1] = cv[0]; ci[1] = ci[0]; cv[0] = v; ci[0] = id; }
                    else if (ci[1] < 0 || v > cv[1]) { cv[1] = v; ci[1] = id; }
                }
            }
        }
    }
    free(S);
    return st;
}
