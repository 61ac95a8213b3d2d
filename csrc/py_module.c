/* py_module.c: PyInit for ctxlookup._core: exception types, import_array, thread control,
 * and the registration of each binding file. */
#define CLPY_IMPORT_ARRAY
#include "py_common.h"

#include <curl/curl.h>
#include <stdlib.h>

#include "cl_blas.h"

int clpy_scope_register(PyObject *m); /* py_scope.c */

static PyObject *set_num_threads(PyObject *self, PyObject *arg) {
    long n = PyLong_AsLong(arg);
    if (n == -1 && PyErr_Occurred()) return NULL;
    if (n < 1) {
        PyErr_Format(PyExc_ValueError, "set_num_threads: n must be >= 1, got %ld", n);
        return NULL;
    }
    cl_set_num_threads((int)n);
    Py_RETURN_NONE;
}

static PyObject *get_num_threads(PyObject *self, PyObject *unused) {
    return PyLong_FromLong(cl_num_threads());
}

static PyObject *blas_stats(PyObject *self, PyObject *args) {
    int enable = -1;
    if (!PyArg_ParseTuple(args, "|i", &enable)) return NULL;
    cl_blas_stats *s = malloc(sizeof *s);
    if (!s) return PyErr_NoMemory();
    cl_blas_stats_take(s);
    if (enable >= 0) cl_blas_stats_enable(enable);
    PyObject *shapes = PyList_New(0), *out = NULL;
    for (int i = 0; shapes && i < s->n_shapes; i++) {
        const cl_blas_shape *e = &s->shapes[i];
        PyObject *d = Py_BuildValue("{s:i,s:i,s:i,s:i,s:i,s:O,s:i,s:l,s:d}", "transA", e->transA, "transB", e->transB, "M", e->M,
                                    "N", e->N, "K", e->K, "in_task", e->in_task ? Py_True : Py_False, "team", e->team,
                                    "calls", e->calls, "seconds", e->seconds);
        if (!d || PyList_Append(shapes, d) < 0) { Py_XDECREF(d); Py_CLEAR(shapes); break; }
        Py_DECREF(d);
    }
    if (shapes)
        out = Py_BuildValue("{s:l,s:d,s:d,s:N,s:i}", "calls", s->calls, "seconds", s->seconds, "flops", s->flops, "shapes", shapes,
                            "dropped_shapes", s->dropped_shapes);
    free(s);
    return out;
}

/* Plain OpenBLAS sgemm on its own threads (`threads`, default cl_num_threads()) at a given
 * shape, for the benchmark's baseline: seconds of the fastest of `reps` calls. */
static PyObject *sgemm_bench(PyObject *self, PyObject *args) {
    int M, N, K, transB = 0, reps = 3, threads = 0;
    double dt;
    if (!PyArg_ParseTuple(args, "iii|iii", &M, &N, &K, &transB, &reps, &threads)) return NULL;
    if (M < 1 || N < 1 || K < 1 || reps < 1) { PyErr_SetString(PyExc_ValueError, "sizes must be positive"); return NULL; }
    if (threads < 1) threads = cl_num_threads();
    float *A = calloc((size_t)M * K, 4), *B = calloc((size_t)K * N, 4), *C = calloc((size_t)M * N, 4);
    if (!A || !B || !C) { free(A); free(B); free(C); return PyErr_NoMemory(); }
    for (size_t i = 0; i < (size_t)M * K; i++) A[i] = (float)(i % 7) * 0.1f;
    for (size_t i = 0; i < (size_t)K * N; i++) B[i] = (float)(i % 5) * 0.1f;
    Py_BEGIN_ALLOW_THREADS
    dt = cl_sgemm_openblas_threaded(transB, M, N, K, A, B, C, threads, reps);
    Py_END_ALLOW_THREADS
    free(A); free(B); free(C);
    return PyFloat_FromDouble(dt);
}

static PyMethodDef methods[] = {
    {"_blas_stats", blas_stats, METH_VARARGS, "_blas_stats(enable=-1) -> dict: GEMM accounting since the last call, with per-shape rows"},
    {"_sgemm_bench", sgemm_bench, METH_VARARGS, "_sgemm_bench(M, N, K, transB=0, reps=3, threads=0) -> seconds of the fastest plain OpenBLAS sgemm on its own threads"},
    {"set_num_threads", set_num_threads, METH_O,
     "set_num_threads(n): threads for all of the core's parallel work (GEMMs included)."},
    {"get_num_threads", get_num_threads, METH_NOARGS, "get_num_threads() -> int"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "ctxlookup._core", "ctxlookup's C core.", -1, methods,
};

PyMODINIT_FUNC PyInit__core(void) {
    import_array();
    static int curl_ready = 0; /* curl_global_init once per process, before any thread uses libcurl */
    if (!curl_ready) {
        CURLcode cc = curl_global_init(CURL_GLOBAL_DEFAULT);
        if (cc) {
            PyErr_Format(PyExc_ImportError, "ctxlookup: libcurl could not be initialised: %s", curl_easy_strerror(cc));
            return NULL;
        }
        curl_ready = 1;
    }
    PyObject *m = PyModule_Create(&moduledef);
    if (!m) return NULL;
    clpy_FormatError = PyErr_NewExceptionWithDoc(
        "ctxlookup._core.FormatError", "A file (checkpoint, config, tokenizer) is malformed.",
        PyExc_ValueError, NULL);
    if (!clpy_FormatError || PyModule_AddObjectRef(m, "FormatError", clpy_FormatError) < 0) goto fail;
    if (clpy_model_register(m) < 0) goto fail;
    if (clpy_analysis_register(m) < 0) goto fail;
    if (clpy_http_register(m) < 0) goto fail;
    if (clpy_tokenizer_register(m) < 0) goto fail;
    if (clpy_scope_register(m) < 0) goto fail;
    return m;
fail:
    Py_DECREF(m);
    return NULL;
}
