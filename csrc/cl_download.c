/* cl_download.c: the download engine over the libcurl multi interface, in the manner of cl_http.c
 * (whose backoff, retry classification and header helpers it uses). One thread drives every
 * transfer: each round it starts what the concurrency cap and the backoff schedule allow (opening
 * and hashing a partial file before its first GET), lets libcurl move data, aborts attempts that
 * stalled, finishes completed attempts (accept, resume later, or fail), reports progress, and
 * sleeps in curl_multi_poll. Bytes go to the partial file as they arrive and into its running
 * sha256, so the file always holds exactly what was hashed: a later attempt or a later run
 * resumes from its length. */
#include "cl_download.h"

#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cl_http.h"
#include "cl_sha256.h"

#define PROGRESS_EVERY_S 0.1
#define MAX_CONCURRENCY 256
#define USER_AGENT "ctxlookup/0.1 (libcurl; hub)"

cl_dl_opts cl_dl_opts_default(void) {
    cl_dl_opts o = {
        .concurrency = 8, .connect_timeout_s = 10, .stall_timeout_s = 30, .head_timeout_s = 30, .max_retries = 5,
        .max_connect_retries = 2, .backoff_base_s = 1.0, .backoff_max_s = 30, .retry_after_max_s = 120,
        .max_redirects = 10, .seed = 0,
    };
    return o;
}

const char *cl_dl_failure_name(cl_dl_failure f) {
    switch (f) {
    case CL_DL_NONE: return "";
    case CL_DL_HTTP: return "http";
    case CL_DL_NETWORK: return "network";
    case CL_DL_TIMEOUT: return "timeout";
    case CL_DL_SIZE: return "size";
    case CL_DL_HASH: return "hash";
    case CL_DL_DISK: return "disk";
    case CL_DL_IO: return "io";
    case CL_DL_CANCELLED: return "cancelled";
    }
    return "unknown";
}

typedef struct run run;

/* One transfer slot: an easy handle reused across attempts, and the current attempt's state. */
typedef struct {
    CURL *easy;
    run *R;
    int busy;
    size_t idx;
    char errbuf[CURL_ERROR_SIZE];
    long status;                       /* of the response being received */
    int64_t cr_start, cr_total;        /* its Content-Range; -1 when absent */
    double retry_after, retry_after_ms;
    int body_started, body_to_file, range_mismatch, oversize, write_errno;
    int64_t high_at_start;             /* the request's high-water mark when the attempt began */
    double last_byte;                  /* last time anything arrived (stall detection) */
    char range[48];
} slot;

typedef struct {
    int attempts, counted, connect_failures;
    double t_first;
    int fd;                  /* GET: the partial file, open from the first attempt to the end */
    int64_t have, high;      /* bytes in the partial file (all of them hashed); most it ever held */
    cl_sha256 sha;
    int opened, from_previous, restarted;
    char *url;               /* HEAD: the current hop's URL (malloc'd); NULL = the request's */
    int hops;
} req_state;

struct run {
    const cl_dl_opts *o;
    const cl_dl_batch *b;
    CURLM *multi;
    struct curl_slist *hdr_auth, *hdr_plain;
    slot *slots;
    req_state *rs;
    cl_http_queue queue; /* which request starts next */
    size_t n_final;
    int active;
    int64_t received;
    uint64_t rng;
    double last_progress; /* when the progress callback last ran */
};

/* ---- small pieces ---- */

static void copy_value(char *dst, size_t cap, const char *v) {
    while (*v == ' ' || *v == '\t') v++;
    size_t n = strcspn(v, "\r\n");
    while (n && (v[n - 1] == ' ' || v[n - 1] == '\t')) n--;
    if (n >= cap) n = cap - 1;
    memcpy(dst, v, n);
    dst[n] = '\0';
}

static int64_t parse_i64(const char *v) {
    while (*v == ' ' || *v == '\t') v++;
    char *end = NULL;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    if (end == v || errno || x < 0) return -1;
    return (int64_t)x;
}

/* Content-Range "bytes 100-199/200" (a 416 has "*" for the range) -> start, total; -1 for "*" or absent. */
static void parse_content_range(const char *v, int64_t *start, int64_t *total) {
    *start = *total = -1;
    while (*v == ' ' || *v == '\t') v++;
    if (strncasecmp(v, "bytes", 5)) return;
    v += 5;
    while (*v == ' ') v++;
    if (*v != '*') *start = parse_i64(v);
    const char *slash = strchr(v, '/');
    if (slash && slash[1] != '*') *total = parse_i64(slash + 1);
}

