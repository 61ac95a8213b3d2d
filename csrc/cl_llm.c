/* cl_llm.c: chat-completion request and response bodies with cJSON. No networking, no Python. */
#include "cl_llm.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void cl_llm_free(void *p) { cJSON_free(p); }

static char *dup_str(const char *s) {
    size_t n = strlen(s);
    char *d = malloc(n + 1);
    if (d) memcpy(d, s, n + 1);
    return d;
}

#define TRY_ALLOC(x) do { if (!(x)) { st = cl_fail(err, CL_ENOMEM, "llm: out of memory"); goto done; } } while (0)

cl_status cl_llm_request_body(const cl_llm_request *r, char **body, size_t *len, cl_error *err) {
    *body = NULL;
    if (len) *len = 0;
    cl_status st = CL_OK;
    cJSON *root = NULL, *extra = NULL;
    if (!r->model || !*r->model) return cl_fail(err, CL_EINVAL, "llm: a model name is required");
    if (!r->n_messages || !r->messages) return cl_fail(err, CL_EINVAL, "llm: at least one message is required");
    const char *mt = r->max_tokens_field && *r->max_tokens_field ? r->max_tokens_field : "max_tokens";
    TRY_ALLOC(root = cJSON_CreateObject());
    TRY_ALLOC(cJSON_AddStringToObject(root, "model", r->model));
    cJSON *msgs;
    TRY_ALLOC(msgs = cJSON_AddArrayToObject(root, "messages"));
    for (size_t i = 0; i < r->n_messages; i++) {
        const cl_llm_message *m = &r->messages[i];
        if (!m->role || !*m->role || !m->content) {
            st = cl_fail(err, CL_EINVAL, "llm: message %zu needs a role and a content", i);
            goto done;
        }
        cJSON *o;
        TRY_ALLOC(o = cJSON_CreateObject());
        cJSON_AddItemToArray(msgs, o);
        TRY_ALLOC(cJSON_AddStringToObject(o, "role", m->role));
        TRY_ALLOC(cJSON_AddStringToObject(o, "content", m->content));
        if (m->name) TRY_ALLOC(cJSON_AddStringToObject(o, "name", m->name));
    }
    if (r->max_tokens >= 0) TRY_ALLOC(cJSON_AddNumberToObject(root, mt, r->max_tokens));
    if (!isnan(r->temperature)) TRY_ALLOC(cJSON_AddNumberToObject(root, "temperature", r->temperature));
    if (r->extra_json && *r->extra_json) {
        const char *ep = NULL;
        extra = cJSON_ParseWithOpts(r->extra_json, &ep, 1);
        if (!extra || !cJSON_IsObject(extra)) {
            st = cl_fail(err, CL_EINVAL, "llm: extra parameters are not a JSON object");
            goto done;
        }
        while (extra->child) {
            cJSON *item = cJSON_DetachItemViaPointer(extra, extra->child);
            if (!item->string || cJSON_GetObjectItemCaseSensitive(root, item->string)) {
                st = cl_fail(err, CL_EINVAL, "llm: parameter '%s' is set twice", item->string ? item->string : "?");
                cJSON_Delete(item);
                goto done;
            }
            cJSON_AddItemToObject(root, item->string, item);
        }
    }
    char *s = cJSON_PrintUnformatted(root);
    TRY_ALLOC(s);
    *body = s;
    if (len) *len = strlen(s);
done:
    cJSON_Delete(extra);
    cJSON_Delete(root);
    return st;
}

/* ---- responses ---- */

static const cJSON *get(const cJSON *o, const char *k) { return cJSON_GetObjectItemCaseSensitive(o, k); }

/* String or number member -> new string (NULL when absent or of another type). */
static int take_str(const cJSON *o, const char *k, char **out) {
    const cJSON *x = o ? get(o, k) : NULL;
    char num[64];
    const char *s = NULL;
    if (cJSON_IsString(x) && x->valuestring) s = x->valuestring;
    else if (cJSON_IsNumber(x)) {
        snprintf(num, sizeof num, "%.17g", x->valuedouble);
        s = num;
    }
    if (!s) return 1;
    *out = dup_str(s);
    return *out != NULL;
}

