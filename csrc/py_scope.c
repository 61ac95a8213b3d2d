/* py_scope.c: binding of cl_scope (Neuroscope's all-neurons state): ctxlookup._core.Scope, its
 * state as a dict of arrays (copies, canonical form), exact merging, and scope_batch, one
 * forward pass to the deepest chosen layer with the GIL released. */
#include "py_common.h"

#include <stdlib.h>
#include <string.h>

#include "cl_scope.h"

typedef struct {
    PyObject_HEAD
    cl_scope *s;
} ScopeObject;

/* The state's arrays: name, NumPy type, element size, and the shape's trailing dims. */
enum { T_N, T_NK, T_NBINS, T_NBANDS, T_NBANDS_S };
typedef struct {
    const char *name;
    int type, shape;
    size_t offset; /* of the pointer in cl_scope */
} field;

static const field FIELDS[] = {
    {"top_act", NPY_FLOAT32, T_NK, offsetof(cl_scope, top_act)},
    {"top_doc", NPY_INT64, T_NK, offsetof(cl_scope, top_doc)},
    {"top_pos", NPY_INT32, T_NK, offsetof(cl_scope, top_pos)},
    {"top_count", NPY_INT32, T_N, offsetof(cl_scope, top_count)},
    {"hist", NPY_INT64, T_NBINS, offsetof(cl_scope, hist)},
    {"hist_exp", NPY_INT32, T_N, offsetof(cl_scope, hist_exp)},
    {"hist_start", NPY_INT64, T_N, offsetof(cl_scope, hist_start)},
    {"vmin", NPY_FLOAT32, T_N, offsetof(cl_scope, vmin)},
    {"vmax", NPY_FLOAT32, T_N, offsetof(cl_scope, vmax)},
    {"total", NPY_INT64, T_N, offsetof(cl_scope, total)},
    {"nonfinite", NPY_INT64, T_N, offsetof(cl_scope, nonfinite)},
    {"s_key", NPY_UINT64, T_NBANDS_S, offsetof(cl_scope, s_key)},
    {"s_doc", NPY_INT64, T_NBANDS_S, offsetof(cl_scope, s_doc)},
    {"s_pos", NPY_INT32, T_NBANDS_S, offsetof(cl_scope, s_pos)},
    {"s_act", NPY_FLOAT32, T_NBANDS_S, offsetof(cl_scope, s_act)},
    {"s_count", NPY_INT32, T_NBANDS, offsetof(cl_scope, s_count)},
};
#define N_FIELDS (sizeof FIELDS / sizeof FIELDS[0])

static int field_dims(const cl_scope *s, const field *f, npy_intp *dims) {
    dims[0] = s->n;
    switch (f->shape) {
    case T_N: return 1;
    case T_NK: dims[1] = s->k; return 2;
    case T_NBINS: dims[1] = s->bins; return 2;
    case T_NBANDS: dims[1] = s->bands; return 2;
    default: dims[1] = s->bands; dims[2] = s->samples; return 3;
    }
}

static void *field_ptr(const cl_scope *s, const field *f) { return *(void **)((char *)s + f->offset); }