static int is_hex64(const char *s) {
    for (int i = 0; i < 64; i++)
        if (!s[i] || !strchr("0123456789abcdefABCDEF", s[i])) return 0;
    return s[64] == '\0';
}

static int same_origin(const char *a, const char *b) {
    CURLU *ua = curl_url(), *ub = curl_url();
    char *p[6] = {0};
    int same = 0;
    if (ua && ub && !curl_url_set(ua, CURLUPART_URL, a, 0) && !curl_url_set(ub, CURLUPART_URL, b, 0) &&
        !curl_url_get(ua, CURLUPART_SCHEME, &p[0], 0) && !curl_url_get(ub, CURLUPART_SCHEME, &p[1], 0) &&
        !curl_url_get(ua, CURLUPART_HOST, &p[2], 0) && !curl_url_get(ub, CURLUPART_HOST, &p[3], 0) &&
        !curl_url_get(ua, CURLUPART_PORT, &p[4], CURLU_DEFAULT_PORT) &&
        !curl_url_get(ub, CURLUPART_PORT, &p[5], CURLU_DEFAULT_PORT))
        same = !strcasecmp(p[0], p[1]) && !strcasecmp(p[2], p[3]) && !strcmp(p[4], p[5]);
    for (int k = 0; k < 6; k++) curl_free(p[k]);
    curl_url_cleanup(ua);
    curl_url_cleanup(ub);
    return same;
}

static char *dup_str(const char *s) {
    if (!s) return NULL;
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

/* Empty the partial file and its hash (the server restarted from byte 0, or the bytes were bad). */
static int reset_file(req_state *q) {
    if (ftruncate(q->fd, 0)) return errno ? errno : EIO;
    q->have = 0;
    cl_sha256_init(&q->sha);
    return 0;
}

static int disk_full(int e) { return e == ENOSPC || e == EDQUOT || e == EFBIG; }

/* ---- libcurl callbacks ---- */

static size_t on_header(char *p, size_t size, size_t nmemb, void *ud) {
    slot *s = ud;
    run *R = s->R;
    cl_dl_result *res = &R->b->results[s->idx];
    size_t n = size * nmemb;
    char line[1024];
    const char *v;
    s->last_byte = cl_http_now();
    size_t m = n < sizeof line - 1 ? n : sizeof line - 1;
    memcpy(line, p, m);
    line[m] = '\0';
    if (m >= 5 && !strncasecmp(line, "HTTP/", 5)) { /* a new response: forget the previous one's headers */
        const char *sp = strchr(line, ' ');
        s->status = sp ? strtol(sp + 1, NULL, 10) : 0;
        s->cr_start = s->cr_total = -1;
        s->retry_after = s->retry_after_ms = -1;
        res->etag[0] = res->error_code[0] = res->error_message[0] = '\0';
        res->content_length = -1;
        return n;
    }
    /* X-Repo-Commit, X-Linked-Etag and X-Linked-Size are kept from an earlier hop if a later one lacks them */
    if (cl_http_header_value(line, m, "x-repo-commit", &v)) copy_value(res->commit, sizeof res->commit, v);
    else if (cl_http_header_value(line, m, "x-linked-etag", &v)) copy_value(res->linked_etag, sizeof res->linked_etag, v);
    else if (cl_http_header_value(line, m, "x-linked-size", &v)) res->linked_size = parse_i64(v);
    else if (cl_http_header_value(line, m, "etag", &v)) copy_value(res->etag, sizeof res->etag, v);
    else if (cl_http_header_value(line, m, "content-length", &v)) res->content_length = parse_i64(v);
    else if (cl_http_header_value(line, m, "content-range", &v)) parse_content_range(v, &s->cr_start, &s->cr_total);
    else if (cl_http_header_value(line, m, "x-error-code", &v)) copy_value(res->error_code, sizeof res->error_code, v);
    else if (cl_http_header_value(line, m, "x-error-message", &v)) copy_value(res->error_message, sizeof res->error_message, v);
    else if (cl_http_header_value(line, m, "retry-after-ms", &v)) {
        double ms = cl_http_parse_retry_after(v);
        if (ms >= 0) s->retry_after_ms = ms;
    } else if (cl_http_header_value(line, m, "retry-after", &v)) s->retry_after = cl_http_parse_retry_after(v);
    return n;
}

/* GET bodies: only a 200 or a 206 that continues exactly where the file ends goes into the file;
 * error pages are dropped. A 200 to a Range request means the server starts over: so does the file. */
static size_t on_body(char *p, size_t size, size_t nmemb, void *ud) {
    slot *s = ud;
    run *R = s->R;
    const cl_dl_req *rq = &R->b->reqs[s->idx];
    req_state *q = &R->rs[s->idx];
    size_t n = size * nmemb;
    s->last_byte = cl_http_now();
    if (!s->body_started) {
        s->body_started = 1;
        if (s->status == 206) {
            if (s->cr_start != q->have) { s->range_mismatch = 1; return 0; }
            s->body_to_file = 1;
        } else if (s->status == 200) {
            if (q->have > 0 && (s->write_errno = reset_file(q))) return 0;
            s->body_to_file = 1;
        }
    }
    if (!s->body_to_file) return n;
    if (rq->size >= 0 && q->have + (int64_t)n > rq->size) { s->oversize = 1; return 0; }
    size_t done = 0;
    while (done < n) {
        ssize_t w = pwrite(q->fd, p + done, n - done, (off_t)q->have);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) { s->write_errno = w < 0 ? errno : ENOSPC; break; }
        cl_sha256_update(&q->sha, p + done, (size_t)w);
        q->have += w;
        R->received += w;
        R->b->results[s->idx].received += w;
        done += (size_t)w;
    }
    if (q->have > q->high) q->high = q->have;
    return done == n ? n : 0;
}

