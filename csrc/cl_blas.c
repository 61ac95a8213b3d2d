/* cl_blas.c: the only file that includes cblas.h (OpenBLAS). Optional accounting (off by
 * default) of GEMM calls, time and FLOPs, for benchmarks/bench_forward.py. */
#include "cl_blas.h"

#include <cblas.h>
#include <time.h>

static int stats_on;
static cl_blas_stats stats;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void cl_sgemm(int transA, int transB, int M, int N, int K, const float *A, int lda, const float *B, int ldb,
              float beta, float *C, int ldc) {
    if (M <= 0 || N <= 0) return;
    double t0 = stats_on ? now() : 0;
    cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans, M, N, K, 1.0f,
                A, lda, B, ldb, beta, C, ldc);
    if (stats_on) {
        stats.calls++;
        stats.seconds += now() - t0;
        stats.flops += 2.0 * M * N * K;
    }
}

int cl_blas_threads(void) { return openblas_get_num_threads(); }

void cl_blas_stats_enable(int on) { stats_on = on; }

cl_blas_stats cl_blas_stats_take(void) {
    cl_blas_stats s = stats;
    stats = (cl_blas_stats){0};
    return s;
}