static long take_long(const cJSON *o, const char *k) {
    const cJSON *x = o ? get(o, k) : NULL;
    if (!cJSON_IsNumber(x) || !(x->valuedouble >= 0) || x->valuedouble > 1e15) return -1;
    return (long)x->valuedouble;
}

/* The first 200 printable characters of a non-JSON body, so an HTML error page reads as text. */
static char *text_excerpt(const char *body, size_t len) {
    size_t cap = 200, n = 0;
    char *s = malloc(cap + 4);
    if (!s) return NULL;
    for (size_t i = 0; i < len && n < cap; i++) {
        unsigned char c = (unsigned char)body[i];
        if (c == '\r' || c == '\n' || c == '\t') c = ' ';
        if (c < 0x20 || c == 0x7f) continue;
        if (c == ' ' && n && s[n - 1] == ' ') continue;
        s[n++] = (char)c;
    }
    while (n && s[n - 1] == ' ') n--;
    if (n == cap && len > cap) { memcpy(s + n, "...", 3); n += 3; }
    s[n] = '\0';
    return s;
}

/* Fill the error fields from a parsed body; returns 1 if it looked like an error, -1 on ENOMEM. */
static int read_error(const cJSON *root, cl_llm_response *out) {
    const cJSON *e = get(root, "error");
    const cJSON *src = NULL;
    if (cJSON_IsObject(e)) src = e;
    else if (cJSON_IsString(e)) {
        if (!(out->error_message = dup_str(e->valuestring))) return -1;
        return 1;
    } else if (get(root, "message") && (get(root, "object") || get(root, "type") || get(root, "code"))) src = root;
    else if (get(root, "detail")) {
        const cJSON *d = get(root, "detail");
        if (cJSON_IsString(d)) out->error_message = dup_str(d->valuestring);
        else {
            char *p = cJSON_PrintUnformatted(d);
            if (p) { out->error_message = dup_str(p); cJSON_free(p); }
        }
        return out->error_message ? 1 : -1;
    }
    if (!src) return 0;
    if (!take_str(src, "message", &out->error_message) || !take_str(src, "type", &out->error_type) ||
        !take_str(src, "code", &out->error_code))
        return -1;
    return 1;
}

static int hex4(const char *p, const char *end, unsigned *v) {
    if (end - p < 4) return 0;
    unsigned x = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        x <<= 4;
        if (c >= '0' && c <= '9') x |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f') x |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') x |= (unsigned)(c - 'A' + 10);
        else return 0;
    }
    *v = x;
    return 1;
}

/* JSON allows a lone UTF-16 surrogate escape ("\ud800"), which cJSON rejects, and a model can send
 * one (a split emoji, say). Rewrites a copy of body[len] with each lone surrogate escape inside a
 * string as its 3-byte generalized UTF-8 form (ED A0 80 for U+D800), which cJSON passes through and
 * the binding decodes with "surrogatepass", so the answer is kept exactly. Returns NULL when body
 * has no lone surrogate (or on out of memory: the caller then parses the original). */
static char *wtf8_lone_surrogates(const char *body, size_t len, size_t *out_len) {
    const char *end = body + len;
    char *out = NULL;
    size_t n = 0;
    int in_str = 0;
    for (const char *p = body; p < end; p++) {
        char c = *p;
        const char *copy = p;
        size_t copy_n = 1;
        unsigned u = 0, lo = 0;
        if (!in_str) {
            if (c == '"') in_str = 1;
        } else if (c == '"') {
            in_str = 0;
        } else if (c == '\\' && p + 1 < end) {
            if (p[1] == 'u' && hex4(p + 2, end, &u) && u >= 0xD800 && u <= 0xDFFF) {
                int pair = u <= 0xDBFF && end - (p + 6) >= 6 && p[6] == '\\' && p[7] == 'u' && hex4(p + 8, end, &lo) &&
                           lo >= 0xDC00 && lo <= 0xDFFF;
                if (!pair) {
                    if (!out) {  /* first lone surrogate: start the copy with what came before */
                        out = malloc(len + 1);
                        if (!out) return NULL;
                        memcpy(out, body, (size_t)(p - body));
                        n = (size_t)(p - body);
                    }
                    out[n++] = (char)(0xE0 | (u >> 12));
                    out[n++] = (char)(0x80 | ((u >> 6) & 0x3F));
                    out[n++] = (char)(0x80 | (u & 0x3F));
                    p += 5;
                    continue;
                }
                copy_n = 12;  /* a valid pair: both escapes as they are */
            } else {
                copy_n = 2;   /* any other escape, \\ and \" included */
            }
        }
        if (copy + copy_n > end) copy_n = (size_t)(end - copy);
        if (out) memcpy(out + n, copy, copy_n);
        n += copy_n;
        p += copy_n - 1;
    }
    if (out) { out[n] = 0; *out_len = n; }
    return out;
}

