/* py_module.c: PyInit for ctxlookup._core: exception types, import_array, thread control,
 * and the registration of each binding file. */
#define CLPY_IMPORT_ARRAY
#include "py_common.h"

#include <cblas.h>
#include <omp.h>

static PyObject *set_num_threads(PyObject *self, PyObject *arg) {
    long n = PyLong_AsLong(arg);
    if (n == -1 && PyErr_Occurred()) return NULL;
    if (n < 1) {
        PyErr_Format(PyExc_ValueError, "set_num_threads: n must be >= 1, got %ld", n);
        return NULL;
    }
    openblas_set_num_threads((int)n);
    omp_set_num_threads((int)n);
    Py_RETURN_NONE;
}

static PyObject *get_num_threads(PyObject *self, PyObject *unused) {
    return PyLong_FromLong(omp_get_max_threads());
}

static PyMethodDef methods[] = {
    {"set_num_threads", set_num_threads, METH_O,
     "set_num_threads(n): threads for OpenBLAS GEMMs and the core's own parallel loops."},
    {"get_num_threads", get_num_threads, METH_NOARGS, "get_num_threads() -> int"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "ctxlookup._core", "ctxlookup's C core.", -1, methods,
};

PyMODINIT_FUNC PyInit__core(void) {
    import_array();
    PyObject *m = PyModule_Create(&moduledef);
    if (!m) return NULL;
    clpy_FormatError = PyErr_NewExceptionWithDoc(
        "ctxlookup._core.FormatError", "A file (checkpoint, config, tokenizer) is malformed.",
        PyExc_ValueError, NULL);
    if (!clpy_FormatError || PyModule_AddObjectRef(m, "FormatError", clpy_FormatError) < 0) goto fail;
    if (clpy_model_register(m) < 0) goto fail;
    return m;
fail:
    Py_DECREF(m);
    return NULL;
}
