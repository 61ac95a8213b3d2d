/* py_convert.c: cl_error -> Python exceptions, the Ctrl-C cancel hook, argument converters.
 * The single place where C status codes become Python exception types. */
#include "py_common.h"

PyObject *clpy_FormatError = NULL;

PyObject *clpy_raise(const cl_error *err) {
    switch (err->code) {
    case CL_OK:
        PyErr_SetString(PyExc_SystemError, "ctxlookup: C call failed without an error");
        break;
    case CL_ENOMEM: PyErr_SetString(PyExc_MemoryError, err->msg); break;
    case CL_EINVAL: PyErr_SetString(PyExc_ValueError, err->msg); break;
    case CL_EIO: PyErr_SetString(PyExc_OSError, err->msg); break;
    case CL_EFORMAT: PyErr_SetString(clpy_FormatError, err->msg); break;
    case CL_EHTTP: PyErr_SetString(PyExc_ConnectionError, err->msg); break;
    case CL_ECANCELLED:
        if (!PyErr_Occurred()) PyErr_SetNone(PyExc_KeyboardInterrupt);
        break;
    case CL_ECALLBACK:
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_RuntimeError, err->msg);
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
