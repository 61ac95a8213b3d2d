/* py_analysis.c: bindings for the method's C kernels: congruence top-k, the max-activating
 * scanner, and head attribution. Arrays in, fresh arrays out; the GIL is released for the work. */
#include "py_common.h"

#include <stdlib.h>
#include <string.h>

#include "cl_attribution.h"
#include "cl_neurons.h"
#include "cl_scan.h"

static PyObject *py_congruence(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"W_out", "U", "allowed", "top", "col_idx", "col_val", "neuron_offset", NULL};
    PyObject *wo = NULL, *uo = NULL, *ao = Py_None, *cio = Py_None, *cvo = Py_None, *res = NULL;
    int top = 5;
    long long offset = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|OiOOL", kwlist, &wo, &uo, &ao, &top, &cio, &cvo, &offset)) return NULL;
    PyArrayObject *W = NULL, *U = NULL, *A = NULL, *CI = NULL, *CV = NULL;
    PyObject *tt = NULL, *tv = NULL;
    if (!(W = clpy_array(wo, NPY_FLOAT32, 2, "W_out")) || !(U = clpy_array(uo, NPY_FLOAT32, 2, "U")) ) goto done;
    npy_intp n = PyArray_DIM(W, 0), D = PyArray_DIM(W, 1), V = PyArray_DIM(U, 0);
    if (PyArray_DIM(U, 1) != D) {
        PyErr_Format(PyExc_ValueError, "U has d_model %zd but W_out has %zd", (Py_ssize_t)PyArray_DIM(U, 1), (Py_ssize_t)D);
        goto done;
    }
    if (top < 1 || top > V) { PyErr_Format(PyExc_ValueError, "top must be in [1, %zd]", (Py_ssize_t)V); goto done; }
    if (ao != Py_None) {
        if (!(A = clpy_array(ao, NPY_UINT8, 1, "allowed"))) goto done;
        if (PyArray_DIM(A, 0) != V) { PyErr_Format(PyExc_ValueError, "allowed has %zd entries for %zd tokens", (Py_ssize_t)PyArray_DIM(A, 0), (Py_ssize_t)V); goto done; }
    }
    if (cio != Py_None) {
        /* updated in place: must already be the right type and layout */
        if (!PyArray_Check(cio) || !PyArray_Check(cvo) || PyArray_TYPE((PyArrayObject *)cio) != NPY_INT64 ||
            PyArray_TYPE((PyArrayObject *)cvo) != NPY_FLOAT32 || !PyArray_IS_C_CONTIGUOUS((PyArrayObject *)cio) ||
            !PyArray_IS_C_CONTIGUOUS((PyArrayObject *)cvo) || PyArray_NDIM((PyArrayObject *)cio) != 2 ||
            PyArray_DIM((PyArrayObject *)cio, 0) != V || PyArray_DIM((PyArrayObject *)cio, 1) != 2 ||
            PyArray_NDIM((PyArrayObject *)cvo) != 2 || PyArray_DIM((PyArrayObject *)cvo, 0) != V || PyArray_DIM((PyArrayObject *)cvo, 1) != 2 ||
            !PyArray_ISWRITEABLE((PyArrayObject *)cio) || !PyArray_ISWRITEABLE((PyArrayObject *)cvo)) {
            PyErr_Format(PyExc_ValueError, "col_idx / col_val must be writable C-contiguous int64 / float32 arrays of shape (%zd, 2)", (Py_ssize_t)V);
            goto done;
        }
        CI = (PyArrayObject *)cio; CV = (PyArrayObject *)cvo;
    }
    npy_intp dims[2] = {n, top};
    tt = PyArray_EMPTY(2, dims, NPY_INT32, 0);
    tv = PyArray_EMPTY(2, dims, NPY_FLOAT32, 0);
    if (!tt || !tv) goto done;
    cl_congruence_out out = {top, PyArray_DATA((PyArrayObject *)tt), PyArray_DATA((PyArrayObject *)tv),
                             CI ? PyArray_DATA(CI) : NULL, CV ? PyArray_DATA(CV) : NULL, offset};
    cl_error err = {0};
    cl_status st;
    cl_cancel cancel = {clpy_cancel_fn, NULL};
    Py_BEGIN_ALLOW_THREADS
    st = cl_congruence(PyArray_DATA(W), (int)n, (int)D, PyArray_DATA(U), (int)V, A ? PyArray_DATA(A) : NULL, &out, &cancel, &err);
    Py_END_ALLOW_THREADS
    if (st) { clpy_raise(&err); goto done; }
    res = Py_BuildValue("(OO)", tt, tv);
