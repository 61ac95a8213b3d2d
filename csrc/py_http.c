/* py_http.c: the LLM client's engine as ctxlookup._core._llm_run, plus small entry points that let
 * tests reach the body builder and parsers. Request bodies are built (cl_llm) while the GIL is
 * held; the GIL is released for the whole run (cl_http); each finished request re-takes it to
 * hand a result dict to a Python callback, which writes the answer to the cache at once. The
 * API key travels only inside the header strings given here and is never put in a message.
 * Also the Hub client's transfers (cl_download) as ctxlookup._core._hub_fetch, and _sha256_file. */
#include "py_common.h"

#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cl_download.h"
#include "cl_http.h"
#include "cl_llm.h"
#include "cl_sha256.h"

static PyObject *new_ref(PyObject *o) {
    Py_INCREF(o);
    return o;
}

/* UTF-8 of a str member of a message dict; NULL with an exception if missing (when required),
 * not a str, or holding a NUL character; NULL without one when an optional member is missing. */
static const char *msg_field(PyObject *msg, const char *key, int required, size_t req_i, size_t msg_i) {
    PyObject *v = PyDict_GetItemString(msg, key);
    if (!v || v == Py_None) {
        if (required) PyErr_Format(PyExc_ValueError, "request %zu, message %zu: '%s' is missing", req_i, msg_i, key);
        return NULL;
    }
    if (!PyUnicode_Check(v)) {
        PyErr_Format(PyExc_TypeError, "request %zu, message %zu: '%s' must be a str, not %.80s", req_i, msg_i, key,
                     Py_TYPE(v)->tp_name);
        return NULL;
    }
    Py_ssize_t n;
    const char *s = PyUnicode_AsUTF8AndSize(v, &n);
    if (s && strlen(s) != (size_t)n) {
        PyErr_Format(PyExc_ValueError, "request %zu, message %zu: '%s' contains a NUL character", req_i, msg_i, key);
        return NULL;
    }
    return s;
}

/* One request spec (messages, max_tokens|None, temperature|None, extra_json|None) -> a body. */
static int build_body(PyObject *spec, size_t i, const char *model, const char *mt_field, char **body, size_t *len) {
    PyObject *msgs = NULL;
    cl_llm_message *cm = NULL;
    int rc = -1;
    PyObject *msgs_o, *mt_o, *temp_o, *extra_o;
    if (!PyTuple_Check(spec) || PyTuple_GET_SIZE(spec) != 4) {
        PyErr_Format(PyExc_TypeError, "request %zu must be a tuple (messages, max_tokens, temperature, extra_json)", i);
        return -1;
    }
    msgs_o = PyTuple_GET_ITEM(spec, 0);
    mt_o = PyTuple_GET_ITEM(spec, 1);
    temp_o = PyTuple_GET_ITEM(spec, 2);
    extra_o = PyTuple_GET_ITEM(spec, 3);
    cl_llm_request r = {.model = model, .max_tokens = -1, .max_tokens_field = mt_field, .temperature = NAN};
    if (mt_o != Py_None) {
        long v = PyLong_AsLong(mt_o);
        if (v == -1 && PyErr_Occurred()) goto done;
        if (v < 0 || v > 100000000) { PyErr_Format(PyExc_ValueError, "request %zu: max_tokens must be >= 0, got %ld", i, v); goto done; }
        r.max_tokens = (int)v;
    }
    if (temp_o != Py_None) {
        r.temperature = PyFloat_AsDouble(temp_o);
        if (r.temperature == -1.0 && PyErr_Occurred()) goto done;
        if (!isfinite(r.temperature)) { PyErr_Format(PyExc_ValueError, "request %zu: temperature must be finite", i); goto done; }
    }
    if (extra_o != Py_None) {
        if (!PyUnicode_Check(extra_o)) { PyErr_Format(PyExc_TypeError, "request %zu: extra_json must be a str or None", i); goto done; }
        if (!(r.extra_json = PyUnicode_AsUTF8(extra_o))) goto done;
    }
    msgs = PySequence_Fast(msgs_o, "messages must be a sequence of dicts");
    if (!msgs) goto done;
    Py_ssize_t nm = PySequence_Fast_GET_SIZE(msgs);
    if (nm < 1) { PyErr_Format(PyExc_ValueError, "request %zu has no messages", i); goto done; }
    cm = calloc((size_t)nm, sizeof *cm);
    if (!cm) { PyErr_NoMemory(); goto done; }
    for (Py_ssize_t k = 0; k < nm; k++) {
        PyObject *m = PySequence_Fast_GET_ITEM(msgs, k);
        if (!PyDict_Check(m)) { PyErr_Format(PyExc_TypeError, "request %zu, message %zd must be a dict", i, k); goto done; }
        if (!(cm[k].role = msg_field(m, "role", 1, i, (size_t)k))) goto done;
        if (!(cm[k].content = msg_field(m, "content", 1, i, (size_t)k))) goto done;
        cm[k].name = msg_field(m, "name", 0, i, (size_t)k);
        if (!cm[k].name && PyErr_Occurred()) goto done;
    }
    r.messages = cm;
    r.n_messages = (size_t)nm;
    cl_error err = {0};
    if (cl_llm_request_body(&r, body, len, &err)) {
        PyErr_Format(err.code == CL_ENOMEM ? PyExc_MemoryError : PyExc_ValueError, "request %zu: %s", i, err.msg);
        goto done;
    }
    rc = 0;
done:
    free(cm);
    Py_XDECREF(msgs);
    return rc;
}

