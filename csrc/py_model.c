/* py_model.c: ctxlookup._core.Model: load, config, zero-copy weight views, forward with hooks.
 * Thin: argument checking and array allocation here, all numerics in cl_forward.c. The GIL is
 * released for the forward pass; Python hook callbacks re-take it, see the padded
 * (batch, pos, ...) activation, and may return a replacement. */
#include "py_common.h"

#include <stdlib.h>
#include <string.h>

#include "cl_forward.h"
#include "cl_hooks.h"
#include "cl_model.h"

typedef struct {
    PyObject_HEAD
    cl_model *m;
    PyObject *path;
} ModelObject;

static void Model_dealloc(ModelObject *self) {
    cl_model_free(self->m);
    Py_XDECREF(self->path);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Model_init(ModelObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"path", "fold_ln", "center_writing_weights", "center_unembed", "fold_value_biases", "mmap", NULL};
    PyObject *pathb = NULL;
    cl_load_opts o = {0};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&|ppppp", kwlist, clpy_path_converter, &pathb, &o.fold_ln,
                                     &o.center_writing_weights, &o.center_unembed, &o.fold_value_biases, &o.mmap_weights))
        return -1;
    cl_error err = {0};
    cl_model *m = NULL;
    cl_status st;
    const char *path = PyBytes_AS_STRING(pathb);
    Py_BEGIN_ALLOW_THREADS
    st = cl_model_load(path, &o, &m, &err);
    Py_END_ALLOW_THREADS
    if (st) {
        Py_DECREF(pathb);
        clpy_raise(&err);
        return -1;
    }
    cl_model_free(self->m);
    self->m = m;
    Py_XSETREF(self->path, pathb);
    return 0;
}

static int ready(ModelObject *self) {
    if (self->m) return 1;
    PyErr_SetString(PyExc_RuntimeError, "Model was not loaded (use ctxlookup.Model.load)");
    return 0;
}

static PyObject *Model_config(ModelObject *self, PyObject *unused) {
    if (!ready(self)) return NULL;
    const cl_config *c = &self->m->cfg;
    const cl_load_opts *o = &self->m->opts;
    return Py_BuildValue(
        "{s:s,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:s,s:s,s:i,s:f,s:O,s:f,s:O,s:O,s:f,s:O,s:s,s:i,s:i,s:i,"
        "s:O,s:O,s:O,s:O,s:O,s:O}",
        "arch", c->arch == CL_ARCH_GPT2 ? "GPT2LMHeadModel" : "GPTNeoXForCausalLM", "n_layers", c->n_layers, "d_model",
        c->d_model, "n_heads", c->n_heads, "d_head", c->d_head, "d_mlp", c->d_mlp, "d_vocab", c->d_vocab, "n_ctx", c->n_ctx,
        "act_fn", c->act_name, "positional_embedding_type", c->rotary_dim ? "rotary" : "standard", "rotary_dim",
        c->rotary_dim, "rotary_base", (double)c->rotary_base, "parallel_attn_mlp", c->parallel ? Py_True : Py_False, "eps",
        (double)c->eps, "tied_embeddings", c->tied ? Py_True : Py_False, "attn_bias", c->attn_bias ? Py_True : Py_False,
        "attn_scale", (double)c->attn_scale, "scale_attn_by_inverse_layer_idx", c->scale_by_layer ? Py_True : Py_False,
        "normalization_type", o->fold_ln ? "LNPre" : "LN", "bos_token_id", c->bos_token_id, "eos_token_id",
        c->eos_token_id, "pad_token_id", c->pad_token_id, "fold_ln", o->fold_ln ? Py_True : Py_False,
        "center_writing_weights", o->center_writing_weights ? Py_True : Py_False, "center_unembed",
        o->center_unembed ? Py_True : Py_False, "fold_value_biases", o->fold_value_biases ? Py_True : Py_False,
        "W_E_in_place", self->m->W_E_in_place ? Py_True : Py_False, "W_U_in_place",
        self->m->W_U_in_place ? Py_True : Py_False);
}

