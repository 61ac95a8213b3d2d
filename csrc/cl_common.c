/* cl_common.c: the error record, the thread setting and small file helpers. No Python, no printing. */
#include "cl_common.h"

#include <errno.h>
#include <omp.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

cl_status cl_fail(cl_error *err, cl_status code, const char *fmt, ...) {
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
        err->code = code;
    }
    return code;
}

cl_status cl_read_file(const char *path, char **data, size_t *len, cl_error *err) {
    *data = NULL;
    if (len) *len = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return cl_fail(err, CL_EIO, "%s: cannot open: %s", path, strerror(errno));
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap + 1);
    if (!buf) { fclose(f); return cl_fail(err, CL_ENOMEM, "%s: out of memory", path); }
    for (;;) {
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (n < cap) {
            if (ferror(f)) {
                free(buf); fclose(f);
                return cl_fail(err, CL_EIO, "%s: read error", path);
            }
            break;
        }
        char *nb = realloc(buf, 2 * cap + 1);
        if (!nb) { free(buf); fclose(f); return cl_fail(err, CL_ENOMEM, "%s: out of memory", path); }
        buf = nb;
        cap *= 2;
    }
    fclose(f);
    buf[n] = '\0';
    *data = buf;
    if (len) *len = n;
    return CL_OK;
}

static atomic_int num_threads; /* 0: not chosen yet */

int cl_num_threads(void) {
    int n = atomic_load(&num_threads);
    if (n > 0) return n;
    n = omp_get_max_threads();
    return n > 0 ? n : 1;
}

void cl_set_num_threads(int n) { atomic_store(&num_threads, n > 0 ? n : 0); }