typedef struct {
    PyObject *callback;
    cl_llm_response *parsed; /* per request: the accepted 2xx body, parsed by check */
} run_ctx;

/* 2xx body -> parsed response, or a retry when it is malformed (no GIL needed: pure C). */
static int check_body(void *vctx, size_t i, const cl_http_result *r, char *why, size_t why_len) {
    run_ctx *ctx = vctx;
    cl_error e = {0};
    cl_llm_response_free(&ctx->parsed[i]);
    if (cl_llm_response_parse(r->body, r->body_len, &ctx->parsed[i], &e)) {
        snprintf(why, why_len, "%s", e.msg);
        return CL_HTTP_RETRY;
    }
    return CL_HTTP_ACCEPT;
}

/* UTF-8 text from a server as str: lone surrogates (cl_llm_response_parse keeps a "\\ud800" escape as
 * its 3-byte form) come back as they were sent; other invalid bytes become U+FFFD. */
static PyObject *server_text(const char *v) {
    Py_ssize_t n = (Py_ssize_t)strlen(v);
    PyObject *o = PyUnicode_DecodeUTF8(v, n, "surrogatepass");
    if (o || !PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) return o;
    PyErr_Clear();
    return PyUnicode_DecodeUTF8(v, n, "replace");
}

static int set_str(PyObject *d, const char *k, const char *v) {
    PyObject *o = v ? server_text(v) : new_ref(Py_None);
    if (!o) return -1;
    int rc = PyDict_SetItemString(d, k, o);
    Py_DECREF(o);
    return rc;
}

static int set_obj(PyObject *d, const char *k, PyObject *o) { /* steals o */
    if (!o) return -1;
    int rc = PyDict_SetItemString(d, k, o);
    Py_DECREF(o);
    return rc;
}

static PyObject *usage_dict(const cl_llm_response *p) {
    if (!p->has_usage) Py_RETURN_NONE;
    PyObject *u = PyDict_New();
    if (!u) return NULL;
    const char *names[] = {"prompt_tokens", "completion_tokens", "total_tokens"};
    long vals[] = {p->prompt_tokens, p->completion_tokens, p->total_tokens};
    for (int k = 0; k < 3; k++)
        if (set_obj(u, names[k], vals[k] >= 0 ? PyLong_FromLong(vals[k]) : new_ref(Py_None)) < 0) { Py_DECREF(u); return NULL; }
    return u;
}

/* The result dict handed to Python:
 *   ok, status, attempts, seconds, retry_after (None when absent),
 *   content, finish_reason, model, usage {prompt_tokens, completion_tokens, total_tokens} | None,
 *   error: None | {kind: "http" | "transport" | "format", message, type, code, detail}. */
