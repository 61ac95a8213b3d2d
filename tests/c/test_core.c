/* tests/c/test_core.c: the C library without Python: kernels against libm / double-precision
 * references, the safetensors validator on hand-written files, config errors, forward-pass
 * input errors. Ends with "N passed, N failed" and a non-zero exit status on failure. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cl_blas.h"
#include "cl_common.h"
#include "cl_forward.h"
#include "cl_kernels.h"
#include "cl_model.h"
#include "cl_safetensors.h"

static int passed, failed;
#define CHECK(cond, ...) do { if (cond) passed++; else { failed++; printf("FAIL %s:%d: ", __FILE__, __LINE__); printf(__VA_ARGS__); printf("\n"); } } while (0)

static void test_expf(void) {
    double worst = 0;
    for (float x = -87.0f; x < 88.0f; x += 0.0137f) {
        double rel = fabs((double)cl_expf(x) - exp((double)x)) / exp((double)x);
        if (rel > worst) worst = rel;
    }
    CHECK(worst < 3e-7, "cl_expf worst relative error %g", worst);
    CHECK(cl_expf(-1000.0f) < 1e-37f && cl_expf(1000.0f) < INFINITY, "cl_expf clamps");
}

static void test_gelu(void) {
    enum { N = 20001 };
    static float a[N], b[N];
    for (int i = 0; i < N; i++) a[i] = b[i] = -10.0f + 20.0f * i / (N - 1);
    cl_gelu_erf(a, N);
    cl_gelu_tanh(b, N);
    double we = 0, wt = 0;
    for (int i = 0; i < N; i++) {
        double x = -10.0 + 20.0 * i / (N - 1);
        double e = 0.5 * x * (1 + erf(x / sqrt(2.0)));
        double t = 0.5 * x * (1 + tanh(sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x)));
        if (fabs(a[i] - e) > we) we = fabs(a[i] - e);
        if (fabs(b[i] - t) > wt) wt = fabs(b[i] - t);
    }
    CHECK(we < 2e-6, "gelu (erf) max abs error %g", we);
    CHECK(wt < 2e-6, "gelu (tanh) max abs error %g", wt);
    /* a short array goes through the padded tail alone: the same numbers, lane for lane */
    float c[5], d[5];
    for (int i = 0; i < 5; i++) c[i] = d[i] = -10.0f + 20.0f * (i + 32) / (N - 1);
    cl_gelu_erf(c, 5);
    cl_gelu_tanh(d, 5);
    CHECK(memcmp(c, a + 32, sizeof c) == 0 && memcmp(d, b + 32, sizeof d) == 0, "gelu tail differs from the vector path");
}

static void test_layernorm(void) {
    enum { R = 3, C = 37 };
    float x[R * C], y[R * C], s[R], w[C], b[C];
    for (int i = 0; i < R * C; i++) x[i] = sinf(i * 1.7f) * 3 + (i / C);
    for (int i = 0; i < C; i++) { w[i] = 1 + 0.1f * i; b[i] = 0.01f * i; }
    cl_layernorm(y, s, x, w, b, R, C, 1e-5f);
    double worst = 0;
    for (int r = 0; r < R; r++) {
        double mu = 0, var = 0;
        for (int c = 0; c < C; c++) mu += x[r * C + c];
        mu /= C;
        for (int c = 0; c < C; c++) var += (x[r * C + c] - mu) * (x[r * C + c] - mu);
        var /= C;
        double sc = sqrt(var + 1e-5);
        CHECK(fabs(s[r] - sc) < 1e-5, "layernorm scale row %d", r);
        for (int c = 0; c < C; c++) {
            double e = (x[r * C + c] - mu) / sc * w[c] + b[c];
            if (fabs(y[r * C + c] - e) > worst) worst = fabs(y[r * C + c] - e);
        }
    }
    CHECK(worst < 1e-5, "layernorm max abs error %g", worst);
}

/* the fused kernel against double-precision attention, over shapes that hit every path:
 * d_head below, at and above 16 and not a multiple of it, T not a multiple of 4 or 16, T = 1 */