/* ---- ending a request ---- */

static void finish_req(run *R, size_t i, cl_dl_failure f, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 4, 5)))
#endif
    ;

static void finish_req(run *R, size_t i, cl_dl_failure f, const char *fmt, ...) {
    const cl_dl_req *rq = &R->b->reqs[i];
    req_state *q = &R->rs[i];
    cl_dl_result *res = &R->b->results[i];
    res->ok = f == CL_DL_NONE;
    res->failure = f;
    res->error[0] = '\0';
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(res->error, sizeof res->error, fmt, ap);
        va_end(ap);
    }
    res->attempts = q->attempts;
    res->seconds = q->attempts ? cl_http_now() - q->t_first : 0;
    if (!rq->head) {
        res->bytes = q->have;
        if (q->fd >= 0) {
            close(q->fd);
            q->fd = -1;
        }
        if (f == CL_DL_HASH || f == CL_DL_SIZE) {
            unlink(rq->part_path); /* nothing corrupt stays behind */
            res->bytes = 0;
        }
    }
    R->n_final++;
}

/* Another attempt later; 0 when the retry budget is spent. `counted`: the attempt failed without
 * adding to the file. `retry_after` < 0: back off by the schedule. */
static int retry_later(run *R, size_t i, int counted, int connect_failure, double retry_after, double now) {
    req_state *q = &R->rs[i];
    double delay = 0;
    if (counted) {
        if (q->counted >= R->o->max_retries) return 0;
        if (connect_failure && q->connect_failures >= R->o->max_connect_retries) return 0;
        q->counted++;
        if (connect_failure) q->connect_failures++;
        delay = cl_http_backoff(R->o->backoff_base_s, R->o->backoff_max_s, q->counted, &R->rng);
    }
    if (retry_after >= 0) delay = retry_after * (1.0 + 0.1 * cl_http_jitter(&R->rng));
    cl_http_queue_retry(&R->queue, i, now + delay);
    return 1;
}

/* The body is all there: check it, then move it into place. */
static void complete_get(run *R, size_t i, double now) {
    const cl_dl_req *rq = &R->b->reqs[i];
    req_state *q = &R->rs[i];
    if (rq->size >= 0 && q->have != rq->size) {
        finish_req(R, i, CL_DL_SIZE, "size mismatch: got %lld bytes, the server announced %lld; the partial file was deleted",
                   (long long)q->have, (long long)rq->size);
        return;
    }
    if (rq->sha256) {
        cl_sha256 c = q->sha;
        unsigned char d[32];
        char hex[65];
        cl_sha256_final(&c, d);
        cl_sha256_hex(d, hex);
        if (strcasecmp(hex, rq->sha256)) {
            if (q->from_previous && !q->restarted) {
                /* the bytes left by an earlier run may be what is wrong: start over once */
                int e = reset_file(q);
                if (e) { finish_req(R, i, CL_DL_IO, "could not truncate %s: %s", rq->part_path, strerror(e)); return; }
                q->restarted = 1;
                q->from_previous = 0;
                retry_later(R, i, 0, 0, -1, now);
                return;
            }
            finish_req(R, i, CL_DL_HASH, "sha256 mismatch: expected %s, got %s (%lld bytes); the partial file was deleted",
                       rq->sha256, hex, (long long)q->have);
            return;
        }
    }
    if (close(q->fd)) {
        int e = errno;
        q->fd = -1;
        finish_req(R, i, disk_full(e) ? CL_DL_DISK : CL_DL_IO, "closing %s: %s", rq->part_path, strerror(e));
        return;
    }
    q->fd = -1;
    if (rq->final_path && rename(rq->part_path, rq->final_path)) {
        finish_req(R, i, CL_DL_IO, "could not rename %s to %s: %s", rq->part_path, rq->final_path, strerror(errno));
        return;
    }
    finish_req(R, i, CL_DL_NONE, NULL);
}