static PyObject *result_dict(const cl_http_result *r, const cl_llm_response *p) {
    PyObject *d = PyDict_New(), *e = NULL;
    cl_llm_response eb = {0};
    if (!d) return NULL;
    if (set_obj(d, "ok", PyBool_FromLong(r->ok)) < 0 || set_obj(d, "status", PyLong_FromLong(r->status)) < 0 ||
        set_obj(d, "attempts", PyLong_FromLong(r->attempts)) < 0 || set_obj(d, "seconds", PyFloat_FromDouble(r->seconds)) < 0 ||
        set_obj(d, "retry_after", r->retry_after_s >= 0 ? PyFloat_FromDouble(r->retry_after_s) : new_ref(Py_None)) < 0)
        goto fail;
    if (r->ok) {
        if (set_str(d, "content", p->content) < 0 || set_str(d, "finish_reason", p->finish_reason) < 0 ||
            set_str(d, "model", p->model) < 0 || set_obj(d, "usage", usage_dict(p)) < 0 ||
            set_obj(d, "error", new_ref(Py_None)) < 0)
            goto fail;
        return d;
    }
    if (set_str(d, "content", NULL) < 0 || set_str(d, "finish_reason", NULL) < 0 || set_str(d, "model", NULL) < 0 ||
        set_obj(d, "usage", new_ref(Py_None)) < 0)
        goto fail;
    if (!(e = PyDict_New())) goto fail;
    const char *kind = r->curl_code ? "transport" : (r->status >= 200 && r->status < 300) ? "format" : "http";
    if (set_str(e, "kind", kind) < 0) goto fail;
    if (!strcmp(kind, "http")) {
        cl_error err = {0};
        if (cl_llm_error_parse(r->body, r->body_len, &eb, &err)) { PyErr_NoMemory(); goto fail; }
        if (set_str(e, "message", eb.error_message) < 0 || set_str(e, "type", eb.error_type) < 0 ||
            set_str(e, "code", eb.error_code) < 0 || set_str(e, "detail", r->error[0] ? r->error : NULL) < 0)
            goto fail;
    } else { /* a 2xx the check refused (its error object, if any, is in p), or no response at all */
        const cl_llm_response *src = !strcmp(kind, "format") ? p : &eb;
        if (set_str(e, "message", r->error[0] ? r->error : NULL) < 0 || set_str(e, "type", src->error_type) < 0 ||
            set_str(e, "code", src->error_code) < 0 || set_str(e, "detail", NULL) < 0)
            goto fail;
    }
    if (PyDict_SetItemString(d, "error", e) < 0) goto fail;
    Py_DECREF(e);
    cl_llm_response_free(&eb);
    return d;
fail:
    cl_llm_response_free(&eb);
    Py_XDECREF(e);
    Py_DECREF(d);
    return NULL;
}

static cl_status on_done(void *vctx, size_t i, const cl_http_result *r, cl_error *err) {
    run_ctx *ctx = vctx;
    PyGILState_STATE gs = PyGILState_Ensure();
    cl_status st = CL_OK;
    PyObject *d = result_dict(r, &ctx->parsed[i]), *ret = NULL;
    cl_llm_response_free(&ctx->parsed[i]);
    if (!d) { st = CL_ECALLBACK; goto done; }
    ret = PyObject_CallFunction(ctx->callback, "nO", (Py_ssize_t)i, d);
    if (!ret) st = CL_ECALLBACK;
done:
    Py_XDECREF(ret);
    Py_XDECREF(d);
    PyGILState_Release(gs);
    if (st) cl_fail(err, st, "the result callback raised");
    return st;
}

static PyObject *stats_dict(const cl_http_stats *s, const cl_http_limiter *l) {
    return Py_BuildValue("{s:l,s:l,s:l,s:l,s:l,s:l,s:l,s:i,s:d,s:(ddd)}", "attempts", s->attempts, "retries", s->retries, "failed",
                         s->failed, "transport_errors", s->transport_errors, "rate_limited", s->rate_limited,
                         "server_errors", s->server_errors, "rejected", s->rejected, "max_in_flight", s->max_in_flight,
                         "seconds", s->seconds, "limiter", l->rpm_next, l->tpm_next, l->pause_until);
}