/* A read-only view of model memory that keeps the model alive. */
static PyObject *view(ModelObject *self, const float *data, int nd, const npy_intp *shape, const npy_intp *strides_f) {
    npy_intp strides[8];
    for (int i = 0; i < nd; i++) strides[i] = strides_f[i] * (npy_intp)sizeof(float);
    PyObject *arr = PyArray_NewFromDescr(&PyArray_Type, PyArray_DescrFromType(NPY_FLOAT32), nd, (npy_intp *)shape, strides,
                                         (void *)data, NPY_ARRAY_ALIGNED, NULL);
    if (!arr) return NULL;
    Py_INCREF(self);
    if (PyArray_SetBaseObject((PyArrayObject *)arr, (PyObject *)self) < 0) {
        Py_DECREF(arr);
        return NULL;
    }
    return arr;
}

static PyObject *Model_weight(ModelObject *self, PyObject *arg) {
    if (!ready(self)) return NULL;
    const char *name = PyUnicode_AsUTF8(arg);
    if (!name) return NULL;
    const cl_model *m = self->m;
    const cl_config *c = &m->cfg;
    const npy_intp L = c->n_layers, D = c->d_model, H = c->n_heads, dh = c->d_head, M = c->d_mlp, V = c->d_vocab;
    if (!strcmp(name, "W_E")) { npy_intp s[] = {V, D}, st[] = {D, 1}; return view(self, m->W_E, 2, s, st); }
    if (!strcmp(name, "W_pos") && m->W_pos) { npy_intp s[] = {c->n_ctx, D}, st[] = {D, 1}; return view(self, m->W_pos, 2, s, st); }
    for (int k = 0; k < 3; k++) {
        static const char *const W[] = {"W_Q", "W_K", "W_V"}, *const B[] = {"b_Q", "b_K", "b_V"};
        if (!strcmp(name, W[k])) { /* W_QKV (L, D, 3, H, dh) -> (L, H, D, dh) */
            npy_intp s[] = {L, H, D, dh}, st[] = {D * 3 * D, dh, 3 * D, 1};
            return view(self, m->W_QKV + k * D, 4, s, st);
        }
        if (!strcmp(name, B[k])) { npy_intp s[] = {L, H, dh}, st[] = {3 * D, dh, 1}; return view(self, m->b_QKV + k * D, 3, s, st); }
    }
    if (!strcmp(name, "W_O")) { npy_intp s[] = {L, H, dh, D}, st[] = {H * dh * D, dh * D, D, 1}; return view(self, m->W_O, 4, s, st); }
    if (!strcmp(name, "b_O")) { npy_intp s[] = {L, D}, st[] = {D, 1}; return view(self, m->b_O, 2, s, st); }
    if (!strcmp(name, "W_in")) { npy_intp s[] = {L, D, M}, st[] = {D * M, M, 1}; return view(self, m->W_in, 3, s, st); }
    if (!strcmp(name, "b_in")) { npy_intp s[] = {L, M}, st[] = {M, 1}; return view(self, m->b_in, 2, s, st); }
    if (!strcmp(name, "W_out")) { npy_intp s[] = {L, M, D}, st[] = {M * D, D, 1}; return view(self, m->W_out, 3, s, st); }
    if (!strcmp(name, "b_out")) { npy_intp s[] = {L, D}, st[] = {D, 1}; return view(self, m->b_out, 2, s, st); }
    if (!strcmp(name, "W_U")) { npy_intp s[] = {D, V}, st[] = {1, D}; return view(self, m->W_U_T, 2, s, st); }
    if (!strcmp(name, "b_U")) { npy_intp s[] = {V}, st[] = {1}; return view(self, m->b_U, 1, s, st); }
    struct { const char *n; const float *p; int per_layer; } ln[] = {
        {"ln1_w", m->ln1_w, 1}, {"ln1_b", m->ln1_b, 1}, {"ln2_w", m->ln2_w, 1}, {"ln2_b", m->ln2_b, 1},
        {"ln_final_w", m->lnf_w, 0}, {"ln_final_b", m->lnf_b, 0}};
    for (size_t i = 0; i < sizeof ln / sizeof ln[0]; i++) {
        if (strcmp(name, ln[i].n)) continue;
        if (!ln[i].p) {
            PyErr_Format(PyExc_KeyError, "weight '%s' was folded into the next layer (fold_ln=True)", name);
            return NULL;
        }
        if (ln[i].per_layer) { npy_intp s[] = {L, D}, st[] = {D, 1}; return view(self, ln[i].p, 2, s, st); }
        npy_intp s[] = {D}, st[] = {1};
        return view(self, ln[i].p, 1, s, st);
    }
    PyErr_Format(PyExc_KeyError, "no weight named '%s'", name);
    return NULL;
}

