/* cl_kernels.c: the forward pass's elementwise and attention kernels, written so GCC
 * vectorises them without -ffast-math (inner loops are axpy-shaped, never reductions over
 * floats in a changing order; exp, GELU, softmax and the attention blocks explicitly on
 * 16-float vectors), and compiled for AVX-512 or AVX2+FMA where the CPU has them
 * (target_clones by ISA level, so AMD and Intel CPUs alike get the wide versions).
 * Pure functions of their arguments: no allocation, no BLAS, no hooks; the only global read is
 * the core's thread count (cl_num_threads). */
#include "cl_kernels.h"

#include "cl_common.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi" /* v16 helpers are inlined; no vector crosses an ABI boundary */
#endif

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(CL_NO_CLONES)
#define HOT __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define HOT
#endif

/* 16 floats, GCC/Clang vector extensions: one zmm in the AVX-512 clone, two ymm in the AVX2
 * one, four xmm in the default one. Every transcendental loop is written on them, so each clone
 * vectorises it whatever its auto-vectoriser decides. */
#define VINLINE static inline __attribute__((always_inline)) /* into each clone: a call would use the default ISA */
typedef float v16 __attribute__((vector_size(64)));
typedef int32_t v16i __attribute__((vector_size(64)));
enum { W = 16 };

VINLINE v16 vload(const float *p) { v16 v; memcpy(&v, p, sizeof v); return v; }
VINLINE void vstore(float *p, v16 v) { memcpy(p, &v, sizeof v); }
VINLINE v16 vsplat(float x) { return (v16){0} + x; }
VINLINE v16 vselect(v16i m, v16 a, v16 b) { return (v16)(((v16i)a & m) | ((v16i)b & ~m)); }
VINLINE v16 vmax(v16 a, v16 b) { return vselect(a > b, a, b); }
VINLINE float hmax(v16 v) { float m = v[0]; for (int k = 1; k < W; k++) m = v[k] > m ? v[k] : m; return m; }
VINLINE float hsum(v16 v) { float s = 0.0f; for (int k = 0; k < W; k++) s += v[k]; return s; }

/* exp(x) in float, ~1 ulp, on 16 lanes: x = n ln2 + r, |r| <= ln2/2, Cephes polynomial for e^r,
 * 2^n by building the exponent bits. The core's only exp. */
VINLINE v16 vexp(v16 x) {
    x = vmax(x, vsplat(-87.33654f));
    x = vselect(x > 88.0f, vsplat(88.0f), x); /* keeps 2^n finite */
    const float magic = 12582912.0f;          /* 1.5 * 2^23: adding it rounds to an integer */
    v16 t = x * 1.44269504088896341f + magic;
    v16 n = t - magic;
    v16 r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    v16 p = vsplat(1.9875691500e-4f);
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    v16 y = p * r * r + r + 1.0f;
    v16i bits = (__builtin_convertvector(n, v16i) + 127) << 23;
    return y * (v16)bits;
}

float cl_expf(float x) { return vexp(vsplat(x))[0]; }

/* f over the last n % 16 floats of x[0..n), in place, through a padded copy. */
VINLINE void tail16(float *x, size_t n, v16 (*f)(v16)) {
    size_t nv = n - n % W, m = n - nv;
    if (!m) return;
    float buf[W] = {0};
    memcpy(buf, x + nv, m * sizeof(float));
    vstore(buf, f(vload(buf)));
    memcpy(x + nv, buf, m * sizeof(float));
}

HOT void cl_layernorm(float *out, float *scale, const float *inp, const float *w, const float *b, size_t N, size_t C,
                      float eps) {
#pragma omp parallel for schedule(static) num_threads(cl_num_threads()) if (N * C > 32768)
    for (size_t r = 0; r < N; r++) {
        const float *x = inp + r * C;
        float *y = out + r * C;
        double s = 0;
        for (size_t c = 0; c < C; c++) s += x[c];
        float mu = (float)(s / (double)C);
        double v = 0;
        for (size_t c = 0; c < C; c++) { double d = (double)x[c] - mu; v += d * d; }
        float sc = sqrtf((float)(v / (double)C) + eps), inv = 1.0f / sc;
        if (scale) scale[r] = sc;
        if (w && b) for (size_t c = 0; c < C; c++) y[c] = (x[c] - mu) * inv * w[c] + b[c];
        else for (size_t c = 0; c < C; c++) y[c] = (x[c] - mu) * inv;
    }
}