static PyObject *llm_run(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"url", "headers", "model", "requests", "callback", "concurrency", "rpm", "tpm", "timeout",
                             "connect_timeout", "max_retries", "backoff_base", "backoff_max", "retry_after_max", "seed",
                             "max_tokens_field", "tokens", "limiter", NULL};
    const char *url, *model, *mt_field = NULL;
    PyObject *headers_o, *reqs_o, *callback, *tokens_o = Py_None;
    cl_http_limiter lim = {0, 0, 0};
    unsigned long long seed = 0;
    cl_http_opts o = cl_http_opts_default();
    if (!PyArg_ParseTupleAndKeywords(args, kw, "sOsOO|$iddddidddKzO(ddd)", kwlist, &url, &headers_o, &model, &reqs_o, &callback,
                                     &o.concurrency, &o.rpm, &o.tpm, &o.timeout_s, &o.connect_timeout_s, &o.max_retries,
                                     &o.backoff_base_s, &o.backoff_max_s, &o.retry_after_max_s, &seed, &mt_field, &tokens_o,
                                     &lim.rpm_next, &lim.tpm_next, &lim.pause_until))
        return NULL;
    o.seed = seed;
    PyObject *headers = NULL, *reqs = NULL, *tokens = NULL, *result = NULL;
    const char **hdr = NULL;
    char **bodies = NULL;
    cl_http_req *cr = NULL;
    run_ctx ctx = {callback, NULL};
    size_t n = 0;
    if (!PyCallable_Check(callback)) { PyErr_SetString(PyExc_TypeError, "callback must be callable"); goto done; }
    if (!(headers = PySequence_Tuple(headers_o))) goto done; /* a tuple keeps the header strings alive */
    if (!(reqs = PySequence_Fast(reqs_o, "requests must be a sequence"))) goto done;
    n = (size_t)PySequence_Fast_GET_SIZE(reqs);
    if (tokens_o != Py_None) {
        if (!(tokens = PySequence_Fast(tokens_o, "tokens must be a sequence of numbers"))) goto done;
        if ((size_t)PySequence_Fast_GET_SIZE(tokens) != n) {
            PyErr_Format(PyExc_ValueError, "%zu requests but %zd token estimates", n, PySequence_Fast_GET_SIZE(tokens));
            goto done;
        }
    }
    size_t nh = (size_t)PyTuple_GET_SIZE(headers);
    hdr = calloc(nh ? nh : 1, sizeof *hdr);
    bodies = calloc(n ? n : 1, sizeof *bodies);
    cr = calloc(n ? n : 1, sizeof *cr);
    ctx.parsed = calloc(n ? n : 1, sizeof *ctx.parsed);
    if (!hdr || !bodies || !cr || !ctx.parsed) { PyErr_NoMemory(); goto done; }
    for (size_t k = 0; k < nh; k++) {
        PyObject *h = PyTuple_GET_ITEM(headers, k);
        if (!PyUnicode_Check(h)) { PyErr_Format(PyExc_TypeError, "header %zu must be a str", k); goto done; }
        if (!(hdr[k] = PyUnicode_AsUTF8(h))) goto done;
    }
    for (size_t i = 0; i < n; i++) {
        if (build_body(PySequence_Fast_GET_ITEM(reqs, i), i, model, mt_field, &bodies[i], &cr[i].body_len)) goto done;
        cr[i].url = url;
        cr[i].body = bodies[i];
        if (tokens) {
            cr[i].tokens = PyFloat_AsDouble(PySequence_Fast_GET_ITEM(tokens, i));
            if (cr[i].tokens == -1.0 && PyErr_Occurred()) goto done;
        }
    }
    cl_http_batch b = {
        .reqs = cr, .n = n, .headers = hdr, .n_headers = nh, .check = check_body, .done = on_done, .ctx = &ctx,
        .cancel = {clpy_cancel_fn, NULL}, .limiter = &lim,
    };
    cl_http_stats stats;
    cl_error err = {0};
    cl_status st;
    Py_BEGIN_ALLOW_THREADS
    st = cl_http_run(&o, &b, &stats, &err);
    Py_END_ALLOW_THREADS
    if (st) { clpy_raise(&err); goto done; }
    result = stats_dict(&stats, &lim);
