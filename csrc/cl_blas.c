/* cl_blas.c: the only file that includes cblas.h (OpenBLAS). */
#include "cl_blas.h"

#include <cblas.h>

void cl_sgemm(int transA, int transB, int M, int N, int K, const float *A, int lda, const float *B, int ldb,
              float beta, float *C, int ldc) {
    if (M <= 0 || N <= 0) return;
    cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans, M, N, K, 1.0f,
                A, lda, B, ldb, beta, C, ldc);
}

int cl_blas_threads(void) { return openblas_get_num_threads(); }
