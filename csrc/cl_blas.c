/* cl_blas.c: the only file that includes cblas.h (OpenBLAS), and the core's GEMM threading.
 *
 * One threading layer: OpenBLAS runs single-threaded, always, and cl_sgemm spreads a GEMM over
 * the core's OpenMP team itself (each thread one block of C's columns, or of its rows when C is
 * tall). Two thread pools taking turns on the same cores (OpenBLAS's and OpenMP's) cost 15-25%
 * on two cores, worse when another library's OpenMP runtime (PyTorch's) is in the process.
 * Inside a parallel region (attention heads, one task each) cl_sgemm runs on the calling
 * thread. Optional accounting (off by default) of GEMM calls, time and FLOPs, for
 * benchmarks/bench_forward.py. */
#include "cl_blas.h"

#include <cblas.h>
#include <omp.h>
#include <pthread.h>
#include <time.h>

#include "cl_common.h"

static int stats_on;
static cl_blas_stats stats;
static pthread_mutex_t stats_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t single_once = PTHREAD_ONCE_INIT;

static void make_single(void) { openblas_set_num_threads(1); }

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void gemm1(int transA, int transB, int M, int N, int K, const float *A, int lda, const float *B, int ldb,
                  float beta, float *C, int ldc) {
    cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans, M, N, K, 1.0f,
                A, lda, B, ldb, beta, C, ldc);
}

enum { ALIGN = 32, MIN_FLOPS_PER_THREAD = 1 << 21 };

/* Accounting: a GEMM inside a parallel region (one task among the team's) counts its thread's
 * seconds divided by the team size, so the totals stay comparable with wall time. */
static void record(int transA, int transB, int M, int N, int K, int team, double dt, double flops) {
    pthread_mutex_lock(&stats_lock);
    const int in_task = team > 1;
    double share = dt / team;
    stats.calls++;
    stats.seconds += share;
    stats.flops += flops;
    int i = 0;
    for (; i < stats.n_shapes; i++) {
        cl_blas_shape *e = &stats.shapes[i];
        if (e->transA == transA && e->transB == transB && e->M == M && e->N == N && e->K == K && e->in_task == in_task) break;
    }
    if (i == stats.n_shapes && i < CL_BLAS_MAX_SHAPES) stats.shapes[stats.n_shapes++] = (cl_blas_shape){transA, transB, M, N, K, in_task, team, 0, 0};
    if (i < CL_BLAS_MAX_SHAPES) {
        stats.shapes[i].calls++;
        stats.shapes[i].seconds += share;
    } else {
        stats.dropped_shapes++;
    }
    pthread_mutex_unlock(&stats_lock);
}

void cl_sgemm(int transA, int transB, int M, int N, int K, const float *A, int lda, const float *B, int ldb,
              float beta, float *C, int ldc) {
    if (M <= 0 || N <= 0) return;
    pthread_once(&single_once, make_single);
    double t0 = stats_on ? now() : 0;
    const int in_team = omp_in_parallel() ? omp_get_num_threads() : 1; /* > 1: one task among a team's */
    const double flops = 2.0 * M * N * K;
    const int by_cols = N >= M, len = by_cols ? N : M; /* split the longer side of C ... */
    const int blocks = (len + ALIGN - 1) / ALIGN;       /* ... in whole ALIGN blocks */
    int nt = in_team > 1 ? 1 : cl_num_threads();
    double cap = flops / MIN_FLOPS_PER_THREAD; /* small GEMMs: fewer threads, or none */
    if (cap < nt) nt = cap < 1 ? 1 : (int)cap;
    if (nt > blocks) nt = blocks;
    if (nt <= 1) {
        gemm1(transA, transB, M, N, K, A, lda, B, ldb, beta, C, ldc);
    } else {
#pragma omp parallel num_threads(nt)
        {
            int me = omp_get_thread_num(), team = omp_get_num_threads();
            int i0 = (int)((long)blocks * me / team) * ALIGN, i1 = (int)((long)blocks * (me + 1) / team) * ALIGN;
            if (i1 > len) i1 = len;
            if (i1 > i0) {
                if (by_cols)
                    gemm1(transA, transB, M, i1 - i0, K, A, lda, transB ? B + (size_t)i0 * ldb : B + i0, ldb, beta,
                          C + i0, ldc);
                else
                    gemm1(transA, transB, i1 - i0, N, K, transA ? A + i0 : A + (size_t)i0 * lda, lda, B, ldb, beta,
                          C + (size_t)i0 * ldc, ldc);
            }
        }
    }
    if (stats_on) record(transA, transB, M, N, K, in_team, now() - t0, flops);
}

double cl_sgemm_openblas_threaded(int transB, int M, int N, int K, const float *A, const float *B, float *C,
                                  int nthreads, int reps) {
    pthread_once(&single_once, make_single);
    openblas_set_num_threads(nthreads);
    gemm1(0, transB, M, N, K, A, K, B, transB ? K : N, 0.0f, C, N); /* warm-up */
    double best = 1e300;
    for (int r = 0; r < reps; r++) {
        double t0 = now();
        gemm1(0, transB, M, N, K, A, K, B, transB ? K : N, 0.0f, C, N);
        double dt = now() - t0;
        best = dt < best ? dt : best;
    }
    openblas_set_num_threads(1);
    return best;
}

void cl_blas_stats_enable(int on) { stats_on = on; }

void cl_blas_stats_take(cl_blas_stats *out) {
    pthread_mutex_lock(&stats_lock);
    if (out) *out = stats;
    stats.calls = 0;
    stats.seconds = stats.flops = 0;
    stats.n_shapes = stats.dropped_shapes = 0;
    pthread_mutex_unlock(&stats_lock);
}