done:
    if (ctx.parsed)
        for (size_t i = 0; i < n; i++) cl_llm_response_free(&ctx.parsed[i]);
    if (bodies)
        for (size_t i = 0; i < n; i++) cl_llm_free(bodies[i]);
    free(ctx.parsed);
    free(bodies);
    free(cr);
    free(hdr);
    Py_XDECREF(tokens);
    Py_XDECREF(reqs);
    Py_XDECREF(headers);
    return result;
}

/* _llm_body(model, messages, max_tokens=None, temperature=None, extra_json=None, max_tokens_field=None) -> str */
static PyObject *llm_body(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"model", "messages", "max_tokens", "temperature", "extra_json", "max_tokens_field", NULL};
    const char *model, *mt_field = NULL;
    PyObject *msgs, *mt = Py_None, *temp = Py_None, *extra = Py_None, *spec = NULL, *result = NULL;
    char *body = NULL;
    size_t len = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "sO|OOOz", kwlist, &model, &msgs, &mt, &temp, &extra, &mt_field)) return NULL;
    if (!(spec = PyTuple_Pack(4, msgs, mt, temp, extra))) goto done;
    if (build_body(spec, 0, model, mt_field, &body, &len)) goto done;
    result = PyUnicode_DecodeUTF8(body, (Py_ssize_t)len, "strict");
done:
    cl_llm_free(body);
    Py_XDECREF(spec);
    return result;
}

/* _llm_parse(body: bytes, error=False) -> dict; a malformed success body raises FormatError. */
static PyObject *llm_parse(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"body", "error", NULL};
    Py_buffer buf = {0};
    int error_body = 0;
    PyObject *result = NULL;
    cl_llm_response p = {0};
    cl_error err = {0};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "y*|p", kwlist, &buf, &error_body)) return NULL;
    cl_status st = error_body ? cl_llm_error_parse(buf.buf, (size_t)buf.len, &p, &err)
                              : cl_llm_response_parse(buf.buf, (size_t)buf.len, &p, &err);
    if (st) { clpy_raise(&err); goto done; }
    if (!(result = PyDict_New())) goto done;
    if (set_str(result, "content", p.content) < 0 || set_str(result, "finish_reason", p.finish_reason) < 0 ||
        set_str(result, "model", p.model) < 0 || set_obj(result, "usage", usage_dict(&p)) < 0 ||
        set_str(result, "error_message", p.error_message) < 0 || set_str(result, "error_type", p.error_type) < 0 ||
        set_str(result, "error_code", p.error_code) < 0)
        Py_CLEAR(result);
done:
    cl_llm_response_free(&p);
    PyBuffer_Release(&buf);
    return result;
}

static PyObject *http_retry_after(PyObject *self, PyObject *arg) {
    const char *s = PyUnicode_AsUTF8(arg);
    if (!s) return NULL;
    double v = cl_http_parse_retry_after(s);
    if (v < 0) Py_RETURN_NONE;
    return PyFloat_FromDouble(v);
}

/* ---- Hub downloads ---- */

typedef struct {
    PyObject *callback; /* progress(received, finished) or NULL */
} fetch_ctx;

static cl_status fetch_progress(void *vctx, int64_t received, size_t finished, cl_error *err) {
    fetch_ctx *ctx = vctx;
    PyGILState_STATE gs = PyGILState_Ensure();
    PyObject *ret = PyObject_CallFunction(ctx->callback, "Ln", (long long)received, (Py_ssize_t)finished);
    cl_status st = ret ? CL_OK : CL_ECALLBACK;
    Py_XDECREF(ret);
    PyGILState_Release(gs);
    if (st) cl_fail(err, st, "the progress callback raised");
    return st;
}

static int set_i64(PyObject *d, const char *k, int64_t v) { return set_obj(d, k, PyLong_FromLongLong((long long)v)); }