static void Scope_dealloc(ScopeObject *self) {
    cl_scope_free(self->s);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Scope(layers, d_mlp, k, bins, samples, neurons=None): every neuron of `layers`, or with
 * `neurons` the (layers[i], neurons[i]) pairs only (sorted by layer, then neuron). */
static int Scope_init(ScopeObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"layers", "d_mlp", "k", "bins", "samples", "neurons", NULL};
    PyObject *lo, *no = Py_None;
    int d_mlp, k, bins, samples;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "Oiiii|O", kwlist, &lo, &d_mlp, &k, &bins, &samples, &no)) return -1;
    PyArrayObject *L = clpy_int_array(lo, NPY_INT32, 1, "layers"), *N = NULL;
    cl_error err = {0};
    cl_scope *s = NULL;
    int rc = -1;
    if (!L || (no != Py_None && !(N = clpy_int_array(no, NPY_INT32, 1, "neurons")))) goto done;
    if (N && PyArray_DIM(N, 0) != PyArray_DIM(L, 0)) {
        PyErr_SetString(PyExc_ValueError, "layers and neurons differ in length (with neurons, one layer per neuron)");
        goto done;
    }
    if (N ? cl_scope_new_subset((int)PyArray_DIM(L, 0), PyArray_DATA(L), PyArray_DATA(N), d_mlp, k, bins, samples, &s, &err)
          : cl_scope_new((int)PyArray_DIM(L, 0), PyArray_DATA(L), d_mlp, k, bins, samples, &s, &err)) {
        clpy_raise(&err);
        goto done;
    }
    cl_scope_free(self->s);
    self->s = s;
    rc = 0;
done:
    Py_XDECREF(L); Py_XDECREF(N);
    return rc;
}

static cl_scope *need(ScopeObject *self) {
    if (!self->s) PyErr_SetString(PyExc_RuntimeError, "Scope not initialised");
    return self->s;
}

static PyObject *Scope_state(ScopeObject *self, PyObject *unused) {
    cl_scope *s = need(self);
    if (!s) return NULL;
    cl_error err = {0};
    if (cl_scope_normalize(s, &err)) return clpy_raise(&err);
    PyObject *d = PyDict_New();
    for (size_t i = 0; d && i < N_FIELDS; i++) {
        npy_intp dims[3];
        int nd = field_dims(s, &FIELDS[i], dims);
        PyObject *a = PyArray_EMPTY(nd, dims, FIELDS[i].type, 0);
        if (!a) { Py_CLEAR(d); break; }
        memcpy(PyArray_DATA((PyArrayObject *)a), field_ptr(s, &FIELDS[i]), PyArray_NBYTES((PyArrayObject *)a));
        if (PyDict_SetItemString(d, FIELDS[i].name, a) < 0) Py_CLEAR(d);
        Py_DECREF(a);
    }
    return d;
}

static PyObject *Scope_set_state(ScopeObject *self, PyObject *state) {
    cl_scope *s = need(self);
    if (!s) return NULL;
    if (!PyDict_Check(state)) { PyErr_SetString(PyExc_TypeError, "set_state takes the dict that state() returns"); return NULL; }
    PyArrayObject *arrs[N_FIELDS] = {0};
    PyObject *res = NULL;
    for (size_t i = 0; i < N_FIELDS; i++) {
        PyObject *o = PyDict_GetItemString(state, FIELDS[i].name);
        if (!o) { PyErr_Format(PyExc_ValueError, "the scope state has no '%s'", FIELDS[i].name); goto done; }
        npy_intp dims[3];
        int nd = field_dims(s, &FIELDS[i], dims);
        arrs[i] = (PyArrayObject *)PyArray_FROMANY(o, FIELDS[i].type, nd, nd, NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED);
        if (!arrs[i]) goto done;
        for (int d = 0; d < nd; d++)
            if (PyArray_DIM(arrs[i], d) != dims[d]) {
                PyErr_Format(PyExc_ValueError, "scope state '%s' has the wrong shape for this scope (%d neurons, k = %d, "
                             "%d bins, %d samples)", FIELDS[i].name, s->n, s->k, s->bins, s->samples);
                goto done;
            }
    }
    for (size_t i = 0; i < N_FIELDS; i++)
        memcpy(field_ptr(s, &FIELDS[i]), PyArray_DATA(arrs[i]), PyArray_NBYTES(arrs[i]));
    cl_error err = {0};
    if (cl_scope_validate(s, &err)) {
        clpy_raise(&err);
        goto done;
    }
    res = Py_None;
    Py_INCREF(res);
done:
    for (size_t i = 0; i < N_FIELDS; i++) Py_XDECREF(arrs[i]);
    return res;
}

