/* cl_http.c: the concurrent HTTP engine over the libcurl multi interface. One thread drives every
 * transfer: each round it starts what the concurrency cap, the limiter gates and the backoff
 * schedule allow, lets libcurl move data, finishes completed attempts (accept, retry later, or
 * fail), and sleeps in curl_multi_poll until the next event or wake-up time. No JSON here. */
#include "cl_http.h"

#include <curl/curl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#if LIBCURL_VERSION_NUM < 0x074200
#error "ctxlookup needs libcurl >= 7.66 (curl_multi_poll)"
#endif

#define MAX_BODY ((size_t)64 << 20) /* a larger response fails the request (not retried) */
#define MAX_CONCURRENCY 4096

cl_http_opts cl_http_opts_default(void) {
    cl_http_opts o = {
        .concurrency = 16, .rpm = 0, .tpm = 0, .timeout_s = 120, .connect_timeout_s = 15, .max_retries = 6,
        .backoff_base_s = 1.0, .backoff_max_s = 60, .retry_after_max_s = 300, .seed = 0,
    };
    return o;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

double cl_http_now(void) { return now_s(); }

/* ---- small pieces ---- */

typedef struct {
    char *p;
    size_t n, cap;
    int too_big;
} buf;

/* One transfer slot: an easy handle reused across attempts, and the current attempt's state. */
typedef struct {
    CURL *easy;
    int busy;
    size_t idx;
    buf body;
    double retry_after, retry_after_ms;
    char errbuf[CURL_ERROR_SIZE];
} slot;

typedef struct {
    int attempts;
    double t_first;
} req_state;

/* GCRA-style gate: `tat` is when the next unit may go; each start pushes it by its cost. While
 * busy, lateness of less than one start's cost is carried over (a slow loop does not lose rate);
 * after an idle period the schedule restarts from now (no banked burst). So over any window W
 * the starts number at most W / per_unit + 2, and the long-run rate is the limit exactly. */
typedef struct {
    double per_unit; /* seconds per unit; 0 = open */
    double tat;
} gate;

static double gate_wait(const gate *g, double now) { return g->per_unit > 0 && g->tat > now ? g->tat - now : 0; }

static void gate_take(gate *g, double now, double units) {
    if (g->per_unit <= 0) return;
    double cost = units * g->per_unit;
    if (g->tat < now - cost || (cost == 0 && g->tat < now)) g->tat = now;
    g->tat += cost;
}

static uint64_t rng_next(uint64_t *s) { /* xorshift64* */
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545F4914F6CDD1DULL;
}

static double rng_unit(uint64_t *s) { return (double)(rng_next(s) >> 11) * (1.0 / 9007199254740992.0); }

uint64_t cl_http_seed(uint64_t seed) {
    if (seed) return seed;
    double t = now_s();
    uint64_t s = ((uint64_t)time(NULL) << 20) ^ (uint64_t)(t * 1e9) ^ 0x9E3779B97F4A7C15ULL;
    return s ? s : 1;
}

double cl_http_backoff(double base_s, double max_s, int attempts, uint64_t *rng) {
    double delay = base_s * ldexp(1.0, attempts - 1);
    if (delay > max_s) delay = max_s;
    return delay * (0.5 + 0.5 * rng_unit(rng));
}

double cl_http_jitter(uint64_t *rng) { return rng_unit(rng); }

static size_t on_body(char *p, size_t size, size_t nmemb, void *ud) {
    slot *s = ud;
    size_t n = size * nmemb;
    if (s->body.n + n > MAX_BODY) { s->body.too_big = 1; return 0; }
    if (s->body.n + n + 1 > s->body.cap) {
        size_t cap = s->body.cap ? s->body.cap : 4096;
        while (cap < s->body.n + n + 1) cap *= 2;
        char *q = realloc(s->body.p, cap);
        if (!q) return 0;
        s->body.p = q;
        s->body.cap = cap;
    }
    memcpy(s->body.p + s->body.n, p, n);
    s->body.n += n;
    s->body.p[s->body.n] = '\0';
    return n;
}

double cl_http_parse_retry_after(const char *value) {
    char tmp[128];
    size_t n = 0;
    while (*value == ' ' || *value == '\t') value++;
    while (value[n] && value[n] != '\r' && value[n] != '\n' && n < sizeof tmp - 1) { tmp[n] = value[n]; n++; }
    while (n && (tmp[n - 1] == ' ' || tmp[n - 1] == '\t')) n--;
    tmp[n] = '\0';
    if (!n) return -1;
    char *end = NULL;
    double v = strtod(tmp, &end);
    if (end && *end == '\0') return isfinite(v) && v >= 0 ? v : -1;
    time_t t = curl_getdate(tmp, NULL); /* HTTP-date */
    if (t == (time_t)-1) return -1;
    double d = difftime(t, time(NULL));
    return d > 0 ? d : 0;
}

int cl_http_header_value(const char *p, size_t n, const char *name, const char **value) {
    size_t k = strlen(name);
    if (n <= k || strncasecmp(p, name, k) || p[k] != ':') return 0;
    *value = p + k + 1;
    return 1;
}

static size_t on_header(char *p, size_t size, size_t nmemb, void *ud) {
    slot *s = ud;
    size_t n = size * nmemb;
    const char *v;
    char line[160];
    if (n >= 5 && !strncasecmp(p, "HTTP/", 5)) { /* a new response (after a 100 Continue, say) */
        s->retry_after = s->retry_after_ms = -1;
        return n;
    }
    size_t m = n < sizeof line - 1 ? n : sizeof line - 1;
    memcpy(line, p, m);
    line[m] = '\0';
    if (cl_http_header_value(line, m, "retry-after-ms", &v)) {
        double ms = cl_http_parse_retry_after(v);
        if (ms >= 0) s->retry_after_ms = ms;
    } else if (cl_http_header_value(line, m, "retry-after", &v)) {
        s->retry_after = cl_http_parse_retry_after(v);
    }
    return n;
}

int cl_http_retryable_curl(int code) {
    switch ((CURLcode)code) {
    case CURLE_COULDNT_RESOLVE_PROXY:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_CONNECT:
    case CURLE_OPERATION_TIMEDOUT:
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_PARTIAL_FILE:
    case CURLE_WEIRD_SERVER_REPLY:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
        return 1;
    default:
        return 0;
    }
}

int cl_http_retryable_status(long s) { return s == 408 || s == 409 || s == 429 || s >= 500; }

/* libcurl copies header lines; overwrite those copies (they hold the API key) before freeing. */
cl_status cl_http_easy_new(void **easy, void *priv, cl_http_write_fn on_body, cl_http_write_fn on_header,
                           char *errbuf, const char *user_agent, double connect_timeout_s, cl_error *err) {
    CURL *e = curl_easy_init();
    *easy = e;
    if (!e) return cl_fail(err, CL_EHTTP, "libcurl: could not create a transfer handle");
    CURLcode c = CURLE_OK;
#define SET(opt, val) do { if (!c) c = curl_easy_setopt(e, opt, val); } while (0)
    SET(CURLOPT_NOSIGNAL, 1L);
    SET(CURLOPT_PRIVATE, priv);
    SET(CURLOPT_WRITEFUNCTION, on_body);
    SET(CURLOPT_WRITEDATA, priv);
    SET(CURLOPT_HEADERFUNCTION, on_header);
    SET(CURLOPT_HEADERDATA, priv);
    SET(CURLOPT_ERRORBUFFER, errbuf);
    SET(CURLOPT_USERAGENT, user_agent);
    SET(CURLOPT_TCP_KEEPALIVE, 1L);
    if (connect_timeout_s > 0) SET(CURLOPT_CONNECTTIMEOUT_MS, (long)ceil(connect_timeout_s * 1000));
#if LIBCURL_VERSION_NUM >= 0x075500
    SET(CURLOPT_PROTOCOLS_STR, "http,https");
    SET(CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
#else
    SET(CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
    SET(CURLOPT_REDIR_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
#undef SET
    if (c) return cl_fail(err, CL_EHTTP, "libcurl: setting up a transfer failed: %s", curl_easy_strerror(c));
    return CL_OK;
}

void cl_http_easy_free(void *multi, void *easy, int busy) {
    if (!easy) return;
    if (busy && multi) curl_multi_remove_handle((CURLM *)multi, (CURL *)easy);
    curl_easy_cleanup((CURL *)easy);
}

cl_status cl_http_multi_new(void **multi, int concurrency, cl_error *err) {
    CURLM *m = curl_multi_init();
    *multi = m;
    if (!m) return cl_fail(err, CL_EHTTP, "libcurl: could not create a multi handle (was curl_global_init called?)");
    curl_multi_setopt(m, CURLMOPT_MAXCONNECTS, (long)concurrency + 4);
    return CL_OK;
}

cl_status cl_http_add_transfer(void *multi, void *easy, int setopt, size_t i, cl_error *err) {
    if (setopt) return cl_fail(err, CL_EINVAL, "request %zu: libcurl refused it: %s", i, curl_easy_strerror((CURLcode)setopt));
    CURLMcode mc = curl_multi_add_handle((CURLM *)multi, (CURL *)easy);
    if (mc) return cl_fail(err, CL_EHTTP, "libcurl: could not start a transfer: %s", curl_multi_strerror(mc));
    return CL_OK;
}

void cl_http_wipe_slist(struct curl_slist *l) {
    for (struct curl_slist *p = l; p; p = p->next)
        if (p->data) {
            volatile char *c = p->data;
            while (*c) *c++ = 0;
        }
    curl_slist_free_all(l);
}

/* ---- which request starts next ---- */

cl_status cl_http_queue_init(cl_http_queue *q, size_t n, cl_error *err) {
    memset(q, 0, sizeof *q);
    q->n = n;
    q->picked = (size_t)-1;
    q->retry = calloc(n ? n : 1, sizeof *q->retry);
    q->not_before = calloc(n ? n : 1, sizeof *q->not_before);
    if (!q->retry || !q->not_before) {
        cl_http_queue_free(q);
        return cl_fail(err, CL_ENOMEM, "http: out of memory for the queue of %zu requests", n);
    }
    return CL_OK;
}

void cl_http_queue_free(cl_http_queue *q) {
    free(q->retry);
    free(q->not_before);
    q->retry = NULL;
    q->not_before = NULL;
}

void cl_http_queue_retry(cl_http_queue *q, size_t i, double not_before) {
    q->not_before[i] = not_before;
    q->retry[q->n_retry++] = i;
}

int cl_http_queue_peek(cl_http_queue *q, double now, size_t *i, double *wake) {
    size_t pos = (size_t)-1;
    double earliest = INFINITY;
    for (size_t k = 0; k < q->n_retry; k++) {
        double nb = q->not_before[q->retry[k]];
        if (nb < earliest) { earliest = nb; pos = k; }
    }
    if (earliest > now && earliest < *wake) *wake = earliest;
    if (pos != (size_t)-1 && earliest <= now) { q->picked = pos; *i = q->retry[pos]; return 1; }
    if (q->next_fresh < q->n) { q->picked = (size_t)-1; *i = q->next_fresh; return 1; }
    return 0;
}

void cl_http_queue_take(cl_http_queue *q) {
    if (q->picked != (size_t)-1) q->retry[q->picked] = q->retry[--q->n_retry];
    else q->next_fresh++;
    q->picked = (size_t)-1;
}

/* ---- the run ---- */

typedef struct {
    const cl_http_opts *o;
    const cl_http_batch *b;
    cl_http_stats *stats;
    CURLM *multi;
    struct curl_slist *headers;
    slot *slots;
    req_state *rs;
    cl_http_queue queue; /* which request starts next */
    size_t n_final;
    int active;
    gate rpm, tpm;
    double pause_until; /* a 429 with Retry-After pauses every start until then */
    uint64_t rng;
} run;

static cl_status slot_init(run *R, slot *s, cl_error *err) {
    const cl_http_opts *o = R->o;
    cl_status st = cl_http_easy_new(&s->easy, s, on_body, on_header, s->errbuf, "ctxlookup/0.1 (libcurl)",
                                    o->connect_timeout_s, err);
    if (st) return st;
    CURL *e = s->easy;
    CURLcode c = CURLE_OK;
#define SET(opt, val) do { if (!c) c = curl_easy_setopt(e, opt, val); } while (0)
    SET(CURLOPT_HTTPHEADER, R->headers);
    SET(CURLOPT_POST, 1L);
    SET(CURLOPT_ACCEPT_ENCODING, "");
    SET(CURLOPT_FOLLOWLOCATION, 0L);
    if (o->timeout_s > 0) SET(CURLOPT_TIMEOUT_MS, (long)ceil(o->timeout_s * 1000));
#undef SET
    if (c) return cl_fail(err, CL_EHTTP, "libcurl: setting up a transfer failed: %s", curl_easy_strerror(c));
    return CL_OK;
}

static cl_status start_attempt(run *R, size_t i, double now, cl_error *err) {
    slot *s = NULL;
    for (int k = 0; k < R->o->concurrency; k++)
        if (!R->slots[k].busy) { s = &R->slots[k]; break; }
    if (!s) return cl_fail(err, CL_EINVAL, "http: no free transfer slot (internal)");
    if (!s->easy) {
        cl_status st = slot_init(R, s, err);
        if (st) return st;
    }
    const cl_http_req *q = &R->b->reqs[i];
    s->idx = i;
    s->body.n = 0;
    s->body.too_big = 0;
    if (s->body.p) s->body.p[0] = '\0';
    s->retry_after = s->retry_after_ms = -1;
    s->errbuf[0] = '\0';
    CURLcode c = curl_easy_setopt(s->easy, CURLOPT_URL, q->url);
    if (!c) c = curl_easy_setopt(s->easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)q->body_len);
    if (!c) c = curl_easy_setopt(s->easy, CURLOPT_POSTFIELDS, q->body_len ? q->body : "");
    cl_status st = cl_http_add_transfer(R->multi, s->easy, c, i, err);
    if (st) return st;
    s->busy = 1;
    req_state *r = &R->rs[i];
    if (r->attempts == 0) r->t_first = now;
    else R->stats->retries++;
    r->attempts++;
    R->stats->attempts++;
    R->active++;
    if (R->active > R->stats->max_in_flight) R->stats->max_in_flight = R->active;
    gate_take(&R->rpm, now, 1);
    gate_take(&R->tpm, now, q->tokens);
    return CL_OK;
}

/* Start what may start now; returns the earliest time something blocked could start (or +inf). */
static cl_status start_ready(run *R, double now, double *wake, cl_error *err) {
    *wake = INFINITY;
    while (R->active < R->o->concurrency) {
        size_t i;
        if (!cl_http_queue_peek(&R->queue, now, &i, wake)) break;
        double w = 0;
        if (R->pause_until > now) w = R->pause_until - now;
        double gw = gate_wait(&R->rpm, now);
        if (gw > w) w = gw;
        gw = gate_wait(&R->tpm, now);
        if (gw > w) w = gw;
        if (w > 0) { if (now + w < *wake) *wake = now + w; break; }
        cl_http_queue_take(&R->queue);
        cl_status st = start_attempt(R, i, now, err);
        if (st) return st;
    }
    return CL_OK;
}

static cl_status finish_attempt(run *R, slot *s, CURLcode code, double now, cl_error *err) {
    const cl_http_opts *o = R->o;
    size_t i = s->idx;
    req_state *q = &R->rs[i];
    cl_http_result r;
    memset(&r, 0, sizeof r);
    curl_easy_getinfo(s->easy, CURLINFO_RESPONSE_CODE, &r.status);
    curl_multi_remove_handle(R->multi, s->easy);
    s->busy = 0;
    R->active--;
    r.body = s->body.p ? s->body.p : "";
    r.body_len = s->body.n;
    r.attempts = q->attempts;
    r.curl_code = (int)code;
    r.retry_after_s = s->retry_after_ms >= 0 ? s->retry_after_ms / 1000.0 : s->retry_after;
    r.seconds = now - q->t_first;
    int retry = 0;
    if (code != CURLE_OK) {
        R->stats->transport_errors++;
        r.status = 0;
        retry = cl_http_retryable_curl(code);
        if (s->body.too_big) snprintf(r.error, sizeof r.error, "response larger than %zu MiB", MAX_BODY >> 20);
        else snprintf(r.error, sizeof r.error, "%s", s->errbuf[0] ? s->errbuf : curl_easy_strerror(code));
    } else if (r.status >= 200 && r.status < 300) {
        if (R->b->check && R->b->check(R->b->ctx, i, &r, r.error, sizeof r.error) == CL_HTTP_RETRY) {
            R->stats->rejected++;
            retry = 1;
        }
    } else {
        if (r.status == 429) R->stats->rate_limited++;
        if (r.status >= 500) R->stats->server_errors++;
        retry = cl_http_retryable_status(r.status);
    }
    if (retry && q->attempts <= o->max_retries) {
        double delay;
        if (r.retry_after_s >= 0 && code == CURLE_OK) {
            if (r.retry_after_s > o->retry_after_max_s) {
                snprintf(r.error, sizeof r.error, "the server asked to retry after %.0f s (Retry-After), more than retry_after_max=%.0f s",
                         r.retry_after_s, o->retry_after_max_s);
                retry = 0;
            }
            delay = r.retry_after_s * (1.0 + 0.1 * rng_unit(&R->rng));
            if (retry && r.status == 429 && now + r.retry_after_s > R->pause_until) R->pause_until = now + r.retry_after_s;
        } else {
            delay = cl_http_backoff(o->backoff_base_s, o->backoff_max_s, q->attempts, &R->rng);
        }
        if (retry) {
            cl_http_queue_retry(&R->queue, i, now + delay);
            return CL_OK;
        }
    }
    R->n_final++;
    r.ok = code == CURLE_OK && r.status >= 200 && r.status < 300 && !retry;
    if (!r.ok) R->stats->failed++;
    if (R->b->done) return R->b->done(R->b->ctx, i, &r, err);
    return CL_OK;
}

static cl_status check_args(const cl_http_opts *o, const cl_http_batch *b, cl_error *err) {
    if (o->concurrency < 1 || o->concurrency > MAX_CONCURRENCY)
        return cl_fail(err, CL_EINVAL, "concurrency must be in [1, %d], got %d", MAX_CONCURRENCY, o->concurrency);
    if (!(o->rpm >= 0) || !(o->tpm >= 0) || !isfinite(o->rpm) || !isfinite(o->tpm))
        return cl_fail(err, CL_EINVAL, "rpm and tpm must be finite and >= 0 (0 = no limit)");
    if (!(o->timeout_s >= 0) || !(o->connect_timeout_s >= 0) || o->timeout_s > 1e7 || o->connect_timeout_s > 1e7)
        return cl_fail(err, CL_EINVAL, "timeouts must be >= 0 seconds (0 = none)");
    if (o->max_retries < 0 || o->max_retries > 1000) return cl_fail(err, CL_EINVAL, "max_retries must be in [0, 1000], got %d", o->max_retries);
    if (!(o->backoff_base_s >= 0) || !(o->backoff_max_s >= 0) || !(o->retry_after_max_s >= 0) || !isfinite(o->backoff_base_s) ||
        !isfinite(o->backoff_max_s) || !isfinite(o->retry_after_max_s))
        return cl_fail(err, CL_EINVAL, "backoff_base, backoff_max and retry_after_max must be finite and >= 0");
    if (b->n && !b->reqs) return cl_fail(err, CL_EINVAL, "http: %zu requests but no request array", b->n);
    if (b->n_headers && !b->headers) return cl_fail(err, CL_EINVAL, "http: %zu headers but no header array", b->n_headers);
    for (size_t i = 0; i < b->n_headers; i++)
        if (!b->headers[i] || strpbrk(b->headers[i], "\r\n"))
            return cl_fail(err, CL_EINVAL, "header %zu is missing or contains a line break", i);
    for (size_t i = 0; i < b->n; i++) {
        const cl_http_req *q = &b->reqs[i];
        if (!q->url || !*q->url) return cl_fail(err, CL_EINVAL, "request %zu has no URL", i);
        if (!q->body && q->body_len) return cl_fail(err, CL_EINVAL, "request %zu has a length but no body", i);
        if (!(q->tokens >= 0) || !isfinite(q->tokens)) return cl_fail(err, CL_EINVAL, "request %zu: tokens must be finite and >= 0", i);
    }
    return CL_OK;
}

/* ---- the multi loop, shared with cl_download.c ---- */

cl_status cl_http_drive(void *multi_, const cl_http_driver *d, cl_error *err) {
    CURLM *multi = multi_;
    const int cancellable = d->cancel && d->cancel->fn;
    double last_cancel = -INFINITY;
    for (;;) {
        double now = now_s(), wake = INFINITY;
        cl_status st;
        if (cancellable && now - last_cancel >= CL_HTTP_CANCEL_EVERY_S) {
            last_cancel = now;
            if (cl_cancel_check(d->cancel)) return cl_fail(err, CL_ECANCELLED, "%s: cancelled", d->what);
        }
        if ((st = d->start(d->ctx, now, &wake, err))) return st;
        int running = 0;
        CURLMcode mc = curl_multi_perform(multi, &running);
        if (mc) return cl_fail(err, CL_EHTTP, "libcurl: %s", curl_multi_strerror(mc));
        int ended = 0, all_done = 0, left;
        CURLMsg *msg;
        while ((msg = curl_multi_info_read(multi, &left))) {
            if (msg->msg != CURLMSG_DONE) continue;
            char *priv = NULL;
            CURLcode code = msg->data.result;
            curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, &priv);
            int counted = 0;
            if ((st = d->finished(d->ctx, priv, (int)code, now_s(), &counted, err))) return st;
            ended += counted;
        }
        if ((st = d->tick(d->ctx, now_s(), &ended, &all_done, err))) return st;
        if (all_done) return CL_OK;
        if (ended) continue;
        double cap = cancellable && CL_HTTP_CANCEL_EVERY_S < d->idle_cap_s ? CL_HTTP_CANCEL_EVERY_S : d->idle_cap_s;
        double sleep = wake - now_s();
        if (sleep > cap) sleep = cap;
        int ms = sleep > 0 ? (int)ceil(sleep * 1000) : 0;
        if (ms == 0 && d->idle(d->ctx)) ms = 1;
        mc = curl_multi_poll(multi, NULL, 0, ms, NULL);
        if (mc) return cl_fail(err, CL_EHTTP, "libcurl: %s", curl_multi_strerror(mc));
    }
}

/* ---- the driver's callbacks for a batch of POSTs ---- */

static cl_status drv_start(void *ctx, double now, double *wake, cl_error *err) { return start_ready(ctx, now, wake, err); }

static cl_status drv_finished(void *ctx, void *priv, int code, double now, int *counted, cl_error *err) {
    if (!priv) return CL_OK;
    *counted = 1;
    return finish_attempt(ctx, (slot *)priv, (CURLcode)code, now, err);
}

static cl_status drv_tick(void *ctx, double now, int *ended, int *all_done, cl_error *err) {
    run *R = ctx;
    *all_done = R->n_final == R->b->n;
    return CL_OK;
}

static int drv_idle(void *ctx) { return ((run *)ctx)->active == 0; } /* blocked on a gate at sub-ms distance */

cl_status cl_http_run(const cl_http_opts *opts, const cl_http_batch *batch, cl_http_stats *stats, cl_error *err) {
    cl_http_stats local;
    if (!stats) stats = &local;
    memset(stats, 0, sizeof *stats);
    if (!opts || !batch) return cl_fail(err, CL_EINVAL, "http: options and batch are required");
    cl_status st = check_args(opts, batch, err);
    if (st) return st;
    if (batch->n == 0) return CL_OK;
    double t0 = now_s();
    run R = {.o = opts, .b = batch, .stats = stats};
    R.rpm.per_unit = opts->rpm > 0 ? 60.0 / opts->rpm : 0;
    R.tpm.per_unit = opts->tpm > 0 ? 60.0 / opts->tpm : 0;
    if (batch->limiter) {
        R.rpm.tat = batch->limiter->rpm_next;
        R.tpm.tat = batch->limiter->tpm_next;
        R.pause_until = batch->limiter->pause_until;
    }
    R.rng = cl_http_seed(opts->seed);
    R.slots = calloc((size_t)opts->concurrency, sizeof *R.slots);
    R.rs = calloc(batch->n, sizeof *R.rs);
    if (!R.slots || !R.rs) { st = cl_fail(err, CL_ENOMEM, "http: out of memory for %zu requests", batch->n); goto done; }
    st = cl_http_queue_init(&R.queue, batch->n, err);
    if (st) goto done;
    const char *fixed[] = {"Content-Type: application/json", "Accept: application/json", "Expect:"};
    for (size_t k = 0; k < sizeof fixed / sizeof fixed[0] + batch->n_headers; k++) {
        const char *h = k < sizeof fixed / sizeof fixed[0] ? fixed[k] : batch->headers[k - sizeof fixed / sizeof fixed[0]];
        struct curl_slist *l = curl_slist_append(R.headers, h);
        if (!l) { st = cl_fail(err, CL_ENOMEM, "http: out of memory for headers"); goto done; }
        R.headers = l;
    }
    st = cl_http_multi_new(&R.multi, opts->concurrency, err);
    if (st) goto done;
    cl_http_driver d = {&R, "http", &batch->cancel, 1.0, drv_start, drv_finished, drv_tick, drv_idle};
    st = cl_http_drive(R.multi, &d, err);
done:
    if (R.slots) {
        for (int k = 0; k < opts->concurrency; k++) {
            cl_http_easy_free(R.multi, R.slots[k].easy, R.slots[k].busy);
            free(R.slots[k].body.p);
        }
    }
    if (R.multi) curl_multi_cleanup(R.multi);
    if (batch->limiter) {
        batch->limiter->rpm_next = R.rpm.tat;
        batch->limiter->tpm_next = R.tpm.tat;
        batch->limiter->pause_until = R.pause_until;
    }
    cl_http_wipe_slist(R.headers);
    free(R.slots);
    free(R.rs);
    cl_http_queue_free(&R.queue);
    stats->seconds = now_s() - t0;
    return st;
}
