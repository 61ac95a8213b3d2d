/* py_convert.c: cl_error -> Python exceptions, the Ctrl-C cancel hook, argument converters.
 * The single place where C status codes become Python exception types. */
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