static PyTypeObject ScopeType;

static PyObject *Scope_merge(ScopeObject *self, PyObject *other) {
    cl_scope *s = need(self);
    if (!s) return NULL;
    if (!PyObject_TypeCheck(other, &ScopeType) || !((ScopeObject *)other)->s) {
        PyErr_SetString(PyExc_TypeError, "merge takes another initialised Scope");
        return NULL;
    }
    if (other == (PyObject *)self) { PyErr_SetString(PyExc_ValueError, "a scope cannot be merged with itself"); return NULL; }
    cl_error err = {0};
    cl_status st;
    Py_BEGIN_ALLOW_THREADS
    st = cl_scope_merge(s, ((ScopeObject *)other)->s, &err);
    Py_END_ALLOW_THREADS
    if (st) return clpy_raise(&err);
    Py_RETURN_NONE;
}

static PyObject *Scope_shape(ScopeObject *self, PyObject *unused) {
    cl_scope *s = need(self);
    if (!s) return NULL;
    PyObject *layers = PyList_New(s->n_layers);
    for (int i = 0; layers && i < s->n_layers; i++) PyList_SET_ITEM(layers, i, PyLong_FromLong(s->layers[i]));
    if (!layers) return NULL;
    return Py_BuildValue("{s:N,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i}", "layers", layers, "neurons", s->n, "d_mlp", s->d_mlp,
                         "k", s->k, "bins", s->bins, "samples", s->samples, "bands", s->bands, "band_shift",
                         s->band_shift, "exp_min", CL_SCOPE_EXP_MIN);
}

