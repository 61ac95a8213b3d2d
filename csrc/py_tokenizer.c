/* py_tokenizer.c: the ctxlookup._core.Tokenizer type over cl_tokenizer. The only file of the
 * tokenizer that touches CPython / NumPy. python/ctxlookup/tokenizer.py wraps it. */
#include "py_common.h"

#include "cl_tokenizer.h"

#define GIL_RELEASE_BYTES (1u << 16) /* release the GIL for single texts at least this long */

typedef struct {
    PyObject_HEAD
    cl_tokenizer *tok;
} TokObject;

static void tok_dealloc(TokObject *self) {
    cl_tokenizer_free(self->tok);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int tok_init(TokObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"path", NULL};
    PyObject *path = NULL;
    int rc = -1;
    if (self->tok) {
        /* another thread may be encoding with it, GIL released: never swap it under them */
        PyErr_SetString(PyExc_RuntimeError, "Tokenizer is already loaded; create a new one");
        goto done;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O&", kwlist, clpy_path_converter, &path)) goto done;
    cl_error err = {CL_OK, ""};
    cl_tokenizer *t = NULL;
    cl_status st;
    Py_BEGIN_ALLOW_THREADS
    st = cl_tokenizer_load(PyBytes_AS_STRING(path), &t, &err);
    Py_END_ALLOW_THREADS
    if (st) {
        clpy_raise(&err);
        goto done;
    }
    self->tok = t;
    rc = 0;
done:
    Py_XDECREF(path);
    return rc;
}

static int tok_ready(TokObject *self) {
    if (!self->tok) {
        PyErr_SetString(PyExc_RuntimeError, "Tokenizer is not loaded");
        return 0;
    }
    return 1;
}

/* str -> its UTF-8 (owned by the str); bytes -> its data, checked to be UTF-8. Borrowed. */
static int text_utf8(PyObject *obj, const char **s, Py_ssize_t *n) {
    if (PyUnicode_Check(obj)) {
        *s = PyUnicode_AsUTF8AndSize(obj, n);
        return *s != NULL;
    }
    if (PyBytes_Check(obj)) {
        char *b;
        if (PyBytes_AsStringAndSize(obj, &b, n) < 0) return 0;
        size_t bad = cl_utf8_check(b, (size_t)*n);
        if (bad != (size_t)*n) {
            size_t end = bad + 1;
            PyObject *exc = PyObject_CallFunction(PyExc_UnicodeDecodeError, "sy#nns", "utf-8", b, *n,
                                                  (Py_ssize_t)bad, (Py_ssize_t)end,
                                                  "invalid UTF-8 (pass errors='replace' to substitute U+FFFD)");
            if (exc) {
                PyErr_SetObject(PyExc_UnicodeDecodeError, exc);
                Py_DECREF(exc);
            }
            return 0;
        }
        *s = b;
        return 1;
    }
    PyErr_Format(PyExc_TypeError, "text must be str or bytes, not %.100s", Py_TYPE(obj)->tp_name);
    return 0;
}

/* encode(text, flags) -> int32 array; with CL_TOK_OFFSETS -> (ids, int64 [n, 2] char offsets) */
static PyObject *tok_encode(TokObject *self, PyObject *args) {
    PyObject *text = NULL, *ids = NULL, *offs = NULL, *result = NULL;
    unsigned int flags = CL_TOK_ALLOW_SPECIAL;
    cl_tok_result res = {0};
    if (!tok_ready(self) || !PyArg_ParseTuple(args, "O|I", &text, &flags)) goto done;
    const char *s;
    Py_ssize_t n;
    if (!text_utf8(text, &s, &n)) goto done;
    cl_error err = {CL_OK, ""};
    cl_status st;
    if ((size_t)n >= GIL_RELEASE_BYTES) {
        cl_cancel cancel = {clpy_cancel_fn, NULL};
        Py_BEGIN_ALLOW_THREADS
        st = cl_tokenizer_encode(self->tok, s, (size_t)n, flags, &res, &cancel, &err);
        if (!st && (flags & CL_TOK_OFFSETS)) cl_offsets_bytes_to_chars(s, (size_t)n, res.offsets, 2 * res.n);
        Py_END_ALLOW_THREADS
    } else {
        st = cl_tokenizer_encode(self->tok, s, (size_t)n, flags, &res, NULL, &err);
        if (!st && (flags & CL_TOK_OFFSETS)) cl_offsets_bytes_to_chars(s, (size_t)n, res.offsets, 2 * res.n);
    }
    if (st) {
        clpy_raise(&err);
        goto done;
    }
    npy_intp n_ids[1] = {(npy_intp)res.n};
    ids = clpy_array_copy(res.ids, NPY_INT32, 1, n_ids);
    if (!ids) goto done;
    if (!(flags & CL_TOK_OFFSETS)) {
        result = ids;
        ids = NULL;
        goto done;
    }
    npy_intp dims[2] = {(npy_intp)res.n, 2};
    offs = clpy_array_copy(res.offsets, NPY_INT64, 2, dims);
    if (!offs) goto done;
    result = PyTuple_Pack(2, ids, offs);
done:
    cl_tok_result_free(&res);
    Py_XDECREF(ids);
    Py_XDECREF(offs);
    return result;
}

/* encode_batch(texts, flags, num_threads) -> list of int32 arrays */
static PyObject *tok_encode_batch(TokObject *self, PyObject *args) {
    PyObject *texts = NULL, *seq = NULL, *list = NULL, *result = NULL;
    unsigned int flags = CL_TOK_ALLOW_SPECIAL;
    int num_threads = 0;
    const char **ptrs = NULL;
    size_t *lens = NULL;
    cl_tok_result *res = NULL;
    Py_ssize_t n = 0;
    if (!tok_ready(self) || !PyArg_ParseTuple(args, "O|Ii", &texts, &flags, &num_threads)) goto done;
    flags &= ~(unsigned)CL_TOK_OFFSETS;
    /* a tuple keeps every text alive while the GIL is released, whatever happens to the input */
    seq = PySequence_Tuple(texts);
    if (!seq) goto done;
    n = PyTuple_GET_SIZE(seq);
    ptrs = PyMem_Calloc((size_t)n + 1, sizeof *ptrs);
    lens = PyMem_Calloc((size_t)n + 1, sizeof *lens);
    res = PyMem_Calloc((size_t)n + 1, sizeof *res);
    if (!ptrs || !lens || !res) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t len;
        if (!text_utf8(PyTuple_GET_ITEM(seq, i), &ptrs[i], &len)) {
            PyObject *et, *ev, *tb;
            PyErr_Fetch(&et, &ev, &tb);
            PyErr_NormalizeException(&et, &ev, &tb);
            if (ev && PyErr_GivenExceptionMatches(et, PyExc_TypeError)) {
                PyErr_Format(PyExc_TypeError, "texts[%zd]: %S", i, ev);
                Py_XDECREF(et);
                Py_XDECREF(ev);
                Py_XDECREF(tb);
            } else {
                PyErr_Restore(et, ev, tb);
            }
            goto done;
        }
        lens[i] = (size_t)len;
    }
    cl_error err = {CL_OK, ""};
    cl_status st;
    cl_cancel cancel = {clpy_cancel_fn, NULL};
    Py_BEGIN_ALLOW_THREADS
    st = cl_tokenizer_encode_batch(self->tok, (size_t)n, ptrs, lens, flags, num_threads, res, &cancel, &err);
    Py_END_ALLOW_THREADS
    if (st) {
        clpy_raise(&err);
        goto done;
    }
    list = PyList_New(n);
    if (!list) goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        npy_intp n_ids[1] = {(npy_intp)res[i].n};
        PyObject *a = clpy_array_copy(res[i].ids, NPY_INT32, 1, n_ids);
        if (!a) goto done;
        PyList_SET_ITEM(list, i, a);
    }
    result = list;
    list = NULL;