/* Open the partial file and hash what it holds. *complete = 1 when it already has every byte. */
static cl_status open_partial(run *R, size_t i, int *complete, cl_error *err) {
    const cl_dl_req *rq = &R->b->reqs[i];
    req_state *q = &R->rs[i];
    cl_dl_result *res = &R->b->results[i];
    *complete = 0;
    q->opened = 1;
    cl_sha256_init(&q->sha);
    q->fd = open(rq->part_path, O_RDWR | O_CREAT | O_CLOEXEC, 0666);
    if (q->fd < 0) {
        int e = errno;
        finish_req(R, i, disk_full(e) ? CL_DL_DISK : CL_DL_IO, "could not open %s: %s", rq->part_path, strerror(e));
        return CL_OK;
    }
    struct stat st;
    if (fstat(q->fd, &st)) {
        finish_req(R, i, CL_DL_IO, "could not stat %s: %s", rq->part_path, strerror(errno));
        return CL_OK;
    }
    q->have = (int64_t)st.st_size;
    if (rq->size >= 0 && q->have > rq->size) {
        int e = reset_file(q);
        if (e) { finish_req(R, i, CL_DL_IO, "could not truncate %s: %s", rq->part_path, strerror(e)); return CL_OK; }
    }
    if (q->have > 0) {
        cl_error e2 = {0};
        cl_status st2 = cl_sha256_fd(&q->sha, q->fd, (uint64_t)q->have, &R->b->cancel, &e2);
        if (st2 == CL_ECANCELLED) return cl_fail(err, st2, "%s", e2.msg);
        if (st2 == CL_ENOMEM) return cl_fail(err, st2, "%s", e2.msg);
        if (st2) { finish_req(R, i, CL_DL_IO, "%s: %s", rq->part_path, e2.msg); return CL_OK; }
        q->from_previous = 1;
        res->resumed_from = q->have;
    }
    q->high = q->have;
    if (rq->size >= 0 && q->have == rq->size) *complete = 1;
    return CL_OK;
}

/* ---- attempts ---- */

static cl_status slot_init(run *R, slot *s, cl_error *err) {
    s->R = R;
    cl_status st = cl_http_easy_new(&s->easy, s, on_body, on_header, s->errbuf, USER_AGENT, R->o->connect_timeout_s, err);
    if (st) return st;
    CURLcode c = curl_easy_setopt(s->easy, CURLOPT_BUFFERSIZE, 256L * 1024);
    if (c) return cl_fail(err, CL_EHTTP, "libcurl: setting up a transfer failed: %s", curl_easy_strerror(c));
    return CL_OK;
}

