/* cl_http.h: many HTTP POSTs in flight at once (libcurl multi interface), with a request- and
 * token-per-minute limiter, a per-attempt timeout, and retries with exponential backoff and
 * jitter on 408/409/429/5xx, connection failures, resets and timeouts, honouring Retry-After.
 * Knows nothing of JSON or of any model API: a caller's check callback decides whether a 2xx
 * body is usable, and a done callback receives each request's outcome as soon as it is final.
 * curl_global_init must have been called once before (the Python module does it). */
#ifndef CL_HTTP_H
#define CL_HTTP_H

#include "cl_common.h"

typedef struct {
    int concurrency;          /* attempts in flight at most (>= 1) */
    double rpm;               /* attempts started per minute at most; 0 = no limit */
    double tpm;               /* tokens per minute, by each request's `tokens` estimate; 0 = no limit */
    double timeout_s;         /* whole-attempt timeout (connect, send, wait, receive); 0 = none */
    double connect_timeout_s; /* 0 = libcurl's default */
    int max_retries;          /* attempts after the first, at most (>= 0) */
    double backoff_base_s;    /* first retry waits base * [0.5, 1), doubling on each later one */
    double backoff_max_s;     /* cap on one backoff wait */
    double retry_after_max_s; /* a Retry-After longer than this ends the request as failed */
    uint64_t seed;            /* jitter generator; 0 = seeded from the clock */
} cl_http_opts;

/* The defaults used when a caller has no opinion (the Python Client's defaults too). */
cl_http_opts cl_http_opts_default(void);

typedef struct {
    const char *url;
    const char *body; /* POSTed as is; must stay valid during cl_http_run */
    size_t body_len;
    double tokens;    /* cost against opts.tpm (estimate: prompt + max completion tokens) */
} cl_http_req;

/* Outcome of one request: the last attempt's response (or failure). */
typedef struct {
    int ok;               /* 1: a 2xx response the check accepted; 0: failed after retries */
    long status;          /* HTTP status of the last attempt; 0 when no response came */
    const char *body;     /* the last response body, NUL-terminated (never NULL); valid during the callback */
    size_t body_len;
    int attempts;         /* attempts made, >= 1 */
    int curl_code;        /* CURLcode of the last attempt; 0 when a response came */
    double retry_after_s; /* the last response's Retry-After / retry-after-ms; < 0 when absent */
    double seconds;       /* first start to the end of the last attempt */
    char error[256];      /* why the last attempt failed: curl's message, the check's reason, or a refused
                             Retry-After; empty for a plain HTTP status */
} cl_http_result;

/* Verdict of a check callback on a 2xx response. */
enum { CL_HTTP_ACCEPT = 0, CL_HTTP_RETRY = 1 };

/* Called (GIL or not: no locking is done) for every 2xx response before it is accepted; return
 * CL_HTTP_RETRY and a reason in `why` to treat the response as transient (a truncated or
 * malformed body). May be NULL: every 2xx is accepted. */
typedef int (*cl_http_check_fn)(void *ctx, size_t i, const cl_http_result *r, char *why, size_t why_len);

/* Called once per request when it is final (accepted, or failed after retries), in completion
 * order, from the thread that called cl_http_run. A non-OK return stops the whole run with that
 * status (the callback fills err). */
typedef cl_status (*cl_http_done_fn)(void *ctx, size_t i, const cl_http_result *r, cl_error *err);

/* Limiter state carried from one run to the next, so that many small runs (one request each,
 * say) together still keep opts.rpm / opts.tpm. Times are CLOCK_MONOTONIC seconds (Python's
 * time.monotonic on Linux); all zero for a fresh limiter. */
typedef struct {
    double rpm_next;    /* when the next attempt may start under opts.rpm */
    double tpm_next;    /* ... under opts.tpm */
    double pause_until; /* a 429 with Retry-After pauses every start until then */
} cl_http_limiter;

typedef struct {
    const cl_http_req *reqs;
    size_t n;
    const char *const *headers; /* "Name: value" lines sent with every request; n_headers of them */
    size_t n_headers;
    cl_http_check_fn check;
    cl_http_done_fn done;
    void *ctx;
    cl_cancel cancel;         /* checked between polling rounds, at most every 50 ms */
    cl_http_limiter *limiter; /* in/out; NULL = a fresh limiter for this run only */
} cl_http_batch;

typedef struct {
    long attempts;          /* attempts started */
    long retries;           /* attempts after a request's first */
    long failed;            /* requests that ended in failure */
    long transport_errors;  /* attempts that got no HTTP response */
    long rate_limited;      /* 429 responses */
    long server_errors;     /* 5xx responses */
    long rejected;          /* 2xx responses the check refused */
    int max_in_flight;
    double seconds;
} cl_http_stats;

/* Run the batch to completion. Per-request failures go to `done` (not an error here). Errors:
 * CL_EINVAL (bad options or request), CL_ENOMEM, CL_EHTTP (libcurl could not be set up),
 * CL_ECANCELLED (cancel callback), or whatever `done` returned. `stats` may be NULL. Secrets in
 * headers are wiped from libcurl's copies before they are freed. */
cl_status cl_http_run(const cl_http_opts *opts, const cl_http_batch *batch, cl_http_stats *stats, cl_error *err);

/* Retry-After value (delta-seconds or an HTTP-date) -> seconds from now; < 0 if unparseable. */
double cl_http_parse_retry_after(const char *value);

/* ---- pieces shared with the download engine (cl_download.c) ---- */

struct curl_slist;