done:
    if (res)
        for (Py_ssize_t i = 0; i < n; i++) cl_tok_result_free(&res[i]);
    PyMem_Free(res);
    PyMem_Free(ptrs);
    PyMem_Free(lens);
    Py_XDECREF(seq);
    Py_XDECREF(list);
    return result;
}

/* ids (anything array-like of integers, 0-d or 1-d) -> owned int32 buffer, range-checked */
static int ids_from_object(cl_tokenizer *t, PyObject *obj, int32_t **out, size_t *n) {
    PyArrayObject *arr = NULL;
    int ok = 0;
    *out = NULL;
    *n = 0;
    arr = clpy_int_array(obj, NPY_INT64, -1, "token ids");
    if (!arr) goto done;
    if (PyArray_NDIM(arr) > 1) {
        PyErr_Format(PyExc_ValueError, "token ids must be a 0-D or 1-D array, got %d-D", PyArray_NDIM(arr));
        goto done;
    }
    size_t m = (size_t)PyArray_SIZE(arr);
    const int64_t *v = PyArray_DATA(arr);
    cl_tokenizer_info info;
    cl_tokenizer_get_info(t, &info);
    int32_t *ids = PyMem_Malloc((m + 1) * sizeof *ids);
    if (!ids) {
        PyErr_NoMemory();
        goto done;
    }
    for (size_t i = 0; i < m; i++) {
        if (v[i] < 0 || v[i] >= info.vocab_size) {
            PyErr_Format(PyExc_ValueError, "token id %lld (position %zu) is out of range [0, %d)",
                         (long long)v[i], i, (int)info.vocab_size);
            PyMem_Free(ids);
            goto done;
        }
        ids[i] = (int32_t)v[i];
    }
    *out = ids;
    *n = m;
    ok = 1;
done:
    Py_XDECREF(arr);
    return ok;
}