done:
    Py_XDECREF(W); Py_XDECREF(U); Py_XDECREF(A); Py_XDECREF(tt); Py_XDECREF(tv);
    return res;
}

/* ---- Scanner ---- */

typedef struct {
    PyObject_HEAD
    cl_scanner *s;
} ScannerObject;

static void Scanner_dealloc(ScannerObject *self) {
    cl_scanner_free(self->s);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Scanner_init(ScannerObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"layers", "neurons", "d_mlp", "k", NULL};
    PyObject *lo, *no;
    int d_mlp, k;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOii", kwlist, &lo, &no, &d_mlp, &k)) return -1;
    PyArrayObject *L = clpy_int_array(lo, NPY_INT32, 1, "layers"), *N = L ? clpy_int_array(no, NPY_INT32, 1, "neurons") : NULL;
    int rc = -1;
    if (!L || !N) goto done;
    if (PyArray_DIM(L, 0) != PyArray_DIM(N, 0)) { PyErr_SetString(PyExc_ValueError, "layers and neurons differ in length"); goto done; }
    cl_error err = {0};
    cl_scanner *s = NULL;
    if (cl_scanner_new((int)PyArray_DIM(L, 0), PyArray_DATA(L), PyArray_DATA(N), d_mlp, k, &s, &err)) { clpy_raise(&err); goto done; }
    cl_scanner_free(self->s);
    self->s = s;
    rc = 0;
done:
    Py_XDECREF(L); Py_XDECREF(N);
    return rc;
}

static PyObject *Scanner_state(ScannerObject *self, PyObject *unused) {
    if (!self->s) { PyErr_SetString(PyExc_RuntimeError, "Scanner not initialised"); return NULL; }
    cl_scanner *s = self->s;
    npy_intp nk[2] = {s->n, s->k}, n1[1] = {s->n};
    PyObject *act = clpy_array_copy(s->act, NPY_FLOAT32, 2, nk), *doc = clpy_array_copy(s->doc, NPY_INT64, 2, nk),
             *pos = clpy_array_copy(s->pos, NPY_INT32, 2, nk), *cnt = clpy_array_copy(s->count, NPY_INT32, 1, n1), *res = NULL;
    if (act && doc && pos && cnt) res = Py_BuildValue("{s:O,s:O,s:O,s:O}", "act", act, "doc", doc, "pos", pos, "count", cnt);
    Py_XDECREF(act); Py_XDECREF(doc); Py_XDECREF(pos); Py_XDECREF(cnt);
    return res;
}

