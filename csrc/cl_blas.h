/* cl_blas.h: the core's only door to BLAS. Row-major single-precision GEMM. */
#ifndef CL_BLAS_H
#define CL_BLAS_H

/* C (M, N) = beta * C + A (M, K) @ B (K, N); transA / transB: the stored matrix is transposed. */
void cl_sgemm(int transA, int transB, int M, int N, int K, const float *A, int lda, const float *B, int ldb,
              float beta, float *C, int ldc);
int cl_blas_threads(void);

/* Accounting for benchmarks: calls, wall seconds and FLOPs spent in cl_sgemm since the last take.
 * Not thread-safe; GEMMs are only issued from the calling thread. */
typedef struct {
    long calls;
    double seconds, flops;
} cl_blas_stats;
void cl_blas_stats_enable(int on);
cl_blas_stats cl_blas_stats_take(void);

#endif