static PyObject *tok_decode(TokObject *self, PyObject *args) {
    PyObject *obj = NULL, *result = NULL;
    int skip_special = 0;
    int32_t *ids = NULL;
    size_t n = 0;
    char *buf = NULL;
    size_t len = 0;
    if (!tok_ready(self) || !PyArg_ParseTuple(args, "O|p", &obj, &skip_special)) goto done;
    if (!ids_from_object(self->tok, obj, &ids, &n)) goto done;
    cl_error err = {CL_OK, ""};
    cl_status st = cl_tokenizer_decode(self->tok, ids, n, skip_special, &buf, &len, &err);
    if (st) {
        clpy_raise(&err);
        goto done;
    }
    /* HF: String::from_utf8_lossy; Python's "replace" substitutes the same maximal subparts */
    result = PyUnicode_DecodeUTF8(buf, (Py_ssize_t)len, "replace");
done:
    free(buf);
    PyMem_Free(ids);
    return result;
}

/* decode_each(ids) -> list of str, every token decoded alone (TransformerLens's to_str_tokens) */
static PyObject *tok_decode_each(TokObject *self, PyObject *arg) {
    PyObject *list = NULL, *result = NULL;
    int32_t *ids = NULL;
    size_t n = 0;
    if (!tok_ready(self) || !ids_from_object(self->tok, arg, &ids, &n)) goto done;
    list = PyList_New((Py_ssize_t)n);
    if (!list) goto done;
    for (size_t i = 0; i < n; i++) {
        size_t len;
        const char *b = cl_tokenizer_id_to_bytes(self->tok, ids[i], &len);
        if (!b) {
            PyErr_Format(PyExc_ValueError, "token id %d is not in the vocabulary", (int)ids[i]);
            goto done;
        }
        PyObject *s = PyUnicode_DecodeUTF8(b, (Py_ssize_t)len, "replace");
        if (!s) goto done;
        PyList_SET_ITEM(list, (Py_ssize_t)i, s);
    }
    result = list;
    list = NULL;
done:
    Py_XDECREF(list);
    PyMem_Free(ids);
    return result;
}

