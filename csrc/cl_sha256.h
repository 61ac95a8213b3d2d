/* cl_sha256.h: SHA-256 (FIPS 180-4), incremental, for checking downloaded files against the
 * digests the Hugging Face Hub publishes (the X-Linked-Etag of an LFS file is its sha256). */
#ifndef CL_SHA256_H
#define CL_SHA256_H

#include <stddef.h>
#include <stdint.h>

#include "cl_common.h"

typedef struct {
    uint32_t h[8];
    uint64_t n;          /* bytes hashed so far */
    unsigned char buf[64];
    size_t buf_n;
} cl_sha256;

void cl_sha256_init(cl_sha256 *s);
void cl_sha256_update(cl_sha256 *s, const void *data, size_t len);
void cl_sha256_final(cl_sha256 *s, unsigned char out[32]);

/* 32-byte digest -> 64 lowercase hex digits and a NUL. */
void cl_sha256_hex(const unsigned char digest[32], char out[65]);

/* Hash the first `len` bytes of an open file descriptor (from offset 0) into s, with pread: the
 * file offset is not moved. CL_EIO if the file is shorter or unreadable; CL_ECANCELLED if `cancel`
 * (may be NULL; checked every 64 MiB) asks to stop. */
cl_status cl_sha256_fd(cl_sha256 *s, int fd, uint64_t len, const cl_cancel *cancel, cl_error *err);

#endif