static cl_status start_attempt(run *R, size_t i, double now, cl_error *err) {
    const cl_dl_req *rq = &R->b->reqs[i];
    req_state *q = &R->rs[i];
    slot *s = NULL;
    for (int k = 0; k < R->o->concurrency; k++)
        if (!R->slots[k].busy) { s = &R->slots[k]; break; }
    if (!s) return cl_fail(err, CL_EINVAL, "download: no free transfer slot (internal)");
    if (!s->easy) {
        cl_status st = slot_init(R, s, err);
        if (st) return st;
    }
    s->idx = i;
    s->errbuf[0] = '\0';
    s->status = 0;
    s->cr_start = s->cr_total = -1;
    s->retry_after = s->retry_after_ms = -1;
    s->body_started = s->body_to_file = s->range_mismatch = s->oversize = s->write_errno = 0;
    s->high_at_start = q->high;
    s->last_byte = now;
    CURL *e = s->easy;
    CURLcode c = curl_easy_setopt(e, CURLOPT_URL, q->url ? q->url : rq->url);
#define SET(opt, val) do { if (!c) c = curl_easy_setopt(e, opt, val); } while (0)
    SET(CURLOPT_HTTPHEADER, rq->auth ? R->hdr_auth : R->hdr_plain);
    if (rq->head) {
        SET(CURLOPT_NOBODY, 1L);
        SET(CURLOPT_FOLLOWLOCATION, 0L);
        SET(CURLOPT_RANGE, (char *)NULL);
        SET(CURLOPT_TIMEOUT_MS, R->o->head_timeout_s > 0 ? (long)ceil(R->o->head_timeout_s * 1000) : 0L);
    } else {
        SET(CURLOPT_HTTPGET, 1L);
        SET(CURLOPT_FOLLOWLOCATION, R->o->max_redirects > 0 ? 1L : 0L);
        SET(CURLOPT_MAXREDIRS, (long)R->o->max_redirects);
        SET(CURLOPT_TIMEOUT_MS, 0L);
        if (q->have > 0) {
            snprintf(s->range, sizeof s->range, "%lld-", (long long)q->have);
            SET(CURLOPT_RANGE, s->range);
            R->b->results[i].range_attempts++;
        } else {
            SET(CURLOPT_RANGE, (char *)NULL);
        }
    }
#undef SET
    cl_status st = cl_http_add_transfer(R->multi, e, c, i, err);
    if (st) return st;
    s->busy = 1;
    if (q->attempts == 0) q->t_first = now;
    q->attempts++;
    R->active++;
    return CL_OK;
}

/* Start what may start now; *wake = the earliest time a waiting retry may start (or +inf). */
static cl_status start_ready(run *R, double now, double *wake, cl_error *err) {
    *wake = INFINITY;
    while (R->active < R->o->concurrency) {
        size_t i;
        if (!cl_http_queue_peek(&R->queue, now, &i, wake)) break;
        cl_http_queue_take(&R->queue);
        if (!R->b->reqs[i].head && !R->rs[i].opened) {
            int complete = 0;
            cl_status st = open_partial(R, i, &complete, err);
            if (st) return st;
            if (R->b->results[i].failure) continue; /* could not open: already final */
            if (complete) {                          /* nothing to fetch: check it and move it */
                if (R->rs[i].attempts == 0) R->rs[i].t_first = now;
                complete_get(R, i, now);
                continue;
            }
        }
        cl_status st = start_attempt(R, i, now, err);
        if (st) return st;
    }
    return CL_OK;
}

static cl_dl_failure transport_kind(CURLcode c) { return c == CURLE_OPERATION_TIMEDOUT ? CL_DL_TIMEOUT : CL_DL_NETWORK; }

static int connect_failure(CURLcode c) {
    return c == CURLE_COULDNT_RESOLVE_HOST || c == CURLE_COULDNT_RESOLVE_PROXY || c == CURLE_COULDNT_CONNECT;
}

static void set_url(cl_dl_result *res, CURL *e) {
    char *u = NULL;
    if (curl_easy_getinfo(e, CURLINFO_EFFECTIVE_URL, &u) == CURLE_OK && u) {
        free(res->url);
        res->url = dup_str(u);
    }
}

/* An error status: retry later (honouring Retry-After up to its cap) when it is retryable, else fail. */
static void retry_or_fail(run *R, slot *s, size_t i, long st, double now) {
    double ra = s->retry_after_ms >= 0 ? s->retry_after_ms / 1000.0 : s->retry_after;
    if (cl_http_retryable_status(st)) {
        if (ra > R->o->retry_after_max_s) {
            finish_req(R, i, CL_DL_HTTP, "HTTP %ld: the server asked to retry after %.0f s (Retry-After), more than %.0f s", st,
                       ra, R->o->retry_after_max_s);
            return;
        }
        if (retry_later(R, i, 1, 0, ra, now)) return;
    }
    finish_req(R, i, CL_DL_HTTP, "HTTP %ld", st);
}