static PyObject *tok_id_to_token(TokObject *self, PyObject *arg) {
    if (!tok_ready(self)) return NULL;
    long id = PyLong_AsLong(arg);
    if (id == -1 && PyErr_Occurred()) return NULL;
    size_t len;
    const char *s = (id < INT32_MIN || id > INT32_MAX) ? NULL : cl_tokenizer_id_to_token(self->tok, (int32_t)id, &len);
    if (!s) Py_RETURN_NONE;
    return PyUnicode_DecodeUTF8(s, (Py_ssize_t)len, "replace");
}

static PyObject *tok_token_to_id(TokObject *self, PyObject *arg) {
    if (!tok_ready(self)) return NULL;
    Py_ssize_t len;
    const char *s = PyUnicode_Check(arg) ? PyUnicode_AsUTF8AndSize(arg, &len) : NULL;
    if (!s) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "token must be a str");
        return NULL;
    }
    int32_t id = cl_tokenizer_token_to_id(self->tok, s, (size_t)len);
    if (id < 0) Py_RETURN_NONE;
    return PyLong_FromLong(id);
}

static PyObject *tok_info(TokObject *self, PyObject *unused) {
    if (!tok_ready(self)) return NULL;
    cl_tokenizer_info in;
    cl_tokenizer_get_info(self->tok, &in);
    PyObject *d = PyDict_New(), *result = NULL, *v = NULL;
    if (!d) return NULL;
#define SETI(key, val)                                                              \
    do {                                                                            \
        v = (val) < 0 ? Py_NewRef(Py_None) : PyLong_FromLong((long)(val));          \
        if (!v || PyDict_SetItemString(d, key, v) < 0) goto done;                   \
        Py_CLEAR(v);                                                                \
    } while (0)
    SETI("vocab_size", in.vocab_size);
    SETI("bos_token_id", in.bos_id);
    SETI("eos_token_id", in.eos_id);
    SETI("pad_token_id", in.pad_id);
    SETI("unk_token_id", in.unk_id);
    SETI("nfc", in.nfc);
    SETI("trim_offsets", in.trim_offsets);
    SETI("n_added", in.n_added);
#undef SETI
    v = PyUnicode_DecodeFSDefault(in.source ? in.source : "");
    if (!v || PyDict_SetItemString(d, "source", v) < 0) goto done;
    result = d;
    d = NULL;
done:
    Py_XDECREF(v);
    Py_XDECREF(d);
    return result;
}

/* added_tokens() -> list of (id, content, special) */
static PyObject *tok_added_tokens(TokObject *self, PyObject *unused) {
    if (!tok_ready(self)) return NULL;
    PyObject *list = PyList_New(0), *result = NULL, *item = NULL;
    if (!list) return NULL;
    cl_tokenizer_info in;
    cl_tokenizer_get_info(self->tok, &in);
    for (int32_t id = 0; id < in.vocab_size; id++) {
        int special = cl_tokenizer_is_special(self->tok, id);
        size_t len;
        const char *s = cl_tokenizer_id_to_token(self->tok, id, &len);
        if (!s || !special) continue;
        item = Py_BuildValue("(is#O)", (int)id, s, (Py_ssize_t)len, Py_True);
        if (!item || PyList_Append(list, item) < 0) goto done;
        Py_CLEAR(item);
    }
    result = list;
    list = NULL;
done:
    Py_XDECREF(item);
    Py_XDECREF(list);
    return result;
}