static void attention_case(int T, int dh, int stride) {
    float *q = malloc(sizeof(float) * T * stride), *k = malloc(sizeof(float) * T * stride),
          *v = malloc(sizeof(float) * T * stride), *z = malloc(sizeof(float) * T * dh),
          *scratch = malloc(sizeof(float) * cl_attention_head_scratch(T, dh));
    for (int i = 0; i < T * stride; i++) { q[i] = sinf(i * 0.37f); k[i] = cosf(i * 0.91f); v[i] = sinf(i * 1.3f + 1); }
    cl_attention_head(z, dh, q, k, v, stride, T, dh, 0.35f, scratch);
    double worst = 0, *s = malloc(sizeof(double) * T);
    for (int i = 0; i < T; i++) {
        double mx = -1e300, sum = 0;
        for (int j = 0; j <= i; j++) {
            s[j] = 0;
            for (int d = 0; d < dh; d++) s[j] += (double)q[i * stride + d] * k[j * stride + d];
            s[j] *= 0.35;
            if (s[j] > mx) mx = s[j];
        }
        for (int j = 0; j <= i; j++) { s[j] = exp(s[j] - mx); sum += s[j]; }
        for (int d = 0; d < dh; d++) {
            double o = 0;
            for (int j = 0; j <= i; j++) o += s[j] / sum * v[j * stride + d];
            if (fabs(o - z[i * dh + d]) > worst) worst = fabs(o - z[i * dh + d]);
        }
    }
    CHECK(worst < 1e-5, "attention T=%d d_head=%d: max abs error %g", T, dh, worst);
    free(q); free(k); free(v); free(z); free(scratch); free(s);
}

static void test_attention_vs_naive(void) {
    const int cases[][3] = {{23, 8, 24}, {1, 16, 16}, {5, 12, 36}, {17, 16, 48}, {64, 32, 96}, {130, 64, 192}, {37, 40, 120}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) attention_case(cases[c][0], cases[c][1], cases[c][2]);
}

/* cl_sgemm against a double-precision product: split by columns (wide C), by rows (tall C),
 * with B transposed, with beta = 1, sizes not multiples of the split's 32, 1 to 3 threads, and
 * from inside a parallel region (where it runs on the calling thread). */
static double gemm_case(int transB, int M, int N, int K, float beta) {
    float *A = malloc(sizeof(float) * M * K), *B = malloc(sizeof(float) * K * N), *C = malloc(sizeof(float) * M * N);
    for (int i = 0; i < M * K; i++) A[i] = sinf(i * 0.013f);
    for (int i = 0; i < K * N; i++) B[i] = cosf(i * 0.007f);
    for (int i = 0; i < M * N; i++) C[i] = 0.5f;
    cl_sgemm(0, transB, M, N, K, A, K, B, transB ? K : N, beta, C, N);
    double worst = 0;
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double e = beta * 0.5;
            for (int k = 0; k < K; k++) e += (double)A[i * K + k] * (transB ? B[j * K + k] : B[k * N + j]);
            double d = fabs(e - C[i * N + j]);
            worst = d > worst ? d : worst;
        }
    free(A); free(B); free(C);
    return worst;
}

static void test_sgemm_split(void) {
    const int shapes[][5] = {{0, 70, 333, 129, 0}, {1, 70, 333, 129, 1}, {0, 517, 45, 200, 1}, {1, 300, 301, 64, 0}, {0, 3, 5, 7, 0}};
    for (int nt = 1; nt <= 3; nt++) {
        cl_set_num_threads(nt);
        for (size_t c = 0; c < sizeof shapes / sizeof shapes[0]; c++) {
            const int *sh = shapes[c];
            double w = gemm_case(sh[0], sh[1], sh[2], sh[3], sh[4] ? 1.0f : 0.0f);
            CHECK(w < 1e-4, "sgemm transB=%d %dx%dx%d beta=%d on %d threads: max abs error %g", sh[0], sh[1], sh[2], sh[3], sh[4], nt, w);
        }
    }
    double w[2] = {0, 0};
#pragma omp parallel for num_threads(2)
    for (int i = 0; i < 2; i++) w[i] = gemm_case(i, 300, 301, 64, 0.0f);
    CHECK(w[0] < 1e-4 && w[1] < 1e-4, "sgemm inside a parallel region: max abs errors %g %g", w[0], w[1]);
    cl_set_num_threads(0);
    CHECK(cl_num_threads() >= 1, "thread count back to the default");
}

static const char *tmpdir;

static void write_file(const char *name, const void *data, size_t n) {
    char p[512];
    snprintf(p, sizeof p, "%s/%s", tmpdir, name);
    FILE *f = fopen(p, "wb");
    fwrite(data, 1, n, f);
    fclose(f);
}

/* header JSON + data bytes -> model.safetensors in tmpdir; returns the open status */
static cl_status open_st(const char *header, size_t data_bytes, cl_error *err) {
    size_t hl = strlen(header);
    unsigned char *buf = calloc(1, 8 + hl + data_bytes);
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)((uint64_t)hl >> (8 * i));
    memcpy(buf + 8, header, hl);
    write_file("model.safetensors", buf, 8 + hl + data_bytes);
    free(buf);
    cl_st_set *s = NULL;
    cl_status st = cl_st_open(tmpdir, &s, err);
    cl_st_close(s);
    return st;
}