static PyObject *Scanner_set_state(ScannerObject *self, PyObject *args) {
    PyObject *ao, *doo, *po, *co;
    if (!PyArg_ParseTuple(args, "OOOO", &ao, &doo, &po, &co)) return NULL;
    if (!self->s) { PyErr_SetString(PyExc_RuntimeError, "Scanner not initialised"); return NULL; }
    cl_scanner *s = self->s;
    PyArrayObject *A = clpy_array(ao, NPY_FLOAT32, 2, "act"), *Dd = A ? clpy_int_array(doo, NPY_INT64, 2, "doc") : NULL,
                  *P = Dd ? clpy_int_array(po, NPY_INT32, 2, "pos") : NULL, *C = P ? clpy_int_array(co, NPY_INT32, 1, "count") : NULL;
    PyObject *res = NULL;
    if (!C) goto done;
    if (PyArray_DIM(A, 0) != s->n || PyArray_DIM(A, 1) != s->k || PyArray_DIM(Dd, 0) != s->n || PyArray_DIM(Dd, 1) != s->k ||
        PyArray_DIM(P, 0) != s->n || PyArray_DIM(P, 1) != s->k || PyArray_DIM(C, 0) != s->n) {
        PyErr_Format(PyExc_ValueError, "saved scan state does not match this scan (%d neurons, k = %d)", s->n, s->k);
        goto done;
    }
    const int32_t *cnt = PyArray_DATA(C);
    for (int j = 0; j < s->n; j++)
        if (cnt[j] < 0 || cnt[j] > s->k) { PyErr_SetString(PyExc_ValueError, "saved scan state has an invalid count"); goto done; }
    memcpy(s->act, PyArray_DATA(A), (size_t)s->n * s->k * sizeof(float));
    memcpy(s->doc, PyArray_DATA(Dd), (size_t)s->n * s->k * sizeof(int64_t));
    memcpy(s->pos, PyArray_DATA(P), (size_t)s->n * s->k * sizeof(int32_t));
    memcpy(s->count, cnt, (size_t)s->n * sizeof(int32_t));
    res = Py_None;
    Py_INCREF(res);
done:
    Py_XDECREF(A); Py_XDECREF(Dd); Py_XDECREF(P); Py_XDECREF(C);
    return res;
}