/* One cl_dl_result -> dict (see _hub_fetch's docstring). */
static PyObject *fetch_result_dict(const cl_dl_result *r) {
    PyObject *d = PyDict_New();
    if (!d) return NULL;
    const char *failure = r->failure == CL_DL_NONE ? NULL : cl_dl_failure_name(r->failure);
    if (set_obj(d, "ok", PyBool_FromLong(r->ok)) < 0 || set_str(d, "failure", failure) < 0 ||
        set_obj(d, "status", PyLong_FromLong(r->status)) < 0 || set_obj(d, "curl_code", PyLong_FromLong(r->curl_code)) < 0 ||
        set_obj(d, "attempts", PyLong_FromLong(r->attempts)) < 0 ||
        set_obj(d, "range_attempts", PyLong_FromLong(r->range_attempts)) < 0 ||
        set_i64(d, "resumed_from", r->resumed_from) < 0 || set_i64(d, "bytes", r->bytes) < 0 ||
        set_i64(d, "received", r->received) < 0 || set_obj(d, "seconds", PyFloat_FromDouble(r->seconds)) < 0 ||
        set_str(d, "error", r->error[0] ? r->error : NULL) < 0 || set_str(d, "commit", r->commit[0] ? r->commit : NULL) < 0 ||
        set_str(d, "etag", r->etag[0] ? r->etag : NULL) < 0 ||
        set_str(d, "linked_etag", r->linked_etag[0] ? r->linked_etag : NULL) < 0 ||
        set_obj(d, "linked_size", r->linked_size >= 0 ? PyLong_FromLongLong((long long)r->linked_size) : new_ref(Py_None)) < 0 ||
        set_obj(d, "content_length",
                r->content_length >= 0 ? PyLong_FromLongLong((long long)r->content_length) : new_ref(Py_None)) < 0 ||
        set_str(d, "error_code", r->error_code[0] ? r->error_code : NULL) < 0 ||
        set_str(d, "error_message", r->error_message[0] ? r->error_message : NULL) < 0 ||
        set_str(d, "location", r->location) < 0 || set_str(d, "url", r->url) < 0) {
        Py_DECREF(d);
        return NULL;
    }
    return d;
}

/* Optional path member of a request tuple: None -> NULL; else new bytes in *keep. */
static int fetch_path(PyObject *o, PyObject **keep, const char **out) {
    *out = NULL;
    if (o == Py_None) return 0;
    if (!PyUnicode_FSConverter(o, keep)) return -1;
    *out = PyBytes_AS_STRING(*keep);
    return 0;
}