static PyObject *Model_hook_names(ModelObject *self, PyObject *unused) {
    if (!ready(self)) return NULL;
    const cl_config *c = &self->m->cfg;
    PyObject *out = PyList_New(0);
    if (!out) return NULL;
    char buf[96];
    for (int pass = 0; pass < 3; pass++) {
        for (int l = 0; l < (pass == 1 ? c->n_layers : 1); l++)
            for (int k = 0; k < CL_HK_COUNT; k++) {
                int block = cl_hook_is_block((cl_hook_kind)k);
                if ((pass == 1) != block) continue;
                if (pass == 0 && k >= CL_HK_LNF_SCALE) continue;
                if (pass == 2 && k < CL_HK_LNF_SCALE) continue;
                if (!cl_hook_available(c, (cl_hook_kind)k)) continue;
                cl_hook_name(c, (cl_hook_kind)k, l, buf, sizeof buf);
                PyObject *s = PyUnicode_FromString(buf);
                if (!s || PyList_Append(out, s) < 0) { Py_XDECREF(s); Py_DECREF(out); return NULL; }
                Py_DECREF(s);
            }
    }
    return out;
}

/* ---- key-value cache ---- */

typedef struct {
    PyObject_HEAD
    cl_kv_cache *kv;
    PyObject *model; /* the Model it belongs to */
    int busy;        /* a forward pass is using it (the GIL is released meanwhile) */
} KVCacheObject;

static void KVCache_dealloc(KVCacheObject *self) {
    cl_kv_cache_free(self->kv);
    Py_XDECREF(self->model);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *KVCache_get_lengths(KVCacheObject *self, void *unused) {
    PyObject *out = PyList_New(self->kv->B);
    for (int b = 0; out && b < self->kv->B; b++) PyList_SET_ITEM(out, b, PyLong_FromLong(self->kv->len[b]));
    return out;
}

static PyObject *KVCache_get_capacity(KVCacheObject *self, void *unused) { return PyLong_FromLong(self->kv->capacity); }

static PyGetSetDef KVCache_getset[] = {
    {"lengths", (getter)KVCache_get_lengths, NULL, "positions cached per sequence", NULL},
    {"capacity", (getter)KVCache_get_capacity, NULL, "positions each sequence can hold", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject KVCacheType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "ctxlookup._core.KVCache",
    .tp_basicsize = sizeof(KVCacheObject),
    .tp_dealloc = (destructor)KVCache_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Keys and values of the positions each sequence has been through; made by Model.kv_cache(batch, capacity)",
    .tp_getset = KVCache_getset,
};

static PyObject *Model_kv_cache(ModelObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"batch", "capacity", NULL};
    int B, capacity = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "i|i", kwlist, &B, &capacity)) return NULL;
    if (!ready(self)) return NULL;
    if (capacity < 0) capacity = self->m->cfg.n_ctx;
    cl_error err = {0};
    cl_kv_cache *kv = NULL;
    if (cl_kv_cache_new(&self->m->cfg, B, capacity, &kv, &err)) { clpy_raise(&err); return NULL; }
    KVCacheObject *o = PyObject_New(KVCacheObject, &KVCacheType);
    if (!o) { cl_kv_cache_free(kv); return NULL; }
    o->kv = kv;
    o->busy = 0;
    Py_INCREF(self);
    o->model = (PyObject *)self;
    return (PyObject *)o;
}

/* ---- forward ---- */

typedef struct {
    const cl_model *m;
    const int32_t *lengths;
    int B, T_pad;
    PyObject **callbacks; /* per slot, borrowed */
    PyObject **names;     /* per slot, borrowed */
} cb_ctx;