static PyMethodDef tok_methods[] = {
    {"encode", (PyCFunction)tok_encode, METH_VARARGS,
     "encode(text, flags=1) -> int32 array; with flags & 2: (ids, int64 [n, 2] char offsets)"},
    {"encode_batch", (PyCFunction)tok_encode_batch, METH_VARARGS,
     "encode_batch(texts, flags=1, num_threads=0) -> list of int32 arrays (GIL released, OpenMP)"},
    {"decode", (PyCFunction)tok_decode, METH_VARARGS, "decode(ids, skip_special=False) -> str"},
    {"decode_each", (PyCFunction)tok_decode_each, METH_O, "decode_each(ids) -> list of str, each id alone"},
    {"id_to_token", (PyCFunction)tok_id_to_token, METH_O, "id_to_token(id) -> str or None"},
    {"token_to_id", (PyCFunction)tok_token_to_id, METH_O, "token_to_id(token) -> int or None"},
    {"info", (PyCFunction)tok_info, METH_NOARGS, "info() -> dict of ids and options"},
    {"special_tokens", (PyCFunction)tok_added_tokens, METH_NOARGS,
     "special_tokens() -> list of (id, content, True) for the special added tokens"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject TokType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "ctxlookup._core.Tokenizer",
    .tp_basicsize = sizeof(TokObject),
    .tp_dealloc = (destructor)tok_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "Tokenizer(path): byte-level BPE loaded from tokenizer.json or vocab.json + merges.txt "
              "(low level; use ctxlookup.tokenizer.Tokenizer).",
    .tp_methods = tok_methods,
    .tp_init = (initproc)tok_init,
    .tp_new = PyType_GenericNew,
};

/* module-level helpers for tests: the NFC normalizer and the GPT-2 pre-tokenizer */
static PyObject *py_tok_nfc(PyObject *mod, PyObject *arg) {
    const char *s;
    Py_ssize_t n;
    char *out = NULL;
    size_t on = 0;
    PyObject *result = NULL;
    if (!text_utf8(arg, &s, &n)) goto done;
    cl_error err = {CL_OK, ""};
    if (cl_tokenizer_nfc(s, (size_t)n, &out, &on, &err)) {
        clpy_raise(&err);
        goto done;
    }
    result = PyUnicode_DecodeUTF8(out, (Py_ssize_t)on, "strict");
done:
    free(out);
    return result;
}

static PyObject *py_tok_pretokenize(PyObject *mod, PyObject *arg) {
    const char *s;
    Py_ssize_t n;
    size_t *ends = NULL;
    PyObject *list = NULL, *result = NULL;
    if (!text_utf8(arg, &s, &n)) goto done;
    ends = PyMem_Malloc(((size_t)n + 1) * sizeof *ends);
    if (!ends) {
        PyErr_NoMemory();
        goto done;
    }
    size_t k = cl_pretokenize(s, (size_t)n, ends);
    list = PyList_New((Py_ssize_t)k);
    if (!list) goto done;
    size_t prev = 0;
    for (size_t i = 0; i < k; i++) {
        PyObject *p = PyUnicode_DecodeUTF8(s + prev, (Py_ssize_t)(ends[i] - prev), "strict");
        if (!p) goto done;
        PyList_SET_ITEM(list, (Py_ssize_t)i, p);
        prev = ends[i];
    }
    result = list;
    list = NULL;
done:
    Py_XDECREF(list);
    PyMem_Free(ends);
    return result;
}

static PyMethodDef mod_methods[] = {
    {"_tokenizer_nfc", py_tok_nfc, METH_O, "_tokenizer_nfc(text) -> NFC exactly as HF tokenizers' NFC normalizer"},
    {"_tokenizer_pretokenize", py_tok_pretokenize, METH_O,
     "_tokenizer_pretokenize(text) -> list of pre-tokens (GPT-2 regex)"},
    {NULL, NULL, 0, NULL},
};

int clpy_tokenizer_register(PyObject *m) {
    if (PyType_Ready(&TokType) < 0) return -1;
    if (PyModule_AddObjectRef(m, "Tokenizer", (PyObject *)&TokType) < 0) return -1;
    if (PyModule_AddIntConstant(m, "TOK_ALLOW_SPECIAL", CL_TOK_ALLOW_SPECIAL) < 0) return -1;
    if (PyModule_AddIntConstant(m, "TOK_OFFSETS", CL_TOK_OFFSETS) < 0) return -1;
    if (PyModule_AddIntConstant(m, "TOK_TRIM_OFFSETS", CL_TOK_TRIM_OFFSETS) < 0) return -1;
    if (PyModule_AddFunctions(m, mod_methods) < 0) return -1;
    return 0;
}
