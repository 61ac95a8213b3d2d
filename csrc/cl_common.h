/* cl_common.h: status codes, the error record and cancellation shared by the whole C core.
 * Nothing here knows about Python: the C library never includes Python.h, never exits,
 * aborts or prints. Every fallible function takes a cl_error * and returns a cl_status. */
#ifndef CL_COMMON_H
#define CL_COMMON_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
    CL_OK = 0,
    CL_ENOMEM,     /* allocation failed */
    CL_EINVAL,     /* bad argument: ids out of range, wrong shape, unknown hook */
    CL_EIO,        /* a file could not be opened, read or mapped */
    CL_EFORMAT,    /* a file is malformed: safetensors header, config.json, tokenizer files */
    CL_EHTTP,      /* network */
    CL_ECANCELLED, /* the cancel callback asked us to stop (Ctrl-C) */
    CL_ECALLBACK   /* a user callback (Python hook) raised; the binding holds the exception */
} cl_status;

typedef struct {
    cl_status code;
    char msg[512];
} cl_error;

/* Fill err (may be NULL) with code and a printf-style message; returns code. */
cl_status cl_fail(cl_error *err, cl_status code, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

/* Cancellation: long work calls cl_cancel_check() between steps; a non-zero return from the
 * callback stops the work with CL_ECANCELLED. The binding's callback re-takes the GIL and runs
 * PyErr_CheckSignals, so Ctrl-C in Jupyter stops a forward pass between layers. */
typedef int (*cl_cancel_fn)(void *ctx);
typedef struct {
    cl_cancel_fn fn;
    void *ctx;
} cl_cancel;

static inline int cl_cancel_check(const cl_cancel *c) { return c && c->fn && c->fn(c->ctx); }

/* Overflow-checked size arithmetic for every size or offset that comes from a file: each returns
 * 0 on overflow (and leaves *out alone), 1 with the result in *out. */
static inline int cl_mul_size(size_t a, size_t b, size_t *out) {
    if (a != 0 && b > SIZE_MAX / a) return 0;
    *out = a * b;
    return 1;
}
static inline int cl_add_size(size_t a, size_t b, size_t *out) {
    if (b > SIZE_MAX - a) return 0;
    *out = a + b;
    return 1;
}
/* *acc += a * b, checked; once an overflow happened *acc stays SIZE_MAX and the result is 0. */
static inline int cl_mul_add_size(size_t *acc, size_t a, size_t b) {
    size_t p;
    if (*acc == SIZE_MAX || !cl_mul_size(a, b, &p) || !cl_add_size(*acc, p, acc)) { *acc = SIZE_MAX; return 0; }
    return 1;
}

/* Threads for the core's parallel work (GEMMs included): one OpenMP team, one setting.
 * Default: OpenMP's default (OMP_NUM_THREADS, else the CPUs). Every parallel region in the core
 * names it (num_threads(cl_num_threads())), so it holds on whichever thread calls the core. */
int cl_num_threads(void);
void cl_set_num_threads(int n);

/* Read a whole small file (config.json, vocab.json) into a NUL-terminated buffer. Only a regular
 * file is read (a FIFO or device is refused at once, never blocked on), and at most max_bytes of
 * it (0: CL_READ_FILE_MAX); a longer file is a CL_EFORMAT error naming the limit. */
#define CL_READ_FILE_MAX ((size_t)1 << 30)
cl_status cl_read_file(const char *path, char **data, size_t *len, cl_error *err);
cl_status cl_read_file_max(const char *path, size_t max_bytes, char **data, size_t *len, cl_error *err);

/* open(path, O_RDONLY) for a regular file only: opened with O_NONBLOCK (a FIFO cannot block the
 * open), then fstat'ed; anything but a regular file is a CL_EIO error naming the path and what it
 * is. Returns the descriptor (O_NONBLOCK cleared) or -1 with err filled. */
int cl_open_regular(const char *path, cl_error *err);

#endif