/* The activation is shown to Python padded: (B, T_pad, *dims), zeros at padding. */
static cl_status call_hook(void *vctx, const cl_hook_view *v, cl_error *err) {
    cb_ctx *ctx = vctx;
    const cl_config *c = &ctx->m->cfg;
    int idx = cl_hook_slot_index(c, v->kind, v->layer);
    PyGILState_STATE gs = PyGILState_Ensure();
    cl_status st = CL_OK;
    PyObject *arr = NULL, *ret = NULL, *conv = NULL;
    cl_hook_shape sh = cl_hook_shape_of(c, v->kind);
    npy_intp dims[5];
    int nd = 0;
    size_t total;
    dims[nd++] = ctx->B;
    if (v->attention) {
        dims[nd++] = c->n_heads; dims[nd++] = ctx->T_pad; dims[nd++] = ctx->T_pad;
    } else {
        dims[nd++] = ctx->T_pad;
        for (int i = 0; i < sh.ndim; i++) dims[nd++] = sh.dims[i];
    }
    arr = PyArray_ZEROS(nd, dims, NPY_FLOAT32, 0);
    if (!arr) { st = CL_ECALLBACK; goto done; }
    float *a = PyArray_DATA((PyArrayObject *)arr);
    total = (size_t)PyArray_SIZE((PyArrayObject *)arr);
    if (v->attention) memcpy(a, v->data, total * sizeof(float));
    else {
        size_t r = 0;
        for (int b = 0; b < ctx->B; b++)
            for (int t = 0; t < ctx->lengths[b]; t++, r++)
                memcpy(a + ((size_t)b * ctx->T_pad + t) * v->features, v->data + r * v->features, v->features * sizeof(float));
    }
    ret = PyObject_CallFunctionObjArgs(ctx->callbacks[idx], arr, ctx->names[idx], NULL);
    if (!ret) { st = CL_ECALLBACK; goto done; }
    PyObject *src = ret == Py_None ? arr : ret;
    conv = (PyObject *)clpy_array(src, NPY_FLOAT32, -1, "a hook's return value");
    if (!conv) { st = CL_ECALLBACK; goto done; }
    if (PyArray_NDIM((PyArrayObject *)conv) != nd || memcmp(PyArray_DIMS((PyArrayObject *)conv), dims, nd * sizeof(npy_intp))) {
        PyErr_Format(PyExc_ValueError, "hook '%U' returned an array of the wrong shape (expected the activation's shape)",
                     ctx->names[idx]);
        st = CL_ECALLBACK;
        goto done;
    }
    const float *o = PyArray_DATA((PyArrayObject *)conv);
    if (v->attention) memcpy(v->data, o, total * sizeof(float));
    else {
        size_t r = 0;
        for (int b = 0; b < ctx->B; b++)
            for (int t = 0; t < ctx->lengths[b]; t++, r++)
                memcpy(v->data + r * v->features, o + ((size_t)b * ctx->T_pad + t) * v->features, v->features * sizeof(float));
    }
done:
    Py_XDECREF(conv);
    Py_XDECREF(ret);
    Py_XDECREF(arr);
    PyGILState_Release(gs);
    if (st) cl_fail(err, CL_ECALLBACK, "a hook callback raised");
    return st;
}

static int check_shape(PyArrayObject *a, int nd, const npy_intp *dims, const char *hook, const char *what) {
    int ok = PyArray_NDIM(a) == nd;
    for (int i = 0; ok && i < nd; i++) ok = PyArray_DIMS(a)[i] == dims[i];
    if (ok) return 0;
    PyObject *want = PyTuple_New(nd), *got = NULL;
    for (int i = 0; want && i < nd; i++) PyTuple_SET_ITEM(want, i, PyLong_FromSsize_t(dims[i]));
    got = PyTuple_New(PyArray_NDIM(a));
    for (int i = 0; got && i < PyArray_NDIM(a); i++) PyTuple_SET_ITEM(got, i, PyLong_FromSsize_t(PyArray_DIMS(a)[i]));
    if (want && got) PyErr_Format(PyExc_ValueError, "%s for hook '%s' has shape %R, expected %R", what, hook, got, want);
    Py_XDECREF(want);
    Py_XDECREF(got);
    return -1;
}