static PyObject *hub_fetch(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"requests", "headers", "progress", "concurrency", "connect_timeout", "stall_timeout",
                             "head_timeout", "max_retries", "max_connect_retries", "backoff_base", "backoff_max",
                             "retry_after_max", "max_redirects", "seed", NULL};
    PyObject *reqs_o, *headers_o = NULL, *progress = Py_None;
    unsigned long long seed = 0;
    cl_dl_opts o = cl_dl_opts_default();
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|O$OidddiiddiiK", kwlist, &reqs_o, &headers_o, &progress, &o.concurrency,
                                     &o.connect_timeout_s, &o.stall_timeout_s, &o.head_timeout_s, &o.max_retries,
                                     &o.max_connect_retries, &o.backoff_base_s, &o.backoff_max_s, &o.retry_after_max_s,
                                     &o.max_redirects, &seed))
        return NULL;
    o.seed = seed;
    PyObject *reqs = NULL, *headers = NULL, *keep = NULL, *result = NULL;
    const char **hdr = NULL;
    cl_dl_req *cr = NULL;
    cl_dl_result *res = NULL;
    size_t n = 0, nh = 0;
    fetch_ctx ctx = {progress == Py_None ? NULL : progress};
    if (ctx.callback && !PyCallable_Check(ctx.callback)) { PyErr_SetString(PyExc_TypeError, "progress must be callable or None"); goto done; }
    if (!(reqs = PySequence_Fast(reqs_o, "requests must be a sequence of tuples"))) goto done;
    if (!(headers = headers_o && headers_o != Py_None ? PySequence_Tuple(headers_o) : PyTuple_New(0))) goto done;
    if (!(keep = PyList_New(0))) goto done; /* keeps the encoded paths alive */
    n = (size_t)PySequence_Fast_GET_SIZE(reqs);
    nh = (size_t)PyTuple_GET_SIZE(headers);
    hdr = calloc(nh ? nh : 1, sizeof *hdr);
    cr = calloc(n ? n : 1, sizeof *cr);
    res = calloc(n ? n : 1, sizeof *res);
    if (!hdr || !cr || !res) { PyErr_NoMemory(); goto done; }
    for (size_t k = 0; k < nh; k++) {
        PyObject *h = PyTuple_GET_ITEM(headers, k);
        if (!PyUnicode_Check(h)) { PyErr_Format(PyExc_TypeError, "header %zu must be a str", k); goto done; }
        if (!(hdr[k] = PyUnicode_AsUTF8(h))) goto done;
    }
    for (size_t i = 0; i < n; i++) {
        PyObject *t = PySequence_Fast_GET_ITEM(reqs, i);
        if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) != 7) {
            PyErr_Format(PyExc_TypeError, "request %zu must be a tuple (method, url, auth, part_path, final_path, size, sha256)", i);
            goto done;
        }
        const char *method = PyUnicode_Check(PyTuple_GET_ITEM(t, 0)) ? PyUnicode_AsUTF8(PyTuple_GET_ITEM(t, 0)) : NULL;
        if (!method || (strcmp(method, "HEAD") && strcmp(method, "GET"))) {
            if (!PyErr_Occurred()) PyErr_Format(PyExc_ValueError, "request %zu: method must be 'HEAD' or 'GET'", i);
            goto done;
        }
        cr[i].head = !strcmp(method, "HEAD");
        PyObject *url = PyTuple_GET_ITEM(t, 1);
        if (!PyUnicode_Check(url)) { PyErr_Format(PyExc_TypeError, "request %zu: url must be a str", i); goto done; }
        if (!(cr[i].url = PyUnicode_AsUTF8(url))) goto done;
        int auth = PyObject_IsTrue(PyTuple_GET_ITEM(t, 2));
        if (auth < 0) goto done;
        cr[i].auth = auth;
        for (int k = 0; k < 2; k++) {
            PyObject *b = NULL;
            if (fetch_path(PyTuple_GET_ITEM(t, 3 + k), &b, k ? &cr[i].final_path : &cr[i].part_path) < 0) goto done;
            if (b) { /* the list keeps the bytes (and the pointer into them) alive */
                int rc = PyList_Append(keep, b);
                Py_DECREF(b);
                if (rc < 0) goto done;
            }
        }
        PyObject *size = PyTuple_GET_ITEM(t, 5);
        if (size == Py_None) cr[i].size = -1;
        else {
            long long v = PyLong_AsLongLong(size);
            if (v == -1 && PyErr_Occurred()) goto done;
            cr[i].size = v < 0 ? -1 : (int64_t)v;
        }
        PyObject *sha = PyTuple_GET_ITEM(t, 6);
        if (sha != Py_None) {
            if (!PyUnicode_Check(sha)) { PyErr_Format(PyExc_TypeError, "request %zu: sha256 must be a str or None", i); goto done; }
            if (!(cr[i].sha256 = PyUnicode_AsUTF8(sha))) goto done;
        }
    }
    cl_dl_batch b = {
        .reqs = cr, .n = n, .headers = hdr, .n_headers = nh, .results = res,
        .progress = ctx.callback ? fetch_progress : NULL, .ctx = &ctx, .cancel = {clpy_cancel_fn, NULL},
    };
    cl_error err = {0};
    cl_status st;
    Py_BEGIN_ALLOW_THREADS
    st = cl_download_run(&o, &b, &err);
    Py_END_ALLOW_THREADS
    if (st) { clpy_raise(&err); goto done; }
    if (!(result = PyList_New((Py_ssize_t)n))) goto done;
    for (size_t i = 0; i < n; i++) {
        PyObject *d = fetch_result_dict(&res[i]);
        if (!d) { Py_CLEAR(result); goto done; }
        PyList_SET_ITEM(result, (Py_ssize_t)i, d);
    }
done:
    cl_dl_results_free(res, n);
    free(res);
    free(cr);
    free(hdr);
    Py_XDECREF(keep);
    Py_XDECREF(headers);
    Py_XDECREF(reqs);
    return result;
}