VINLINE v16 gelu_tanh16(v16 v) {
    v16 u = 0.7978845608028654f * (v + 0.044715f * v * v * v);
    v16 th = 1.0f - 2.0f / (vexp(2.0f * u) + 1.0f); /* tanh(u) */
    return 0.5f * v * (1.0f + th);
}

HOT void cl_gelu_tanh(float *x, size_t n) {
#pragma omp parallel for schedule(static) num_threads(cl_num_threads()) if (n > 65536)
    for (size_t i = 0; i < n / W; i++) vstore(x + i * W, gelu_tanh16(vload(x + i * W)));
    tail16(x, n, gelu_tanh16);
}

/* erf by Abramowitz & Stegun 7.1.26 (|error| <= 1.5e-7, float rounding level). */
VINLINE v16 gelu_erf16(v16 v) {
    v16 z = v * 0.70710678118654752f;
    v16 az = (v16)((v16i)z & 0x7fffffff);
    v16 t = 1.0f / (1.0f + 0.3275911f * az);
    v16 poly = t * (0.254829592f + t * (-0.284496736f + t * (1.421413741f + t * (-1.453152027f + t * 1.061405429f))));
    v16 e = 1.0f - poly * vexp(-az * az);
    e = vselect(z < 0.0f, -e, e);
    return 0.5f * v * (1.0f + e);
}

HOT void cl_gelu_erf(float *x, size_t n) {
#pragma omp parallel for schedule(static) num_threads(cl_num_threads()) if (n > 65536)
    for (size_t i = 0; i < n / W; i++) vstore(x + i * W, gelu_erf16(vload(x + i * W)));
    tail16(x, n, gelu_erf16);
}

void cl_relu(float *x, size_t n) {
    for (size_t i = 0; i < n; i++) x[i] = x[i] > 0 ? x[i] : 0.0f;
}

void cl_fill_rows(float *out, const float *bias, size_t N, size_t C) {
    for (size_t r = 0; r < N; r++) {
        if (bias) memcpy(out + r * C, bias, C * sizeof(float));
        else memset(out + r * C, 0, C * sizeof(float));
    }
}

HOT void cl_add(float *y, const float *x, size_t n) {
    for (size_t i = 0; i < n; i++) y[i] += x[i];
}

void cl_rotary(float *x, size_t stride, int n_rows, int n_heads, int d_head, int rotary_dim, const float *cos_tab,
               const float *sin_tab) {
    int half = rotary_dim / 2;
    for (int r = 0; r < n_rows; r++) {
        const float *c = cos_tab + (size_t)r * half, *s = sin_tab + (size_t)r * half;
        for (int h = 0; h < n_heads; h++) {
            float *v = x + (size_t)r * stride + (size_t)h * d_head;
            for (int i = 0; i < half; i++) {
                float x1 = v[i], x2 = v[i + half];
                v[i] = x1 * c[i] - x2 * s[i];
                v[i + half] = x2 * c[i] + x1 * s[i];
            }
        }
    }
}

/* kT (d_head, T) <- k (T, d_head) at row stride `stride`: lets score rows be axpy loops. */
static void transpose_k(float *kT, const float *k, size_t stride, int T, int d_head) {
    for (int j = 0; j < T; j++)
        for (int d = 0; d < d_head; d++) kT[(size_t)d * T + j] = k[(size_t)j * stride + d];
}

/* s[0..i] = scale * q_i . k_j for j <= i (the causal half only). */
static inline void score_row(float *s, const float *qi, const float *kT, int T, int i, int d_head, float scale) {
    for (int j = 0; j <= i; j++) s[j] = 0.0f;
    for (int d = 0; d < d_head; d++) {
        const float qd = qi[d] * scale, *kd = kT + (size_t)d * T;
        for (int j = 0; j <= i; j++) s[j] += qd * kd[j];
    }
}

/* softmax(scale * s[0..n)) in place (scale > 0); entries from n on untouched. The max and the
 * sum run in 16 lanes, then across them: a fixed order, the same on every run and thread count.
 * As in PyTorch, a row holding a NaN, or whose max is infinite, is NaN throughout (the max
 * comparisons and vexp's clamps would otherwise drop a NaN); returns 1 for such a row. */
