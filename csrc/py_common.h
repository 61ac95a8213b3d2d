/* py_common.h: what the py_*.c binding files share. Only binding files include Python.h.
 * Each binding file exposes one clpy_<name>_register(PyObject *module) called from
 * py_module.c; py_convert.c maps cl_error to a Python exception and supplies the cancel
 * callback that lets Ctrl-C stop long C work. */
#ifndef CL_PY_COMMON_H
#define CL_PY_COMMON_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#ifndef CLPY_IMPORT_ARRAY
#define NO_IMPORT_ARRAY
#endif
#define PY_ARRAY_UNIQUE_SYMBOL ctxlookup_ARRAY_API
#include <numpy/arrayobject.h>

#include "cl_common.h"
#include "cl_scope.h"

/* ctxlookup._core.FormatError (a ValueError): a malformed file. */
extern PyObject *clpy_FormatError;

/* Set the Python exception for a failed C call and return NULL. CL_ECALLBACK and
 * CL_ECANCELLED keep the exception already set (the hook's, or KeyboardInterrupt). */
PyObject *clpy_raise(const cl_error *err);

/* Cancel callback for GIL-released work: re-takes the GIL and runs PyErr_CheckSignals.
 * Must be called only from the thread that released the GIL. */
int clpy_cancel_fn(void *ctx);

/* Path argument: str or os.PathLike -> new bytes object (caller DECREFs). */
int clpy_path_converter(PyObject *obj, void *out);

/* ---- ndarray <-> C: the one converter set every binding uses ---- */

/* obj as a C-contiguous, aligned array of `type` (a copy only when needed), new reference. Values
 * are cast as NumPy's astype does (float64 -> float32, bool -> uint8); integer arrays go through
 * clpy_int_array instead. nd >= 0: exactly nd dimensions, else ValueError "<what> must be a
 * <nd>-D array"; nd < 0: any. */
PyArrayObject *clpy_array(PyObject *obj, int type, int nd, const char *what);

/* obj as an NPY_INT32 or NPY_INT64 C-contiguous array, new reference, checked before the cast: a
 * non-integer dtype is a TypeError (an empty array of any dtype is accepted), a value outside the
 * type's range a ValueError naming `what`, the flat index and the value, so 2**32 + 3 never
 * aliases 3. nd as for clpy_array. */
PyArrayObject *clpy_int_array(PyObject *obj, int type, int nd, const char *what);

/* Keep `a` alive in the list `keep` and return it borrowed (the reference is stolen); NULL in,
 * or a failed append (the error set), gives NULL. */
PyArrayObject *clpy_keep(PyObject *keep, PyArrayObject *a);

/* A fresh array of `type` and shape dims holding a copy of src (C order), new reference. */
PyObject *clpy_array_copy(const void *src, int type, int nd, const npy_intp *dims);

int clpy_model_register(PyObject *m);
int clpy_analysis_register(PyObject *m);
int clpy_http_register(PyObject *m);

/* The cl_model of a ctxlookup._core.Model (borrowed), or NULL with TypeError set. */
const void *clpy_model_ptr(PyObject *obj);
int clpy_tokenizer_register(PyObject *m);
/* Shared by the bindings that run a forward pass only for its observers (py_analysis.c, py_scope.c). */
/* One batch of packed sequences for such a pass: the arrays it holds and the model's hook slots. */
typedef struct {
    PyArrayObject *T, *L, *D; /* tokens (sum of lengths), lengths (B, each >= 1), doc ids (B) or NULL */
    int B, T_pad;             /* sequences, the longest length */
    cl_hook_slot *slots;      /* (CL_HK_COUNT x (n_layers + 1)), all empty */
} clpy_batch;

/* Convert and check tokens, lengths and (unless doc_ids is NULL) one int64 document id per
 * sequence, and allocate empty slots; -1 with the exception set. Close it in any case. */
int clpy_batch_open(clpy_batch *b, const cl_model *m, PyObject *tokens, PyObject *lengths, PyObject *doc_ids);
/* Blocks [0, stop) with the slots' observers, no logits, the GIL released, Ctrl-C honoured;
 * -1 with the exception set. */
int clpy_batch_forward(clpy_batch *b, const cl_model *m, int stop);
void clpy_batch_close(clpy_batch *b);
/* The cl_scope of a ctxlookup._core.Scope (NULL with TypeError / RuntimeError set). */
cl_scope *clpy_scope_ptr(PyObject *obj);

#endif
