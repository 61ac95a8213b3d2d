/* cl_blas.h: the core's only door to BLAS. Row-major single-precision GEMM. */
#ifndef CL_BLAS_H
#define CL_BLAS_H

/* C (M, N) = beta * C + A (M, K) @ B (K, N); transA / transB: the stored matrix is transposed.
 * On cl_num_threads() OpenMP threads, or on the calling thread alone inside a parallel region. */
void cl_sgemm(int transA, int transB, int M, int N, int K, const float *A, int lda, const float *B, int ldb,
              float beta, float *C, int ldc);

/* For the benchmark's baseline: seconds of the fastest of `reps` plain OpenBLAS sgemm calls
 * (row-major, C = A @ B or A @ B^T) with OpenBLAS's own threading on nthreads threads, after a
 * warm-up call; OpenBLAS is set back to one thread afterwards. */
double cl_sgemm_openblas_threaded(int transB, int M, int N, int K, const float *A, const float *B, float *C,
                                  int nthreads, int reps);

/* Accounting for benchmarks: calls, seconds and FLOPs spent in cl_sgemm since the last take,
 * in total and per distinct call shape. A GEMM issued inside a parallel region (in_task: one
 * of `team` concurrent tasks) counts its seconds divided by the team size. Thread-safe. */
enum { CL_BLAS_MAX_SHAPES = 256 };
typedef struct {
    int transA, transB, M, N, K, in_task, team;
    long calls;
    double seconds;
} cl_blas_shape;
typedef struct {
    long calls;
    double seconds, flops;
    int n_shapes, dropped_shapes;
    cl_blas_shape shapes[CL_BLAS_MAX_SHAPES];
} cl_blas_stats;
void cl_blas_stats_enable(int on);
void cl_blas_stats_take(cl_blas_stats *out /* or NULL: just reset */);

#endif