/* _sha256_file(path) -> hex digest; the GIL is released while reading, and Ctrl-C stops it. */
static PyObject *sha256_file(PyObject *self, PyObject *arg) {
    PyObject *path = NULL, *result = NULL;
    if (!PyUnicode_FSConverter(arg, &path)) return NULL;
    int fd = open(PyBytes_AS_STRING(path), O_RDONLY | O_CLOEXEC);
    struct stat sb;
    if (fd < 0 || fstat(fd, &sb)) {
        PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, arg);
        goto done;
    }
    cl_sha256 s;
    cl_error err = {0};
    cl_status st;
    unsigned char d[32];
    char hex[65];
    cl_sha256_init(&s);
    cl_cancel cancel = {clpy_cancel_fn, NULL};
    Py_BEGIN_ALLOW_THREADS
    st = cl_sha256_fd(&s, fd, (uint64_t)sb.st_size, &cancel, &err);
    Py_END_ALLOW_THREADS
    if (st) { clpy_raise(&err); goto done; }
    cl_sha256_final(&s, d);
    cl_sha256_hex(d, hex);
    result = PyUnicode_FromString(hex);
done:
    if (fd >= 0) close(fd);
    Py_XDECREF(path);
    return result;
}

static PyMethodDef http_methods[] = {
    {"_llm_run", (PyCFunction)(void (*)(void))llm_run, METH_VARARGS | METH_KEYWORDS,
     "_llm_run(url, headers, model, requests, callback, *, concurrency, rpm, tpm, timeout, connect_timeout, "
     "max_retries, backoff_base, backoff_max, retry_after_max, seed, max_tokens_field, tokens, limiter) -> stats dict.\n"
     "requests: [(messages, max_tokens|None, temperature|None, extra_json|None)]; callback(index, result) is called "
     "as each request ends. Used by ctxlookup.llm.Client."},
    {"_llm_body", (PyCFunction)(void (*)(void))llm_body, METH_VARARGS | METH_KEYWORDS,
     "_llm_body(model, messages, max_tokens=None, temperature=None, extra_json=None, max_tokens_field=None) -> JSON str"},
    {"_llm_parse", (PyCFunction)(void (*)(void))llm_parse, METH_VARARGS | METH_KEYWORDS,
     "_llm_parse(body, error=False) -> dict (content, finish_reason, model, usage, error_message, error_type, error_code)"},
    {"_http_retry_after", http_retry_after, METH_O, "_http_retry_after(value) -> seconds or None"},
    {"_hub_fetch", (PyCFunction)(void (*)(void))hub_fetch, METH_VARARGS | METH_KEYWORDS,
     "_hub_fetch(requests, headers=(), *, progress=None, concurrency=8, connect_timeout=10, stall_timeout=30, "
     "head_timeout=30, max_retries=5, max_connect_retries=2, backoff_base=1.0, backoff_max=30, retry_after_max=120, "
     "max_redirects=10, seed=0) -> [dict].\n"
     "requests: [(method 'HEAD'|'GET', url, auth, part_path|None, final_path|None, size|None, sha256|None)]; headers are "
     "sent with auth requests only. HEAD follows same-origin redirects and reports a cross-origin one as 'location'. GET "
     "resumes part_path with a Range, checks size and sha256, then renames it to final_path. The GIL is released; "
     "progress(received_bytes, finished_requests) is called at most every 0.1 s; Ctrl-C stops (partial files stay). "
     "Each dict: ok, failure (None|'http'|'network'|'timeout'|'size'|'hash'|'disk'|'io'|'cancelled'), status, curl_code, "
     "attempts, range_attempts, resumed_from, bytes, received, seconds, error, commit, etag, linked_etag, linked_size, "
     "content_length, error_code, error_message, location, url. Used by ctxlookup.hub."},
    {"_sha256_file", sha256_file, METH_O, "_sha256_file(path) -> lowercase hex sha256 of the file"},
    {NULL, NULL, 0, NULL},
};

int clpy_http_register(PyObject *m) { return PyModule_AddFunctions(m, http_methods); }