static void finish_head(run *R, slot *s, CURLcode code, double now) {
    size_t i = s->idx;
    const cl_dl_req *rq = &R->b->reqs[i];
    req_state *q = &R->rs[i];
    cl_dl_result *res = &R->b->results[i];
    res->status = code == CURLE_OK ? s->status : 0;
    res->curl_code = (int)code;
    set_url(res, s->easy);
    if (code != CURLE_OK) {
        if (cl_http_retryable_curl(code) && retry_later(R, i, 1, connect_failure(code), -1, now)) return;
        finish_req(R, i, transport_kind(code), "%s", s->errbuf[0] ? s->errbuf : curl_easy_strerror(code));
        return;
    }
    long st = s->status;
    if (st >= 300 && st < 400) {
        char *target = NULL;
        curl_easy_getinfo(s->easy, CURLINFO_REDIRECT_URL, &target);
        if (!target) { finish_req(R, i, CL_DL_HTTP, "HTTP %ld redirect without a Location", st); return; }
        const char *cur = q->url ? q->url : rq->url;
        if (same_origin(cur, target)) {
            if (q->hops >= R->o->max_redirects) {
                finish_req(R, i, CL_DL_HTTP, "more than %d redirects (last to %s)", R->o->max_redirects, target);
                return;
            }
            char *next = dup_str(target);
            if (!next) { finish_req(R, i, CL_DL_IO, "out of memory"); return; }
            free(q->url);
            q->url = next;
            q->hops++;
            retry_later(R, i, 0, 0, -1, now); /* a hop: at once, not a retry */
            return;
        }
        free(res->location);
        res->location = dup_str(target);
        finish_req(R, i, CL_DL_NONE, NULL);
        return;
    }
    if (st >= 200 && st < 300) { finish_req(R, i, CL_DL_NONE, NULL); return; }
    retry_or_fail(R, s, i, st, now);
}

static void finish_get(run *R, slot *s, CURLcode code, double now) {
    size_t i = s->idx;
    const cl_dl_req *rq = &R->b->reqs[i];
    req_state *q = &R->rs[i];
    cl_dl_result *res = &R->b->results[i];
    int progressed = q->high > s->high_at_start;
    res->status = s->status;
    res->curl_code = (int)code;
    set_url(res, s->easy);
    if (s->write_errno) {
        int e = s->write_errno;
        if (disk_full(e))
            finish_req(R, i, CL_DL_DISK, "the disk is full: writing %s failed after %lld bytes (%s)", rq->part_path,
                       (long long)q->have, strerror(e));
        else
            finish_req(R, i, CL_DL_IO, "writing %s failed after %lld bytes: %s", rq->part_path, (long long)q->have, strerror(e));
        return;
    }
    if (s->oversize) {
        finish_req(R, i, CL_DL_SIZE, "the server sent more than the %lld bytes announced; the partial file was deleted",
                   (long long)rq->size);
        return;
    }
    if (s->range_mismatch) { /* a 206 that does not continue the file: start over */
        int e = reset_file(q);
        if (e) { finish_req(R, i, CL_DL_IO, "could not truncate %s: %s", rq->part_path, strerror(e)); return; }
        if (retry_later(R, i, 1, 0, -1, now)) return;
        finish_req(R, i, CL_DL_HTTP, "the server answered a byte range with a different range");
        return;
    }
    if (code != CURLE_OK) {
        res->status = s->status;
        if (cl_http_retryable_curl(code) && retry_later(R, i, !progressed, connect_failure(code), -1, now)) return;
        finish_req(R, i, transport_kind(code), "%s (after %lld bytes)", s->errbuf[0] ? s->errbuf : curl_easy_strerror(code),
                   (long long)q->have);
        return;
    }
    long st = s->status;
    if (st == 200 || st == 206) {
        if (st == 200 && !s->body_started && q->have > 0) { /* an empty 200 to a Range request: the file is empty */
            int e = reset_file(q);
            if (e) { finish_req(R, i, CL_DL_IO, "could not truncate %s: %s", rq->part_path, strerror(e)); return; }
        }
        int64_t want = rq->size;
        if (want < 0 && st == 206) want = s->cr_total;
        if (want < 0 && res->content_length >= 0) want = res->content_length + (st == 206 && s->cr_start > 0 ? s->cr_start : 0);
        if (want >= 0 && q->have < want) { /* cut short without libcurl noticing: resume */
            if (retry_later(R, i, !progressed, 0, -1, now)) return;
            finish_req(R, i, CL_DL_NETWORK, "the connection ended after %lld of %lld bytes", (long long)q->have, (long long)want);
            return;
        }
        complete_get(R, i, now);
        return;
    }
    if (st == 416 && q->have > 0) { /* the range is past the end: the file may be complete, else start over */
        if (s->cr_total == q->have && (rq->size < 0 || rq->size == q->have)) { complete_get(R, i, now); return; }
        int e = reset_file(q);
        if (e) { finish_req(R, i, CL_DL_IO, "could not truncate %s: %s", rq->part_path, strerror(e)); return; }
        if (retry_later(R, i, 1, 0, -1, now)) return;
        finish_req(R, i, CL_DL_HTTP, "HTTP 416 (range not satisfiable)");
        return;
    }
    retry_or_fail(R, s, i, st, now);
}