static PyObject *Model_forward(ModelObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"tokens", "lengths", "T_pad", "logits", "stop_at_layer", "hooks", "pos", "logits_last", "kv",
                             NULL};
    PyObject *tok_o, *len_o, *hooks = Py_None, *pos_o = Py_None, *kv_o = Py_None;
    int T_pad, want_logits = 1, stop = -1, logits_last = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOi|piOOpO", kwlist, &tok_o, &len_o, &T_pad, &want_logits, &stop, &hooks,
                                     &pos_o, &logits_last, &kv_o))
        return NULL;
    if (!ready(self)) return NULL;
    KVCacheObject *kvo = NULL;
    if (kv_o != Py_None) {
        if (!PyObject_TypeCheck(kv_o, &KVCacheType)) {
            PyErr_Format(PyExc_TypeError, "kv must be a KVCache from this model's kv_cache(), got %s", Py_TYPE(kv_o)->tp_name);
            return NULL;
        }
        kvo = (KVCacheObject *)kv_o;
        if (kvo->model != (PyObject *)self) {
            PyErr_SetString(PyExc_ValueError, "this key-value cache belongs to another model");
            return NULL;
        }
        if (kvo->busy) {
            PyErr_SetString(PyExc_RuntimeError, "this key-value cache is in use by another forward pass");
            return NULL;
        }
    }
    const cl_model *m = self->m;
    const cl_config *c = &m->cfg;
    const int L = c->n_layers, nslots = CL_HK_COUNT * (L + 1);
    PyObject *keep = PyList_New(0), *logits = NULL, *cache = NULL, *result = NULL;
    cl_hook_slot *slots = NULL;
    PyObject **callbacks = NULL, **names = NULL;
    if (!keep) return NULL;
    PyArrayObject *tok = clpy_keep(keep, clpy_int_array(tok_o, NPY_INT32, -1, "tokens")), *pos = NULL;
    PyArrayObject *len = tok ? clpy_keep(keep, clpy_int_array(len_o, NPY_INT32, -1, "lengths")) : NULL;
    if (!tok || !len) goto done;
    if (PyArray_NDIM(tok) != 1 || PyArray_NDIM(len) != 1) {
        PyErr_SetString(PyExc_ValueError, "tokens and lengths must be 1-D (packed tokens, one length per sequence)");
        goto done;
    }
    int B = (int)PyArray_DIM(len, 0);
    if (B < 1) { PyErr_SetString(PyExc_ValueError, "empty batch: at least one sequence is needed"); goto done; }
    const int32_t *lengths = PyArray_DATA(len);
    long long sum = 0;
    for (int b = 0; b < B; b++) sum += lengths[b];
    if (sum != PyArray_DIM(tok, 0)) {
        PyErr_Format(PyExc_ValueError, "the lengths add up to %lld tokens but %zd were given", sum, (Py_ssize_t)PyArray_DIM(tok, 0));
        goto done;
    }
    if (stop < 0) stop = L;
    int P = T_pad;
    if (pos_o != Py_None) {
        pos = clpy_keep(keep, clpy_int_array(pos_o, NPY_INT32, -1, "pos"));
        if (!pos) goto done;
        if (PyArray_NDIM(pos) != 2 || PyArray_DIM(pos, 0) != B) {
            PyErr_Format(PyExc_ValueError, "pos must have shape (batch=%d, n_positions)", B);
            goto done;
        }
        P = (int)PyArray_DIM(pos, 1);
    }
    cache = PyDict_New();
    if (!cache) goto done;
    slots = calloc((size_t)nslots, sizeof *slots);
    callbacks = calloc((size_t)nslots, sizeof *callbacks);
    names = calloc((size_t)nslots, sizeof *names);
    if (!slots || !callbacks || !names) { PyErr_NoMemory(); goto done; }
    if (hooks != Py_None) {
        if (!PyDict_Check(hooks)) { PyErr_SetString(PyExc_TypeError, "hooks must be a dict {name: spec}"); goto done; }
        PyObject *key, *spec;
        Py_ssize_t it = 0;
        while (PyDict_Next(hooks, &it, &key, &spec)) {
            const char *name = PyUnicode_AsUTF8(key);
            if (!name) goto done;
            if (!PyDict_Check(spec)) { PyErr_Format(PyExc_TypeError, "hook spec for '%s' must be a dict", name); goto done; }
            cl_hook_kind kind;
            int layer;
            cl_error err = {0};
            if (cl_hook_parse(c, name, &kind, &layer, &err)) { clpy_raise(&err); goto done; }
            int si = cl_hook_slot_index(c, kind, layer);
            cl_hook_slot *s = &slots[si];
            names[si] = key;
            cl_hook_shape sh = cl_hook_shape_of(c, kind);
            npy_intp full[5], capd[5];
            int nd = 0;
            full[nd] = B; capd[nd++] = B;
            if (sh.attention) {
                full[nd] = c->n_heads; capd[nd++] = c->n_heads;
                full[nd] = T_pad; capd[nd++] = P;
                full[nd] = T_pad; capd[nd++] = T_pad;
            } else {
                full[nd] = T_pad; capd[nd++] = P;
                for (int i = 0; i < sh.ndim; i++) { full[nd] = sh.dims[i]; capd[nd++] = sh.dims[i]; }
            }
            PyObject *v;
            if ((v = PyDict_GetItemString(spec, "capture")) && PyObject_IsTrue(v)) {
                PyObject *cap = PyArray_EMPTY(nd, capd, NPY_FLOAT32, 0);
                if (!cap) goto done;
                int rc = PyDict_SetItem(cache, key, cap);
                Py_DECREF(cap);
                if (rc < 0) goto done;
                s->capture = PyArray_DATA((PyArrayObject *)cap);
            }
            if ((v = PyDict_GetItemString(spec, "patch")) && v != Py_None) {
                PyArrayObject *p = clpy_keep(keep, clpy_array(v, NPY_FLOAT32, -1, "patch"));
                if (!p || check_shape(p, nd, full, name, "patch")) goto done;
                s->patch = PyArray_DATA(p);
            }
            if ((v = PyDict_GetItemString(spec, "callback")) && v != Py_None) {
                if (!PyCallable_Check(v)) { PyErr_Format(PyExc_TypeError, "callback for '%s' is not callable", name); goto done; }
                s->callback = 1;
                callbacks[si] = v;
            }
            if ((v = PyDict_GetItemString(spec, "ablate_heads")) && v != Py_None) {
                if (sh.attention || sh.ndim != 2) {
                    PyErr_Format(PyExc_ValueError, "heads can be ablated at hook_q/k/v/z/result, not at '%s'", name);
                    goto done;
                }
                npy_intp hd[1] = {c->n_heads}, vd[2] = {sh.dims[0], sh.dims[1]};
                PyArrayObject *h = clpy_keep(keep, clpy_array(v, NPY_UINT8, -1, "ablate_heads"));
                if (!h || check_shape(h, 1, hd, name, "ablate_heads")) goto done;
                s->ablate_heads = PyArray_DATA(h);
                if ((v = PyDict_GetItemString(spec, "ablate_values")) && v != Py_None) {
                    PyArrayObject *av = clpy_keep(keep, clpy_array(v, NPY_FLOAT32, -1, "ablate_values"));
                    if (!av || check_shape(av, 2, vd, name, "ablate_values")) goto done;
                    s->ablate_values = PyArray_DATA(av);
                }
            }
            if ((v = PyDict_GetItemString(spec, "set_idx")) && v != Py_None) {
                PyArrayObject *ix = clpy_keep(keep, clpy_int_array(v, NPY_INT32, -1, "set_idx"));
                PyObject *vv = PyDict_GetItemString(spec, "set_val");
                PyArrayObject *val = ix && vv ? clpy_keep(keep, clpy_array(vv, NPY_FLOAT32, -1, "set_val")) : NULL;
                if (!ix) goto done;
                if (!val) { if (!PyErr_Occurred()) PyErr_Format(PyExc_ValueError, "set_idx for '%s' needs set_val", name); goto done; }
                if (PyArray_NDIM(ix) != 1 || PyArray_NDIM(val) != 1 || PyArray_DIM(ix, 0) != PyArray_DIM(val, 0)) {
                    PyErr_Format(PyExc_ValueError, "set_idx and set_val for '%s' must be 1-D of equal length", name);
                    goto done;
                }
                size_t F = cl_hook_features(c, kind);
                const int32_t *ip = PyArray_DATA(ix);
                if (sh.attention) { PyErr_Format(PyExc_ValueError, "cannot set features of '%s'", name); goto done; }
                for (npy_intp i = 0; i < PyArray_DIM(ix, 0); i++)
                    if (ip[i] < 0 || (size_t)ip[i] >= F) {
                        PyErr_Format(PyExc_ValueError, "index %d is outside [0, %zu) for hook '%s'", ip[i], F, name);
                        goto done;
                    }
                s->n_set = (int)PyArray_DIM(ix, 0);
                s->set_idx = ip;
                s->set_val = PyArray_DATA(val);
            }
        }
    }
    if (want_logits) {
        npy_intp ld[3] = {B, T_pad, c->d_vocab}, ll[2] = {B, c->d_vocab};
        logits = logits_last ? PyArray_EMPTY(2, ll, NPY_FLOAT32, 0) : PyArray_EMPTY(3, ld, NPY_FLOAT32, 0);
        if (!logits) goto done;
    }
    cb_ctx cbc = {m, lengths, B, T_pad, callbacks, names};
    cl_fwd_args fa = {
        .tokens = PyArray_DATA(tok), .lengths = lengths, .B = B, .T_pad = T_pad, .stop_at_layer = stop,
        .logits = logits ? PyArray_DATA((PyArrayObject *)logits) : NULL, .logits_last = logits_last, .slots = hooks != Py_None ? slots : NULL,
        .pos = pos ? PyArray_DATA(pos) : NULL, .P = P, .hook_fn = call_hook, .hook_ctx = &cbc,
        .cancel = {clpy_cancel_fn, NULL}, .kv = kvo ? kvo->kv : NULL,
    };
    cl_error err = {0};
    cl_status st;
    if (cl_model_check_files(m, &err)) { clpy_raise(&err); goto done; } /* mmap=True: a changed file is an error, not a SIGBUS */
    if (kvo) kvo->busy = 1;
    Py_BEGIN_ALLOW_THREADS
    st = cl_forward(m, &fa, &err);
    Py_END_ALLOW_THREADS
    if (kvo) kvo->busy = 0;
    if (st) { clpy_raise(&err); goto done; }
    result = Py_BuildValue("(OO)", logits ? logits : Py_None, cache);