/* CLOCK_MONOTONIC seconds. */
double cl_http_now(void);
/* A jitter generator state: `seed`, or one from the clock when 0 (never 0). */
uint64_t cl_http_seed(uint64_t seed);
/* Uniform in [0, 1). */
double cl_http_jitter(uint64_t *rng);
/* Wait before the next attempt after `attempts` failed ones: base * 2^(attempts-1), capped at max,
 * times a jitter factor in [0.5, 1). */
double cl_http_backoff(double base_s, double max_s, int attempts, uint64_t *rng);
/* Whether a failed attempt is worth retrying: a libcurl code (connection refused or reset, timeout,
 * partial body, ...), or an HTTP status (408, 409, 429, 5xx). */
int cl_http_retryable_curl(int curl_code);
int cl_http_retryable_status(long status);
/* If the header line p[0..n) is "Name: value" for `name` (case-insensitive), point *value just past
 * the colon and return 1. */
int cl_http_header_value(const char *p, size_t n, const char *name, const char **value);
/* Overwrite then free libcurl's copies of header lines (they may hold a token). */
void cl_http_wipe_slist(struct curl_slist *l);
/* A transfer handle with what both engines set: no signals, `priv` as CURLINFO_PRIVATE and the
 * callbacks' data, the body and header callbacks, the error buffer (CURL_ERROR_SIZE bytes), TCP
 * keep-alive, `user_agent`, the connect timeout (when > 0) and http/https only (redirects too). */
typedef size_t (*cl_http_write_fn)(char *p, size_t size, size_t nmemb, void *priv);
cl_status cl_http_easy_new(void **easy /* CURL ** */, void *priv, cl_http_write_fn on_body, cl_http_write_fn on_header,
                           char *errbuf, const char *user_agent, double connect_timeout_s, cl_error *err);
/* A transfer handle's end: out of the multi handle first when it is in one (`busy`); NULL is fine. */
void cl_http_easy_free(void *multi /* CURLM * */, void *easy /* CURL * */, int busy);
/* The multi handle of a run of `concurrency` transfers at once. */
cl_status cl_http_multi_new(void **multi /* CURLM ** */, int concurrency, cl_error *err);
/* Request i's transfer joins the multi handle, unless setting its options failed (`setopt`, a
 * CURLcode); either failure is an error naming it. */
cl_status cl_http_add_transfer(void *multi /* CURLM * */, void *easy /* CURL * */, int setopt, size_t i, cl_error *err);

/* Which of a batch's n requests starts next, for both engines: a retry whose backoff has passed
 * (the one due earliest) before the next request not yet tried; requests start in batch order. */
typedef struct {
    size_t n;           /* requests in the batch */
    size_t next_fresh;  /* the next request not yet tried (n: none left) */
    size_t n_retry;     /* retries waiting */
    size_t *retry;      /* [n] their indices (first n_retry used) */
    double *not_before; /* [n] per request: the earliest start of its next attempt */
    size_t picked;      /* cl_http_queue_peek's pick: a position in retry, or (size_t)-1 for fresh */
} cl_http_queue;
cl_status cl_http_queue_init(cl_http_queue *q, size_t n, cl_error *err);
void cl_http_queue_free(cl_http_queue *q);
/* Request i waits for another attempt, not before time `not_before`. */
void cl_http_queue_retry(cl_http_queue *q, size_t i, double not_before);
/* The request that may start at `now`: 1 and *i, or 0 when none may (no retry is due and every
 * request has been tried). *wake is lowered to when the earliest waiting retry becomes due, if that
 * is still to come. Nothing is taken until cl_http_queue_take. */
int cl_http_queue_peek(cl_http_queue *q, double now, size_t *i, double *wake);
/* The request of the last successful peek starts: it leaves the queue. */
void cl_http_queue_take(cl_http_queue *q);

/* The multi-interface loop both engines run. Each round: check cancellation (every
 * CL_HTTP_CANCEL_EVERY_S), start what is due, let libcurl move data, hand every finished
 * transfer back, run the engine's periodic checks; then, unless something finished, wait on the
 * sockets until the next thing is due, at most idle_cap_s (CL_HTTP_CANCEL_EVERY_S with a cancel
 * callback). Returns the first error of a callback, of libcurl, or CL_ECANCELLED. */
#define CL_HTTP_CANCEL_EVERY_S 0.05
typedef struct {
    void *ctx;
    const char *what;       /* "http", "download": the cancel message's prefix */
    const cl_cancel *cancel; /* may be NULL */
    double idle_cap_s;      /* the longest wait between rounds, without a cancel callback */
    /* start what is due at `now`; *wake: when something next becomes due (absolute) */
    cl_status (*start)(void *ctx, double now, double *wake, cl_error *err);
    /* a transfer ended with libcurl result `code`; priv: its CURLINFO_PRIVATE. *counted = 1 when
     * it ended one of the engine's attempts */
    cl_status (*finished)(void *ctx, void *priv, int code, double now, int *counted, cl_error *err);
    /* after the finished transfers of a round: the engine's own checks (stalls, progress); adds
     * the attempts it ended to *ended; *all_done = 1 when every request is final */
    cl_status (*tick)(void *ctx, double now, int *ended, int *all_done, cl_error *err);
    /* nothing in flight and something due at sub-millisecond distance: wait 1 ms, do not spin */
    int (*idle)(void *ctx);
} cl_http_driver;
cl_status cl_http_drive(void *multi /* CURLM * */, const cl_http_driver *d, cl_error *err);

#endif