static void finish_attempt(run *R, slot *s, CURLcode code, double now) {
    curl_multi_remove_handle(R->multi, s->easy);
    s->busy = 0;
    R->active--;
    if (R->b->reqs[s->idx].head) finish_head(R, s, code, now);
    else finish_get(R, s, code, now);
}

static cl_status check_args(const cl_dl_opts *o, const cl_dl_batch *b, cl_error *err) {
    if (o->concurrency < 1 || o->concurrency > MAX_CONCURRENCY)
        return cl_fail(err, CL_EINVAL, "concurrency must be in [1, %d], got %d", MAX_CONCURRENCY, o->concurrency);
    double t[] = {o->connect_timeout_s, o->stall_timeout_s, o->head_timeout_s, o->backoff_base_s, o->backoff_max_s,
                  o->retry_after_max_s};
    for (size_t k = 0; k < sizeof t / sizeof t[0]; k++)
        if (!(t[k] >= 0) || t[k] > 1e7) return cl_fail(err, CL_EINVAL, "timeouts and backoffs must be in [0, 1e7] seconds");
    if (o->max_retries < 0 || o->max_retries > 1000 || o->max_connect_retries < 0 || o->max_connect_retries > 1000)
        return cl_fail(err, CL_EINVAL, "max_retries must be in [0, 1000], got %d", o->max_retries);
    if (o->max_redirects < 0 || o->max_redirects > 50)
        return cl_fail(err, CL_EINVAL, "max_redirects must be in [0, 50], got %d", o->max_redirects);
    if (b->n && (!b->reqs || !b->results)) return cl_fail(err, CL_EINVAL, "download: %zu requests but no request or result array", b->n);
    if (b->n_headers && !b->headers) return cl_fail(err, CL_EINVAL, "download: %zu headers but no header array", b->n_headers);
    for (size_t k = 0; k < b->n_headers; k++)
        if (!b->headers[k] || strpbrk(b->headers[k], "\r\n"))
            return cl_fail(err, CL_EINVAL, "header %zu is missing or contains a line break", k);
    for (size_t i = 0; i < b->n; i++) {
        const cl_dl_req *q = &b->reqs[i];
        if (!q->url || !*q->url || strpbrk(q->url, " \t\r\n")) return cl_fail(err, CL_EINVAL, "request %zu: missing or malformed URL", i);
        if (q->head) continue;
        if (!q->part_path || !*q->part_path) return cl_fail(err, CL_EINVAL, "request %zu: a GET needs a partial-file path", i);
        if (q->sha256 && !is_hex64(q->sha256))
            return cl_fail(err, CL_EINVAL, "request %zu: sha256 must be 64 hex digits, got '%.80s'", i, q->sha256);
        for (size_t j = 0; j < i; j++)
            if (!b->reqs[j].head && !strcmp(b->reqs[j].part_path, q->part_path))
                return cl_fail(err, CL_EINVAL, "requests %zu and %zu write the same file %s", j, i, q->part_path);
    }
    return CL_OK;
}

static cl_status report(run *R, double *last, double now, int force, cl_error *err) {
    if (!R->b->progress || (!force && now - *last < PROGRESS_EVERY_S)) return CL_OK;
    *last = now;
    return R->b->progress(R->b->ctx, R->received, R->n_final, err);
}

/* ---- the driver's callbacks (the loop itself: cl_http_drive) ---- */

static cl_status drv_start(void *ctx, double now, double *wake, cl_error *err) { return start_ready(ctx, now, wake, err); }

static cl_status drv_finished(void *ctx, void *priv, int code, double now, int *counted, cl_error *err) {
    slot *s = priv;
    if (!s || !s->busy) return CL_OK;
    *counted = 1;
    finish_attempt(ctx, s, (CURLcode)code, now);
    return CL_OK;
}