static PyMethodDef Scanner_methods[] = {
    {"state", (PyCFunction)Scanner_state, METH_NOARGS, "state() -> dict(act, doc, pos, count): copies"},
    {"set_state", (PyCFunction)Scanner_set_state, METH_VARARGS, "set_state(act, doc, pos, count): resume a scan"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ScannerType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "ctxlookup._core.Scanner",
    .tp_basicsize = sizeof(ScannerObject),
    .tp_dealloc = (destructor)Scanner_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Scanner(layers, neurons, d_mlp, k): streaming top-k documents per neuron",
    .tp_methods = Scanner_methods,
    .tp_init = (initproc)Scanner_init,
    .tp_new = PyType_GenericNew,
};

int clpy_batch_open(clpy_batch *b, const cl_model *m, PyObject *to, PyObject *lo, PyObject *dobj) {
    memset(b, 0, sizeof *b);
    if (!(b->T = clpy_int_array(to, NPY_INT32, 1, "tokens")) || !(b->L = clpy_int_array(lo, NPY_INT32, 1, "lengths")))
        return -1;
    b->B = (int)PyArray_DIM(b->L, 0);
    if (b->B < 1) { PyErr_SetString(PyExc_ValueError, "no sequences given"); return -1; }
    long long sum = 0;
    const int32_t *l = PyArray_DATA(b->L);
    for (int i = 0; i < b->B; i++) {
        if (l[i] < 1) { PyErr_Format(PyExc_ValueError, "lengths[%d] = %d: sequences must not be empty", i, l[i]); return -1; }
        sum += l[i];
        if (l[i] > b->T_pad) b->T_pad = l[i];
    }
    if (sum != PyArray_DIM(b->T, 0)) {
        PyErr_Format(PyExc_ValueError, "the lengths add up to %lld tokens but %zd were given", sum, (Py_ssize_t)PyArray_DIM(b->T, 0));
        return -1;
    }
    if (dobj) {
        if (!(b->D = clpy_int_array(dobj, NPY_INT64, 1, "doc_ids"))) return -1;
        if (PyArray_DIM(b->D, 0) != b->B) {
            PyErr_Format(PyExc_ValueError, "%zd doc ids for %d sequences: one per sequence", (Py_ssize_t)PyArray_DIM(b->D, 0), b->B);
            return -1;
        }
    }
    b->slots = calloc((size_t)CL_HK_COUNT * (m->cfg.n_layers + 1), sizeof *b->slots);
    if (!b->slots) { PyErr_NoMemory(); return -1; }
    return 0;
}

int clpy_batch_forward(clpy_batch *b, const cl_model *m, int stop) {
    cl_fwd_args fa = {.tokens = PyArray_DATA(b->T), .lengths = PyArray_DATA(b->L), .B = b->B, .T_pad = b->T_pad,
                      .stop_at_layer = stop, .slots = b->slots, .cancel = {clpy_cancel_fn, NULL}};
    cl_error err = {0};
    cl_status st;
    Py_BEGIN_ALLOW_THREADS
    st = cl_forward(m, &fa, &err);
    Py_END_ALLOW_THREADS
    if (st) { clpy_raise(&err); return -1; }
    return 0;
}

void clpy_batch_close(clpy_batch *b) {
    free(b->slots);
    Py_XDECREF(b->T); Py_XDECREF(b->L); Py_XDECREF(b->D);
    memset(b, 0, sizeof *b);
}

/* The scan's observer when a Scope rides along: each observer sees the layers it keeps. */
typedef struct {
    cl_scanner *scanner;
    cl_scope *scope;
} scan_pair;

static cl_status pair_observe(void *ctx, int layer, const float *data, size_t stride, size_t N, const int32_t *start,
                              const int32_t *lengths, int B, cl_error *err) {
    scan_pair *p = ctx;
    cl_status st = cl_scanner_observe(p->scanner, layer, data, stride, N, start, lengths, B, err);
    return st ? st : cl_scope_observe(p->scope, layer, data, stride, N, start, lengths, B, err);
}

/* scan_batch(model, scanner, tokens, lengths, doc_ids, skip_first, scope=None) */
static PyObject *py_scan_batch(PyObject *self, PyObject *args) {
    PyObject *mo, *so, *to, *lo, *dobj, *sco = Py_None;
    int skip_first;
    if (!PyArg_ParseTuple(args, "OO!OOOi|O", &mo, &ScannerType, &so, &to, &lo, &dobj, &skip_first, &sco)) return NULL;
    const cl_model *m = clpy_model_ptr(mo);
    if (!m) return NULL;
    cl_scanner *s = ((ScannerObject *)so)->s;
    if (!s) { PyErr_SetString(PyExc_RuntimeError, "Scanner not initialised"); return NULL; }
    cl_scope *scope = NULL;
    if (sco != Py_None && !(scope = clpy_scope_ptr(sco))) return NULL;
    clpy_batch bt;
    PyObject *res = NULL;
    if (clpy_batch_open(&bt, m, to, lo, dobj) < 0) goto done;
    const cl_config *c = &m->cfg;
    int deepest = -1;
    scan_pair pair = {s, scope};
    for (int j = 0; j < s->n; j++) {
        if (s->layer[j] < 0 || s->layer[j] >= c->n_layers || s->d_mlp != c->d_mlp) {
            PyErr_Format(PyExc_ValueError, "scanner neuron %d (layer %d) does not fit this model", j, s->layer[j]);
            goto done;
        }
        cl_hook_slot *sl = &bt.slots[cl_hook_slot_index(c, CL_HK_MLP_POST, s->layer[j])];
        sl->observe = scope ? pair_observe : cl_scanner_observe;
        sl->observe_ctx = scope ? (void *)&pair : (void *)s;
        if (s->layer[j] > deepest) deepest = s->layer[j];
    }
    for (int i = 0; scope && i < scope->n_layers; i++)
        if (scope->d_mlp != s->d_mlp || scope->layers[i] >= c->n_layers ||
            !bt.slots[cl_hook_slot_index(c, CL_HK_MLP_POST, scope->layers[i])].observe) {
            PyErr_Format(PyExc_ValueError, "the scope's layer %d (d_mlp %d) is not one the scanner observes (d_mlp %d)",
                         scope->layers[i], scope->d_mlp, s->d_mlp);
            goto done;
        }
    s->batch_docs = PyArray_DATA(bt.D);
    s->skip_first = skip_first;
    if (scope) { scope->batch_docs = s->batch_docs; scope->skip_first = skip_first; }
    int rc = clpy_batch_forward(&bt, m, deepest + 1);
    s->batch_docs = NULL;
    if (scope) scope->batch_docs = NULL;
    if (rc == 0) res = Py_NewRef(Py_None);
done:
    clpy_batch_close(&bt);
    return res;
}

static PyObject *py_attribute_batch(PyObject *self, PyObject *args) {
    PyObject *mo, *to, *lo, *tlo, *tno;
    if (!PyArg_ParseTuple(args, "OOOOO", &mo, &to, &lo, &tlo, &tno)) return NULL;
    const cl_model *m = clpy_model_ptr(mo);
    if (!m) return NULL;
    PyArrayObject *TL = NULL, *TN = NULL;
    PyObject *score = NULL, *act = NULL, *res = NULL;
    clpy_batch bt;
    if (clpy_batch_open(&bt, m, to, lo, NULL) < 0) goto done;
    if (!(TL = clpy_int_array(tlo, NPY_INT32, 1, "target_layers")) || !(TN = clpy_int_array(tno, NPY_INT32, 1, "target_neurons"))) goto done;
    const cl_config *c = &m->cfg;
    const int B = bt.B;
    if (PyArray_DIM(TL, 0) != B || PyArray_DIM(TN, 0) != B) { PyErr_SetString(PyExc_ValueError, "one target per prompt"); goto done; }
    const int32_t *tl = PyArray_DATA(TL), *tn = PyArray_DATA(TN);
    int deepest = -1;
    for (int b = 0; b < B; b++) {
        if (tl[b] < 0 || tl[b] >= c->n_layers) { PyErr_Format(PyExc_ValueError, "layer %d is outside [0, %d)", tl[b], c->n_layers); goto done; }
        if (tn[b] < 0 || tn[b] >= c->d_mlp) { PyErr_Format(PyExc_ValueError, "neuron %d is outside [0, %d)", tn[b], c->d_mlp); goto done; }
        if (tl[b] > deepest) deepest = tl[b];
    }
    npy_intp sd[3] = {B, c->n_layers, c->n_heads}, ad[1] = {B};
    score = PyArray_EMPTY(3, sd, NPY_FLOAT32, 0);
    act = PyArray_EMPTY(1, ad, NPY_FLOAT32, 0);
    if (!score || !act) goto done;
    float *sp = PyArray_DATA((PyArrayObject *)score);
    for (npy_intp i = 0; i < PyArray_SIZE((PyArrayObject *)score); i++) sp[i] = NAN;
    cl_attribution at = {m, B, tl, tn, sp, PyArray_DATA((PyArrayObject *)act)};
    for (int l = 0; l <= deepest; l++) {
        cl_hook_slot *z = &bt.slots[cl_hook_slot_index(c, CL_HK_Z, l)];
        z->observe = cl_attribution_observe_z;
        z->observe_ctx = &at;
        cl_hook_slot *p = &bt.slots[cl_hook_slot_index(c, CL_HK_MLP_POST, l)];
        p->observe = cl_attribution_observe_post;
        p->observe_ctx = &at;
    }
    if (clpy_batch_forward(&bt, m, deepest + 1) < 0) goto done;
    res = Py_BuildValue("(OO)", score, act);
done:
    clpy_batch_close(&bt);
    Py_XDECREF(TL); Py_XDECREF(TN); Py_XDECREF(score); Py_XDECREF(act);
    return res;
}

static PyMethodDef analysis_methods[] = {
    {"congruence", (PyCFunction)(void (*)(void))py_congruence, METH_VARARGS | METH_KEYWORDS,
     "congruence(W_out, U, allowed=None, top=5, col_idx=None, col_val=None, neuron_offset=0) -> (top_tokens, top_values)"},
    {"scan_batch", py_scan_batch, METH_VARARGS,
     "scan_batch(model, scanner, tokens, lengths, doc_ids, skip_first, scope=None): one forward, top-k updated "
     "(and the Scope of the same neurons, when given)"},
    {"attribute_batch", py_attribute_batch, METH_VARARGS,
     "attribute_batch(model, tokens, lengths, target_layers, target_neurons) -> (score (B, n_layers, n_heads), act (B))"},
    {NULL, NULL, 0, NULL},
};

int clpy_analysis_register(PyObject *m) {
    if (PyType_Ready(&ScannerType) < 0) return -1;
    Py_INCREF(&ScannerType);
    if (PyModule_AddObject(m, "Scanner", (PyObject *)&ScannerType) < 0) { Py_DECREF(&ScannerType); return -1; }
    return PyModule_AddFunctions(m, analysis_methods);
}