static void test_safetensors(void) {
    cl_error err = {0};
    CHECK(open_st("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, &err) == CL_OK, "valid file: %s", err.msg);
    CHECK(open_st("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 4, &err) == CL_EFORMAT &&
          strstr(err.msg, "outside the file's data section"), "truncated: %s", err.msg);
    CHECK(open_st("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                  "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12, &err) == CL_EFORMAT &&
          strstr(err.msg, "overlaps"), "overlap: %s", err.msg);
    CHECK(open_st("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12, &err) == CL_EFORMAT &&
          strstr(err.msg, "belong to no tensor"), "hole: %s", err.msg);
    CHECK(open_st("{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8, &err) == CL_EFORMAT &&
          strstr(err.msg, "need 12"), "size mismatch: %s", err.msg);
    CHECK(open_st("{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8, &err) == CL_EFORMAT &&
          strstr(err.msg, "shape[0]"), "negative shape: %s", err.msg);
    CHECK(open_st("{\"a\":{\"dtype\":\"Q4\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, &err) == CL_EFORMAT &&
          strstr(err.msg, "unknown dtype 'Q4'"), "dtype: %s", err.msg);
    CHECK(open_st("[1,2,3]", 0, &err) == CL_EFORMAT && strstr(err.msg, "not a JSON object"), "not object: %s", err.msg);
    CHECK(open_st("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}", 8, &err) == CL_EFORMAT &&
          strstr(err.msg, "not valid JSON"), "bad JSON: %s", err.msg);
    CHECK(open_st("{\"__metadata__\":{\"format\":\"pt\"}}", 0, &err) == CL_OK, "metadata only: %s", err.msg);
    float h[2];
    uint16_t f16[2] = {0x3c00, 0xc000}; /* 1.0, -2.0 */
    cl_to_f32(h, f16, 2, CL_DT_F16, &err);
    CHECK(h[0] == 1.0f && h[1] == -2.0f, "f16 conversion %g %g", h[0], h[1]);
    uint16_t bf[2] = {0x3f80, 0x4049}; /* 1.0, 3.140625 */
    cl_to_f32(h, bf, 2, CL_DT_BF16, &err);
    CHECK(h[0] == 1.0f && h[1] == 3.140625f, "bf16 conversion %g %g", h[0], h[1]);
}

static void test_config_errors(void) {
    cl_config c;
    cl_error err = {0};
    CHECK(cl_config_parse(&c, "{\"model_type\":\"gpt2\",\"n_embd\":10,\"n_layer\":1,\"n_head\":3,\"n_positions\":8,\"vocab_size\":5}",
                          "config.json", &err) == CL_EFORMAT && strstr(err.msg, "not divisible"), "heads: %s", err.msg);
    CHECK(cl_config_parse(&c, "{\"model_type\":\"bert\"}", "config.json", &err) == CL_EFORMAT &&
          strstr(err.msg, "'bert' is not supported"), "arch: %s", err.msg);
    CHECK(cl_config_parse(&c, "{\"model_type\":\"gpt_neox\",\"hidden_size\":64,\"num_attention_heads\":4,\"num_hidden_layers\":1,"
                          "\"max_position_embeddings\":8,\"vocab_size\":5,\"intermediate_size\":8,\"rope_scaling\":{\"type\":\"linear\"}}",
                          "config.json", &err) == CL_EFORMAT && strstr(err.msg, "rope_scaling"), "rope: %s", err.msg);
    CHECK(cl_config_parse(&c, "{\"model_type\":\"gpt_neox\",\"hidden_size\":64,\"num_attention_heads\":4,\"num_hidden_layers\":1,"
                          "\"max_position_embeddings\":8,\"vocab_size\":5,\"intermediate_size\":8,"
                          "\"rope_parameters\":{\"rope_theta\":500,\"partial_rotary_factor\":0.5}}", "config.json", &err) == CL_OK &&
          c.rotary_dim == 8 && c.rotary_base == 500.0f && c.parallel, "neox rope_parameters: %s", err.msg);
}

int main(void) {
    char tpl[] = "/tmp/cl_test_XXXXXX";
    tmpdir = mkdtemp(tpl);
    test_expf();
    test_gelu();
    test_layernorm();
    test_attention_vs_naive();
    test_sgemm_split();
    test_safetensors();
    test_config_errors();
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    if (system(cmd)) {}
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