cl_status cl_llm_response_parse(const char *body, size_t len, cl_llm_response *out, cl_error *err) {
    memset(out, 0, sizeof *out);
    out->prompt_tokens = out->completion_tokens = out->total_tokens = -1;
    cl_status st = CL_OK;
    const char *ep = NULL;
    size_t fixed_len = 0;
    char *fixed = wtf8_lone_surrogates(body, len, &fixed_len);
    if (fixed) { body = fixed; len = fixed_len; }
    cJSON *root = cJSON_ParseWithLengthOpts(body, len, &ep, 0);
    if (!root || !cJSON_IsObject(root)) {
        if (!root) st = cl_fail(err, CL_EFORMAT, "invalid JSON near byte %ld of %zu", ep ? (long)(ep - body) : -1L, len);
        else st = cl_fail(err, CL_EFORMAT, "the body is JSON but not an object");
        goto done;
    }
    int e = read_error(root, out);
    if (e < 0) { st = cl_fail(err, CL_ENOMEM, "llm: out of memory"); goto done; }
    const cJSON *choices = get(root, "choices");
    const cJSON *c0 = cJSON_IsArray(choices) ? cJSON_GetArrayItem(choices, 0) : NULL;
    const cJSON *msg = cJSON_IsObject(c0) ? get(c0, "message") : NULL;
    if (!cJSON_IsObject(msg)) {
        if (e > 0) st = cl_fail(err, CL_EFORMAT, "the server sent an error: %s", out->error_message ? out->error_message : "(no message)");
        else st = cl_fail(err, CL_EFORMAT, "no choices[0].message in the response");
        goto done;
    }
    const cJSON *content = get(msg, "content");
    if (cJSON_IsString(content)) TRY_ALLOC(out->content = dup_str(content->valuestring));
    else if (content && !cJSON_IsNull(content)) {
        st = cl_fail(err, CL_EFORMAT, "choices[0].message.content is neither a string nor null");
        goto done;
    }
    TRY_ALLOC(take_str(c0, "finish_reason", &out->finish_reason));
    TRY_ALLOC(take_str(root, "model", &out->model));
    const cJSON *u = get(root, "usage");
    if (cJSON_IsObject(u)) {
        out->has_usage = 1;
        out->prompt_tokens = take_long(u, "prompt_tokens");
        out->completion_tokens = take_long(u, "completion_tokens");
        out->total_tokens = take_long(u, "total_tokens");
        if (out->total_tokens < 0 && out->prompt_tokens >= 0 && out->completion_tokens >= 0)
            out->total_tokens = out->prompt_tokens + out->completion_tokens;
    }
done:
    cJSON_Delete(root);
    free(fixed);
    return st;
}

cl_status cl_llm_error_parse(const char *body, size_t len, cl_llm_response *out, cl_error *err) {
    memset(out, 0, sizeof *out);
    out->prompt_tokens = out->completion_tokens = out->total_tokens = -1;
    cl_status st = CL_OK;
    cJSON *root = cJSON_ParseWithLengthOpts(body, len, NULL, 0);
    int e = root && cJSON_IsObject(root) ? read_error(root, out) : 0;
    if (e < 0) { st = cl_fail(err, CL_ENOMEM, "llm: out of memory"); goto done; }
    if (e == 0 && len) TRY_ALLOC(out->error_message = text_excerpt(body, len));
done:
    cJSON_Delete(root);
    return st;
}

void cl_llm_response_free(cl_llm_response *r) {
    if (!r) return;
    free(r->content);
    free(r->finish_reason);
    free(r->model);
    free(r->error_message);
    free(r->error_type);
    free(r->error_code);
    memset(r, 0, sizeof *r);
}