static PyMethodDef Scope_methods[] = {
    {"state", (PyCFunction)Scope_state, METH_NOARGS, "state() -> dict of arrays (copies, canonical form)"},
    {"set_state", (PyCFunction)Scope_set_state, METH_O, "set_state(dict): load a state (validated)"},
    {"merge", (PyCFunction)Scope_merge, METH_O, "merge(other): add another scope's state (disjoint documents)"},
    {"shape", (PyCFunction)Scope_shape, METH_NOARGS, "shape() -> dict(layers, neurons (how many), d_mlp, k, bins, samples, bands, ...)"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ScopeType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "ctxlookup._core.Scope",
    .tp_basicsize = sizeof(ScopeObject),
    .tp_dealloc = (destructor)Scope_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Scope(layers, d_mlp, k, bins, samples, neurons=None): top-k, histogram and samples of every neuron "
               "of layers, or of the (layers[i], neurons[i]) pairs",
    .tp_methods = Scope_methods,
    .tp_init = (initproc)Scope_init,
    .tp_new = PyType_GenericNew,
};

cl_scope *clpy_scope_ptr(PyObject *o) {
    if (!PyObject_TypeCheck(o, &ScopeType)) { PyErr_SetString(PyExc_TypeError, "scope must be a Scope"); return NULL; }
    return need((ScopeObject *)o);
}

static PyArrayObject *arr1(PyObject *o, int type, const char *what) { return clpy_array(o, type, 1, what); }

/* The baseline's observer: reads nothing, so the forward runs to the last block's mlp.hook_post. */
static cl_status noop_observe(void *ctx, int layer, const float *data, size_t stride, size_t N, const int32_t *start,
                              const int32_t *lengths, int B, cl_error *err) {
    return CL_OK;
}

/* scope_batch(model, scope, tokens, lengths, doc_ids, skip_first, stop=-1): one forward over
 * packed documents; scope None runs the same forward with no observer (a baseline) to `stop`. */
static PyObject *py_scope_batch(PyObject *self, PyObject *args) {
    PyObject *mo, *so, *to, *lo, *dobj;
    int skip_first, stop = -1;
    if (!PyArg_ParseTuple(args, "OOOOOi|i", &mo, &so, &to, &lo, &dobj, &skip_first, &stop)) return NULL;
    const cl_model *m = clpy_model_ptr(mo);
    if (!m) return NULL;
    cl_scope *s = NULL;
    if (so != Py_None && !(s = clpy_scope_ptr(so))) return NULL;
    const cl_config *c = &m->cfg;
    clpy_batch bt;
    PyObject *res = NULL;
    if (clpy_batch_open(&bt, m, to, lo, dobj) < 0) goto done;
    if (s) {
        if (s->d_mlp != c->d_mlp || s->layers[s->n_layers - 1] >= c->n_layers) {
            PyErr_Format(PyExc_ValueError, "the scope (layers up to %d, d_mlp %d) does not fit this model (%d layers, d_mlp %d)",
                         s->layers[s->n_layers - 1], s->d_mlp, c->n_layers, c->d_mlp);
            goto done;
        }
        stop = s->layers[s->n_layers - 1] + 1;
        for (int i = 0; i < s->n_layers; i++) {
            cl_hook_slot *sl = &bt.slots[cl_hook_slot_index(c, CL_HK_MLP_POST, s->layers[i])];
            sl->observe = cl_scope_observe;
            sl->observe_ctx = s;
        }
        s->batch_docs = PyArray_DATA(bt.D);
        s->skip_first = skip_first;
    } else {
        if (stop < 1 || stop > c->n_layers) {
            PyErr_Format(PyExc_ValueError, "stop must be in [1, %d] when no scope is given, got %d", c->n_layers, stop);
            goto done;
        }
        bt.slots[cl_hook_slot_index(c, CL_HK_MLP_POST, stop - 1)].observe = noop_observe;
    }
    int rc = clpy_batch_forward(&bt, m, stop);
    if (s) s->batch_docs = NULL;
    if (rc == 0) res = Py_NewRef(Py_None);
done:
    clpy_batch_close(&bt);
    return res;
}

/* scope_keys(docs, positions) -> uint64 array: the sample keys (for checking samples from outside). */
static PyObject *py_scope_keys(PyObject *self, PyObject *args) {
    PyObject *dobj, *pobj, *res = NULL;
    if (!PyArg_ParseTuple(args, "OO", &dobj, &pobj)) return NULL;
    PyArrayObject *D = arr1(dobj, NPY_INT64, "docs"), *P = D ? arr1(pobj, NPY_INT32, "positions") : NULL;
    if (!P) goto done;
    if (PyArray_DIM(D, 0) != PyArray_DIM(P, 0)) { PyErr_SetString(PyExc_ValueError, "docs and positions differ in length"); goto done; }
    npy_intp n = PyArray_DIM(D, 0);
    res = PyArray_EMPTY(1, &n, NPY_UINT64, 0);
    if (!res) goto done;
    const int64_t *d = PyArray_DATA(D);
    const int32_t *p = PyArray_DATA(P);
    uint64_t *o = PyArray_DATA((PyArrayObject *)res);
    for (npy_intp i = 0; i < n; i++) o[i] = cl_scope_key(d[i], p[i]);
done:
    Py_XDECREF(D); Py_XDECREF(P);
    return res;
}

static PyMethodDef scope_methods[] = {
    {"scope_batch", py_scope_batch, METH_VARARGS,
     "scope_batch(model, scope, tokens, lengths, doc_ids, skip_first, stop=-1): one forward, the scope updated "
     "(scope None: a plain forward to block `stop` - 1's mlp.hook_post, the baseline)"},
    {"scope_keys", py_scope_keys, METH_VARARGS, "scope_keys(docs, positions) -> uint64 sample keys"},
    {NULL, NULL, 0, NULL},
};

int clpy_scope_register(PyObject *m) {
    if (PyType_Ready(&ScopeType) < 0) return -1;
    Py_INCREF(&ScopeType);
    if (PyModule_AddObject(m, "Scope", (PyObject *)&ScopeType) < 0) { Py_DECREF(&ScopeType); return -1; }
    return PyModule_AddFunctions(m, scope_methods);
}
