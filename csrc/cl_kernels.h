/* cl_kernels.h: pure numeric kernels of the forward pass. No allocation, no BLAS, no hooks. */
#ifndef CL_KERNELS_H
#define CL_KERNELS_H

#include <stddef.h>

/* LayerNorm over rows: x <- (x - mean) / scale * w + b with scale = sqrt(var + eps).
 * w, b may be NULL (weights folded: TransformerLens LNPre). Feeds ln*.hook_scale/normalized. */
void cl_layernorm(float *out /* (N, C) */, float *scale /* (N) or NULL */, const float *inp /* (N, C) */,
                  const float *w /* (C) or NULL */, const float *b /* (C) or NULL */, size_t N, size_t C, float eps);

/* Activations, in place over n values. gelu_new: 0.5x(1 + tanh(sqrt(2/pi)(x + 0.044715x^3)));
 * gelu: 0.5x(1 + erf(x / sqrt 2)); relu: max(x, 0). */
void cl_gelu_tanh(float *x, size_t n);
void cl_gelu_erf(float *x, size_t n);
void cl_relu(float *x, size_t n);

/* out[r, :] = bias for each of N rows (GEMM accumulates onto it). */
void cl_fill_rows(float *out /* (N, C) */, const float *bias /* (C) or NULL */, size_t N, size_t C);
void cl_add(float *y, const float *x, size_t n); /* y += x */

/* NeoX rotate-half rotary embedding on the first rotary_dim dims of each head, in place.
 * x rows: one token each, row stride `stride` floats, heads at h * d_head. pos0: position of row 0. */
void cl_rotary(float *x, size_t stride, int n_rows, int n_heads, int d_head, int rotary_dim,
               const float *cos_tab /* (n_ctx, rotary_dim/2) */, const float *sin_tab);

/* Causal attention for one sequence and one head, fused: scores, softmax(scale * scores),
 * pattern @ v. q, k, v rows of d_head floats at row stride `stride`; z rows of d_head at stride
 * zstride. scratch: cl_attention_head_scratch(T, d_head) floats. */
size_t cl_attention_head_scratch(int T, int d_head);
void cl_attention_head(float *z, size_t zstride, const float *q, const float *k, const float *v, size_t stride,
                       int T, int d_head, float scale, float *scratch);

/* The same in three phases over a materialised (T, T_pad) score matrix, so hooks can read and
 * replace scores and pattern: masked entries are -inf in scores and 0 in pattern. */
void cl_attention_scores(float *S /* (T_pad rows used: T, T_pad) */, size_t ldS, const float *q, const float *k,
                         size_t stride, int T, int T_pad, int d_head, float scale, float *scratch);
void cl_attention_softmax(float *P /* (T_pad, T_pad) in place */, size_t ldS, int T, int T_pad);
void cl_attention_pv(float *z, size_t zstride, const float *P, size_t ldS, const float *v, size_t stride, int T, int d_head);

/* As PyTorch's pattern @ v, where a masked (zero) weight times a NaN or infinite value is NaN:
 * every column d of v (T rows, stride) holding a non-finite value makes z[:, d] NaN for all T
 * query rows (zstride), the earlier ones included. */
void cl_attention_nonfinite_v(float *z, size_t zstride, const float *v, size_t stride, int T, int d_head);

/* As transformers' eager attention, whose causal mask is added to the scores: a NaN in any key
 * (k: T rows, stride, d_head features) makes every query's scores row hold a NaN, so the whole
 * pattern and every z row of this head are NaN. Fills P's T rows x T_pad columns (ldS) and z's
 * T rows (zstride) with NaN, each when not NULL; returns whether k held a NaN. */
int cl_attention_nan_keys(float *P, size_t ldS, int T_pad, float *z, size_t zstride, const float *k, size_t stride, int T,
                          int d_head);

/* Softmax of scale * (a block of causal score rows), in place: row r is query first_row + r and
 * keeps columns 0..first_row+r; later columns (up to ncols) are set to 0. scale > 0. */
void cl_softmax_causal(float *S /* (n_rows, ncols) */, size_t ldS, int n_rows, int first_row, int ncols, float scale);

float cl_expf(float x);

#endif