/* stalled transfers end as timeouts; progress is reported; done when every file is final */
static cl_status drv_tick(void *ctx, double now, int *ended, int *all_done, cl_error *err) {
    run *R = ctx;
    if (R->o->stall_timeout_s > 0)
        for (int k = 0; k < R->o->concurrency; k++) {
            slot *s = &R->slots[k];
            if (!s->busy || now - s->last_byte < R->o->stall_timeout_s) continue;
            snprintf(s->errbuf, sizeof s->errbuf, "no data from the server for %.1f s (stalled)", now - s->last_byte);
            (*ended)++;
            finish_attempt(R, s, CURLE_OPERATION_TIMEDOUT, now);
        }
    *all_done = R->n_final == R->b->n;
    return report(R, &R->last_progress, now, *all_done, err);
}

static int drv_idle(void *ctx) { const run *R = ctx; return R->active == 0 && R->queue.n_retry; }

cl_status cl_download_run(const cl_dl_opts *opts, const cl_dl_batch *batch, cl_error *err) {
    if (!opts || !batch) return cl_fail(err, CL_EINVAL, "download: options and batch are required");
    for (size_t i = 0; batch->results && i < batch->n; i++) { /* filled in every case, even a refused batch */
        cl_dl_result *r = &batch->results[i];
        memset(r, 0, sizeof *r);
        r->linked_size = r->content_length = -1;
        r->resumed_from = -1;
    }
    cl_status st = check_args(opts, batch, err);
    if (st) return st;
    if (batch->n == 0) return CL_OK;
    run R = {.o = opts, .b = batch, .last_progress = -INFINITY};
    R.rng = cl_http_seed(opts->seed);
    R.slots = calloc((size_t)opts->concurrency, sizeof *R.slots);
    R.rs = calloc(batch->n, sizeof *R.rs);
    if (!R.slots || !R.rs) { st = cl_fail(err, CL_ENOMEM, "download: out of memory for %zu requests", batch->n); goto done; }
    st = cl_http_queue_init(&R.queue, batch->n, err);
    if (st) goto done;
    for (size_t i = 0; i < batch->n; i++) R.rs[i].fd = -1;
    const char *fixed = "Accept-Encoding: identity"; /* sizes are of the bytes as stored */
    if (!(R.hdr_plain = curl_slist_append(NULL, fixed)) || !(R.hdr_auth = curl_slist_append(NULL, fixed))) {
        st = cl_fail(err, CL_ENOMEM, "download: out of memory for headers");
        goto done;
    }
    for (size_t k = 0; k < batch->n_headers; k++) {
        struct curl_slist *l = curl_slist_append(R.hdr_auth, batch->headers[k]);
        if (!l) { st = cl_fail(err, CL_ENOMEM, "download: out of memory for headers"); goto done; }
        R.hdr_auth = l;
    }
    st = cl_http_multi_new(&R.multi, opts->concurrency, err);
    if (st) goto done;
    double cap = 0.25;
    if (opts->stall_timeout_s > 0 && opts->stall_timeout_s / 4 < cap) cap = opts->stall_timeout_s / 4;
    cl_http_driver d = {&R, "download", &batch->cancel, cap, drv_start, drv_finished, drv_tick, drv_idle};
    st = cl_http_drive(R.multi, &d, err);
done:
    if (R.slots) {
        for (int k = 0; k < opts->concurrency; k++) cl_http_easy_free(R.multi, R.slots[k].easy, R.slots[k].busy);
    }
    if (R.multi) curl_multi_cleanup(R.multi);
    if (R.rs) {
        for (size_t i = 0; i < batch->n; i++) {
            req_state *q = &R.rs[i];
            cl_dl_result *r = &batch->results[i];
            if (!r->ok && r->failure == CL_DL_NONE) { /* never ended: the run stopped */
                r->failure = CL_DL_CANCELLED;
                r->attempts = q->attempts;
                r->bytes = q->have;
                snprintf(r->error, sizeof r->error, "stopped before the end (%lld bytes kept for the next run)", (long long)q->have);
            }
            if (q->fd >= 0) close(q->fd); /* the partial file stays: the next run resumes from it */
            free(q->url);
        }
    }
    cl_http_wipe_slist(R.hdr_auth);
    curl_slist_free_all(R.hdr_plain);
    free(R.slots);
    free(R.rs);
    cl_http_queue_free(&R.queue);
    return st;
}

void cl_dl_results_free(cl_dl_result *results, size_t n) {
    if (!results) return;
    for (size_t i = 0; i < n; i++) {
        free(results[i].location);
        free(results[i].url);
        results[i].location = results[i].url = NULL;
    }
}
