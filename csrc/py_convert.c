/* py_convert.c: cl_error -> Python exceptions, the Ctrl-C cancel hook, argument converters and
 * the ndarray <-> C array converters of every binding. The single place where C status codes
 * become Python exception types and where an integer array is range-checked before its cast. */
#include "py_common.h"

#include <string.h>

PyObject *clpy_FormatError = NULL;

/* The message may quote bytes from a file (a tensor name, a JSON key) that are not UTF-8, or be
 * cut inside a character: such bytes are shown as \xNN escapes, never turned into a
 * UnicodeDecodeError that hides the real error. */
static void set_error(PyObject *type, const char *msg) {
    PyObject *s = PyUnicode_DecodeUTF8(msg, (Py_ssize_t)strlen(msg), "backslashreplace");
    if (!s) return;
    PyErr_SetObject(type, s);
    Py_DECREF(s);
}

PyObject *clpy_raise(const cl_error *err) {
    switch (err->code) {
    case CL_OK:
        PyErr_SetString(PyExc_SystemError, "ctxlookup: C call failed without an error");
        break;
    case CL_ENOMEM: set_error(PyExc_MemoryError, err->msg); break;
    case CL_EINVAL: set_error(PyExc_ValueError, err->msg); break;
    case CL_EIO: set_error(PyExc_OSError, err->msg); break;
    case CL_EFORMAT: set_error(clpy_FormatError, err->msg); break;
    case CL_EHTTP: set_error(PyExc_ConnectionError, err->msg); break;
    case CL_ECANCELLED:
        if (!PyErr_Occurred()) PyErr_SetNone(PyExc_KeyboardInterrupt);
        break;
    case CL_ECALLBACK:
        if (!PyErr_Occurred()) set_error(PyExc_RuntimeError, err->msg);
        break;
    }
    return NULL;
}

int clpy_cancel_fn(void *ctx) {
    (void)ctx;
    PyGILState_STATE st = PyGILState_Ensure();
    int stop = PyErr_CheckSignals() != 0;
    PyGILState_Release(st);
    return stop;
}

int clpy_path_converter(PyObject *obj, void *out) {
    return PyUnicode_FSConverter(obj, out);
}

static int check_ndim(PyArrayObject *a, int nd, const char *what) {
    if (nd < 0 || PyArray_NDIM(a) == nd) return 0;
    PyErr_Format(PyExc_ValueError, "%s must be a %d-D array, got %d-D", what, nd, PyArray_NDIM(a));
    return -1;
}

PyArrayObject *clpy_array(PyObject *obj, int type, int nd, const char *what) {
    PyArrayObject *a = (PyArrayObject *)PyArray_FROMANY(obj, type, 0, 0, NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED | NPY_ARRAY_FORCECAST);
    if (a && check_ndim(a, nd, what) < 0) Py_CLEAR(a);
    return a;
}

/* Is any value of the integer array raw outside [lo, hi]? Sets the ValueError naming it. */
static int int_out_of_range(PyArrayObject *raw, long long lo, long long hi, const char *what) {
    const int uns = PyTypeNum_ISUNSIGNED(PyArray_TYPE(raw));
    PyArrayObject *w = (PyArrayObject *)PyArray_FROMANY((PyObject *)raw, uns ? NPY_UINT64 : NPY_INT64, 0, 0,
                                                        NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED);
    if (!w) return 1;
    const npy_intp n = PyArray_SIZE(w);
    int bad = 0;
    for (npy_intp i = 0; i < n && !bad; i++) {
        if (uns) {
            unsigned long long v = ((const npy_uint64 *)PyArray_DATA(w))[i];
            if ((bad = v > (unsigned long long)hi))
                PyErr_Format(PyExc_ValueError, "%s[%zd] (flat index) = %llu is outside the %s range", what, (Py_ssize_t)i, v,
                             hi == INT32_MAX ? "int32" : "int64");
        } else {
            long long v = ((const npy_int64 *)PyArray_DATA(w))[i];
            if ((bad = v > hi || v < lo))
                PyErr_Format(PyExc_ValueError, "%s[%zd] (flat index) = %lld is outside the %s range", what, (Py_ssize_t)i, v,
                             hi == INT32_MAX ? "int32" : "int64");
        }
    }
    Py_DECREF(w);
    return bad;
}

PyArrayObject *clpy_int_array(PyObject *obj, int type, int nd, const char *what) {
    if (type != NPY_INT32 && type != NPY_INT64) {
        PyErr_SetString(PyExc_SystemError, "clpy_int_array: type must be NPY_INT32 or NPY_INT64");
        return NULL;
    }
    PyArrayObject *raw = (PyArrayObject *)PyArray_FROM_O(obj), *a = NULL;
    if (!raw) return NULL;
    const int t = PyArray_TYPE(raw);
    if (PyArray_SIZE(raw) && !PyTypeNum_ISINTEGER(t))
        PyErr_Format(PyExc_TypeError, "%s must be an array of integers, got dtype %R", what, (PyObject *)PyArray_DESCR(raw));
    else if (!PyArray_SIZE(raw) || PyArray_CanCastSafely(t, type) ||
             !int_out_of_range(raw, type == NPY_INT32 ? INT32_MIN : INT64_MIN, type == NPY_INT32 ? INT32_MAX : INT64_MAX, what))
        a = clpy_array((PyObject *)raw, type, nd, what);
    Py_DECREF(raw);
    return a;
}

PyArrayObject *clpy_keep(PyObject *keep, PyArrayObject *a) {
    if (!a) return NULL;
    int rc = PyList_Append(keep, (PyObject *)a);
    Py_DECREF(a);
    return rc < 0 ? NULL : a;
}

PyObject *clpy_array_copy(const void *src, int type, int nd, const npy_intp *dims) {
    PyObject *a = PyArray_EMPTY(nd, dims, type, 0);
    const size_t nbytes = a ? (size_t)PyArray_NBYTES((PyArrayObject *)a) : 0;
    if (nbytes) memcpy(PyArray_DATA((PyArrayObject *)a), src, nbytes);
    return a;
}
