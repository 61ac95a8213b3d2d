/* cl_common.c: the error record, the thread setting and small file helpers. No Python, no printing. */
#include "cl_common.h"

#include <errno.h>
#include <fcntl.h>
#include <omp.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

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

int cl_open_regular(const char *path, cl_error *err) {
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) { cl_fail(err, CL_EIO, "%s: cannot open: %s", path, strerror(errno)); return -1; }
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        cl_fail(err, CL_EIO, "%s: cannot stat: %s", path, strerror(errno));
        close(fd);
        return -1;
    }
    if (!S_ISREG(sb.st_mode)) {
        const char *what = S_ISDIR(sb.st_mode) ? "a directory" : S_ISFIFO(sb.st_mode) ? "a FIFO (named pipe)"
                         : S_ISSOCK(sb.st_mode) ? "a socket" : S_ISCHR(sb.st_mode) ? "a character device"
                         : S_ISBLK(sb.st_mode) ? "a block device" : "not a regular file";
        cl_fail(err, CL_EIO, "%s: is %s, not a regular file", path, what);
        close(fd);
        return -1;
    }
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0) fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
    return fd;
}

cl_status cl_read_file_max(const char *path, size_t max_bytes, char **data, size_t *len, cl_error *err) {
    *data = NULL;
    if (len) *len = 0;
    if (!max_bytes) max_bytes = CL_READ_FILE_MAX;
    int fd = cl_open_regular(path, err);
    if (fd < 0) return err ? err->code : CL_EIO;
    FILE *f = fdopen(fd, "rb");
    if (!f) { close(fd); return cl_fail(err, CL_EIO, "%s: cannot open: %s", path, strerror(errno)); }
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
        if (cap >= max_bytes) {
            free(buf); fclose(f);
            return cl_fail(err, CL_EFORMAT, "%s: larger than %zu bytes, too large for this file", path, max_bytes);
        }
        size_t ncap = 2 * cap < max_bytes ? 2 * cap : max_bytes;
        char *nb = realloc(buf, ncap + 1);
        if (!nb) { free(buf); fclose(f); return cl_fail(err, CL_ENOMEM, "%s: out of memory", path); }
        buf = nb;
        cap = ncap;
    }
    fclose(f);
    buf[n] = '\0';
    *data = buf;
    if (len) *len = n;
    return CL_OK;
}

cl_status cl_read_file(const char *path, char **data, size_t *len, cl_error *err) {
    return cl_read_file_max(path, 0, data, len, err);
}

static atomic_int num_threads; /* 0: not chosen yet */

int cl_num_threads(void) {
    int n = atomic_load(&num_threads);
    if (n > 0) return n;
    n = omp_get_max_threads();
    return n > 0 ? n : 1;
}

void cl_set_num_threads(int n) { atomic_store(&num_threads, n > 0 ? n : 0); }
