/* cl_download.h: file transfers for the Hugging Face Hub client, many at once (libcurl multi).
 *
 * Two kinds of request. HEAD: the metadata headers of one URL (X-Repo-Commit, ETag, X-Linked-Etag,
 * X-Linked-Size, Content-Length, Location, X-Error-Code, X-Error-Message), following redirects
 * that stay on the same origin (scheme, host, port) and stopping at the first one that leaves it
 * (a CDN), whose target is reported. GET: the body into a partial file, resumed with an HTTP
 * Range from the bytes already there (left by an interrupted run or a dropped connection),
 * checked against the expected size and sha256 when complete, and only then renamed to its final
 * path; a wrong digest or size deletes the partial file. Redirects are followed (libcurl drops the
 * Authorization header when one changes host or port).
 *
 * Retries with backoff and jitter on 408/409/429/5xx (honouring Retry-After), connection failures,
 * resets and stalls (no byte for stall_timeout_s). A GET attempt that added bytes to the file is
 * not counted against max_retries, so a large download over a flaky link keeps going as long as
 * it moves. Knows nothing of JSON, of the Hub's cache layout or of models. curl_global_init must
 * have been called once before (the Python module does it). */
#ifndef CL_DOWNLOAD_H
#define CL_DOWNLOAD_H

#include "cl_common.h"

typedef struct {
    int concurrency;           /* transfers in flight at most (>= 1) */
    double connect_timeout_s;  /* 0 = libcurl's default */
    double stall_timeout_s;    /* an attempt that receives nothing for this long fails (retried); 0 = never */
    double head_timeout_s;     /* whole-attempt limit for HEAD requests; 0 = none */
    int max_retries;           /* counted failed attempts after the first (>= 0) */
    int max_connect_retries;   /* of those, at most this many after "could not resolve / connect" */
    double backoff_base_s;     /* first retry waits base * [0.5, 1), doubling after each counted failure */
    double backoff_max_s;      /* cap on one wait */
    double retry_after_max_s;  /* a longer Retry-After ends the request as failed */
    int max_redirects;         /* per attempt (>= 0) */
    uint64_t seed;             /* jitter; 0 = from the clock */
} cl_dl_opts;

cl_dl_opts cl_dl_opts_default(void);

typedef struct {
    const char *url;
    int head;               /* 1: HEAD; 0: GET into part_path */
    int auth;               /* 1: send the batch's headers (e.g. "Authorization: Bearer ...") */
    const char *part_path;  /* GET: the partial file, created if missing, resumed if not empty */
    const char *final_path; /* GET: part_path is renamed to this once complete and verified; NULL = stays */
    int64_t size;           /* GET: expected bytes; < 0 = unknown (then whatever the server sends) */
    const char *sha256;     /* GET: expected digest (64 hex digits, any case); NULL = not checked */
} cl_dl_req;

typedef enum {
    CL_DL_NONE = 0,  /* success */
    CL_DL_HTTP,      /* an HTTP error status (after retries when retryable) */
    CL_DL_NETWORK,   /* no response: refused, reset, unresolvable host, body cut short */
    CL_DL_TIMEOUT,   /* the server stalled past stall_timeout_s (or head_timeout_s) */
    CL_DL_SIZE,      /* the complete body has the wrong size (the partial file is deleted) */
    CL_DL_HASH,      /* the complete body has the wrong sha256 (the partial file is deleted) */
    CL_DL_DISK,      /* the disk is full (or over quota) */
    CL_DL_IO,        /* a local file could not be opened, written or renamed */
    CL_DL_CANCELLED  /* the run stopped (cancel callback) before this request ended */
} cl_dl_failure;

typedef struct {
    int ok;
    cl_dl_failure failure;
    long status;            /* HTTP status of the last response; 0 when none came */
    int curl_code;          /* CURLcode of the last attempt */
    int attempts;           /* attempts started (HEAD: each redirect hop too) */
    int range_attempts;     /* GET attempts that asked for a byte range */
    int64_t resumed_from;   /* GET: byte offset of the first Range request; -1 = none */
    int64_t bytes;          /* GET: size of the file at the end */
    int64_t received;       /* GET: body bytes written to the file in this run */
    double seconds;
    char error[512];        /* why it failed; empty on success */
    /* headers of the last response (HEAD: of the last hop); "" / -1 when absent */
    char commit[64];        /* X-Repo-Commit */
    char etag[160];         /* ETag, as sent */
    char linked_etag[160];  /* X-Linked-Etag, as sent */
    int64_t linked_size;    /* X-Linked-Size */
    int64_t content_length; /* Content-Length */
    char error_code[64];    /* X-Error-Code */
    char error_message[256];/* X-Error-Message */
    char *location;         /* HEAD: absolute target of a redirect not followed; malloc'd or NULL */
    char *url;              /* the URL of the last response; malloc'd or NULL */
} cl_dl_result;

/* Progress, called from the thread that runs cl_download_run, at most every 100 ms while bytes
 * arrive and once at the end: body bytes written in this run (all files) and requests finished.
 * A non-OK return stops the run with that status (the callback fills err). */
typedef cl_status (*cl_dl_progress_fn)(void *ctx, int64_t received, size_t finished, cl_error *err);

typedef struct {
    const cl_dl_req *reqs;
    size_t n;
    const char *const *headers; /* "Name: value" lines sent with requests that have auth = 1 */
    size_t n_headers;
    cl_dl_result *results;      /* n of them, filled; release with cl_dl_results_free */
    cl_dl_progress_fn progress; /* may be NULL */
    void *ctx;
    cl_cancel cancel;           /* checked between polling rounds, at most every 50 ms */
} cl_dl_batch;

/* Run every request to its end. Per-request failures are in results (not an error here). Errors:
 * CL_EINVAL (bad options or request), CL_ENOMEM, CL_EHTTP (libcurl could not be set up),
 * CL_ECANCELLED (cancel callback: partial files stay for the next run to resume), or what the
 * progress callback returned. results (when not NULL) are filled in every case, so
 * cl_dl_results_free is always safe after the call. */
cl_status cl_download_run(const cl_dl_opts *opts, const cl_dl_batch *batch, cl_error *err);

void cl_dl_results_free(cl_dl_result *results, size_t n);

/* Short name of a failure kind ("http", "network", ...; "" for CL_DL_NONE). */
const char *cl_dl_failure_name(cl_dl_failure f);

#endif