VINLINE int softmax_row(float *s, int n, float scale) {
    int j, nv = n - n % W, nan = 0;
    float mx = -INFINITY, sum = 0.0f;
    if (nv) {
        v16 m = vload(s);
        v16i bad = m != m;
        for (j = W; j < nv; j += W) {
            v16 x = vload(s + j);
            bad |= x != x;
            m = vmax(m, x);
        }
        mx = hmax(m);
        for (int k = 0; k < W; k++) nan |= bad[k] != 0;
    }
    for (j = nv; j < n; j++) { mx = s[j] > mx ? s[j] : mx; nan |= s[j] != s[j]; }
    if (nan || mx == INFINITY || mx == -INFINITY) {
        for (j = 0; j < n; j++) s[j] = NAN;
        return 1;
    }
    v16 acc = vsplat(0.0f);
    for (j = 0; j < nv; j += W) {
        v16 e = vexp((vload(s + j) - mx) * scale);
        vstore(s + j, e);
        acc += e;
    }
    sum = hsum(acc);
    if (nv < n) { /* the last partial group, through a padded copy */
        float buf[W] = {0};
        memcpy(buf, s + nv, (size_t)(n - nv) * sizeof(float));
        vstore(buf, vexp((vload(buf) - mx) * scale));
        for (j = nv; j < n; j++) {
            s[j] = buf[j - nv];
            sum += s[j];
        }
    }
    float inv = 1.0f / sum;
    for (j = 0; j < nv; j += W) vstore(s + j, vload(s + j) * inv);
    for (j = nv; j < n; j++) s[j] *= inv;
    return 0;
}

/* z_i = sum_j p_j v_j */
static inline void pv_row(float *zi, const float *p, int n, const float *v, size_t stride, int d_head) {
    for (int d = 0; d < d_head; d++) zi[d] = 0.0f;
    for (int j = 0; j < n; j++) {
        const float pj = p[j], *vj = v + (size_t)j * stride;
        for (int d = 0; d < d_head; d++) zi[d] += pj * vj[d];
    }
}

HOT void cl_softmax_causal(float *S, size_t ldS, int n_rows, int first_row, int ncols, float scale) {
    for (int r = 0; r < n_rows; r++) {
        float *s = S + (size_t)r * ldS;
        int n = first_row + r + 1;
        float fill = softmax_row(s, n, scale) ? NAN : 0.0f; /* a NaN row is NaN at masked keys too, as in PyTorch */
        for (int j = n; j < ncols; j++) s[j] = fill;
    }
}

size_t cl_attention_head_scratch(int T, int d_head) {
    size_t Tp = ((size_t)T + W - 1) / W * W;
    return (size_t)d_head * Tp + 4 * Tp + 4 * (size_t)d_head;
}

/* Four query rows i0..i0+3 at a time (rows past T repeat the last one and are not stored):
 * scores against 16 keys per step from k^T (zero-padded to Tp columns) in registers, softmax
 * per row, then pattern @ v 16 dims per step. Every sum runs in the same order, with the same
 * operations, as in cl_attention_scores/softmax/pv, so capturing hook_attn_scores or
 * hook_pattern (which takes that path) changes no number. */