done:
    free(slots);
    free(callbacks);
    free(names);
    Py_XDECREF(logits);
    Py_XDECREF(cache);
    Py_DECREF(keep);
    return result;
}

static PyObject *Model_get_path(ModelObject *self, void *unused) {
    if (!ready(self)) return NULL;
    return PyUnicode_DecodeFSDefault(PyBytes_AS_STRING(self->path));
}

static PyObject *Model_get_nbytes(ModelObject *self, void *unused) {
    if (!ready(self)) return NULL;
    return PyLong_FromSize_t(self->m->arena_floats * sizeof(float));
}

static PyMethodDef Model_methods[] = {
    {"config", (PyCFunction)Model_config, METH_NOARGS, "config() -> dict in TransformerLens names"},
    {"weight", (PyCFunction)Model_weight, METH_O, "weight(name) -> read-only float32 view"},
    {"hook_names", (PyCFunction)Model_hook_names, METH_NOARGS, "hook_names() -> list of hook names, in forward order"},
    {"forward", (PyCFunction)(void (*)(void))Model_forward, METH_VARARGS | METH_KEYWORDS,
     "forward(tokens, lengths, T_pad, logits=True, stop_at_layer=-1, hooks=None, pos=None, logits_last=False, kv=None) -> "
     "(logits, cache)"},
    {"kv_cache", (PyCFunction)(void (*)(void))Model_kv_cache, METH_VARARGS | METH_KEYWORDS,
     "kv_cache(batch, capacity=n_ctx) -> an empty KVCache for forward(kv=...)"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Model_getset[] = {
    {"path", (getter)Model_get_path, NULL, "checkpoint folder", NULL},
    {"arena_nbytes", (getter)Model_get_nbytes, NULL, "bytes of weights held outside the file mapping (all of them unless mmap=True)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject ModelType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "ctxlookup._core.Model",
    .tp_basicsize = sizeof(ModelObject),
    .tp_dealloc = (destructor)Model_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Model(path, fold_ln=False, center_writing_weights=False, center_unembed=False, fold_value_biases=False, mmap=False)",
    .tp_methods = Model_methods,
    .tp_getset = Model_getset,
    .tp_init = (initproc)Model_init,
    .tp_new = PyType_GenericNew,
};

const void *clpy_model_ptr(PyObject *obj) {
    if (!PyObject_TypeCheck(obj, &ModelType)) {
        PyErr_Format(PyExc_TypeError, "expected a ctxlookup._core.Model, got %s", Py_TYPE(obj)->tp_name);
        return NULL;
    }
    if (!ready((ModelObject *)obj)) return NULL;
    cl_error err = {0};
    if (cl_model_check_files(((ModelObject *)obj)->m, &err)) { clpy_raise(&err); return NULL; }
    return ((ModelObject *)obj)->m;
}

int clpy_model_register(PyObject *m) {
    if (PyType_Ready(&ModelType) < 0 || PyType_Ready(&KVCacheType) < 0) return -1;
    Py_INCREF(&KVCacheType);
    if (PyModule_AddObject(m, "KVCache", (PyObject *)&KVCacheType) < 0) { Py_DECREF(&KVCacheType); return -1; }
    Py_INCREF(&ModelType);
    if (PyModule_AddObject(m, "Model", (PyObject *)&ModelType) < 0) { Py_DECREF(&ModelType); return -1; }
    return 0;
}
