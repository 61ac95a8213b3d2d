/* cl_blas.h: the core's only door to BLAS. Row-major single-precision GEMM. */
#ifndef CL_BLAS_H
#define CL_BLAS_H

/* C (M, N) = beta * C + A (M, K) @ B (K, N); transA / transB: the stored matrix is transposed. */
void cl_sgemm(int transA, int transB, int M, int N, int K, const float *A, int lda, const float *B, int ldb,
              float beta, float *C, int ldc);
int cl_blas_threads(void);

#endif