HOT void cl_attention_head(float *z, size_t zstride, const float *q, const float *k, const float *v, size_t stride,
                           int T, int d_head, float scale, float *scratch) {
    const int Tp = (T + W - 1) / W * W, dv = d_head - d_head % W;
    float *kT = scratch, *S = scratch + (size_t)d_head * Tp, *qs = S + 4 * (size_t)Tp;
    for (int d = 0; d < d_head; d++) {
        float *row = kT + (size_t)d * Tp;
        for (int j = 0; j < T; j++) row[j] = k[(size_t)j * stride + d];
        for (int j = T; j < Tp; j++) row[j] = 0.0f;
    }
    for (int i0 = 0; i0 < T; i0 += 4) {
        const int rows = T - i0 < 4 ? T - i0 : 4, ncols = i0 + rows; /* keys 0..ncols-1 */
        const float *qr[4];
        for (int r = 0; r < 4; r++) { /* q * scale, as score_row does */
            const float *src = q + (size_t)(i0 + (r < rows ? r : rows - 1)) * stride;
            float *dst = qs + (size_t)r * d_head;
            for (int d = 0; d < d_head; d++) dst[d] = src[d] * scale;
            qr[r] = dst;
        }
        for (int jc = 0; jc < ncols; jc += W) {
            v16 a0 = vsplat(0.0f), a1 = a0, a2 = a0, a3 = a0;
            for (int d = 0; d < d_head; d++) {
                v16 kv = vload(kT + (size_t)d * Tp + jc);
                a0 += qr[0][d] * kv;
                a1 += qr[1][d] * kv;
                a2 += qr[2][d] * kv;
                a3 += qr[3][d] * kv;
            }
            vstore(S + jc, a0);
            vstore(S + Tp + jc, a1);
            vstore(S + 2 * (size_t)Tp + jc, a2);
            vstore(S + 3 * (size_t)Tp + jc, a3);
        }
        const int ncv = (ncols + W - 1) / W * W; /* columns the p @ v step reads: zero past each row's keys */
        for (int r = 0; r < 4; r++) {
            float *s = S + (size_t)r * Tp;
            int n = r < rows ? i0 + r + 1 : 0;
            float fill = n && softmax_row(s, n, 1.0f) ? NAN : 0.0f;
            for (int j = n; j < ncv; j++) s[j] = fill;
        }
        for (int dc = 0; dc < dv; dc += W) {
            v16 a0 = vsplat(0.0f), a1 = a0, a2 = a0, a3 = a0;
            for (int j = 0; j < ncols; j++) {
                v16 vv = vload(v + (size_t)j * stride + dc);
                a0 += S[j] * vv;
                a1 += S[Tp + j] * vv;
                a2 += S[2 * (size_t)Tp + j] * vv;
                a3 += S[3 * (size_t)Tp + j] * vv;
            }
            v16 acc[4] = {a0, a1, a2, a3};
            for (int r = 0; r < rows; r++) vstore(z + (size_t)(i0 + r) * zstride + dc, acc[r]);
        }
        for (int r = 0; r < rows && dv < d_head; r++) { /* the d_head % 16 tail */
            float *zi = z + (size_t)(i0 + r) * zstride;
            const float *p = S + (size_t)r * Tp;
            for (int d = dv; d < d_head; d++) zi[d] = 0.0f;
            for (int j = 0; j < ncols; j++)
                for (int d = dv; d < d_head; d++) zi[d] += p[j] * v[(size_t)j * stride + d];
        }
    }
}

HOT void cl_attention_scores(float *S, size_t ldS, const float *q, const float *k, size_t stride, int T, int T_pad,
                             int d_head, float scale, float *scratch) {
    float *kT = scratch;
    transpose_k(kT, k, stride, T, d_head);
    for (int i = 0; i < T_pad; i++) {
        float *s = S + (size_t)i * ldS;
        int n = 0;
        if (i < T) { score_row(s, q + (size_t)i * stride, kT, T, i, d_head, scale); n = i + 1; }
        for (int j = n; j < T_pad; j++) s[j] = -INFINITY;
    }
}

HOT void cl_attention_softmax(float *P, size_t ldS, int T, int T_pad) {
    for (int i = 0; i < T_pad; i++) {
        float *s = P + (size_t)i * ldS;
        int n = 0;
        float fill = 0.0f;
        if (i < T) { fill = softmax_row(s, i + 1, 1.0f) ? NAN : 0.0f; n = i + 1; }
        for (int j = n; j < T_pad; j++) s[j] = fill;
    }
}

HOT void cl_attention_pv(float *z, size_t zstride, const float *P, size_t ldS, const float *v, size_t stride, int T,
                         int d_head) {
    for (int i = 0; i < T; i++) pv_row(z + (size_t)i * zstride, P + (size_t)i * ldS, i + 1, v, stride, d_head);
}

void cl_attention_nonfinite_v(float *z, size_t zstride, const float *v, size_t stride, int T, int d_head) {
    for (int d = 0; d < d_head; d++) {
        int bad = 0;
        for (int j = 0; j < T && !bad; j++) bad = !isfinite(v[(size_t)j * stride + d]);
        if (bad)
            for (int i = 0; i < T; i++) z[(size_t)i * zstride + d] = NAN;
    }
}

int cl_attention_nan_keys(float *P, size_t ldS, int T_pad, float *z, size_t zstride, const float *k, size_t stride, int T,
                          int d_head) {
    int nan = 0;
    for (int j = 0; j < T && !nan; j++)
        for (int d = 0; d < d_head; d++) nan |= isnan(k[(size_t)j * stride + d]);
    if (!nan) return 0;
    for (int i = 0; i < T; i++) {
        if (P) for (int j = 0; j < T_pad; j++) P[(size_t)i * ldS + j] = NAN;
        if (z) for (int d = 0; d < d_head; d++) z[(size_t)i * zstride + d] = NAN;
    }
    return 1;
}
