/* libFuzzer harness: a tokenizer file. The first byte picks the form: tokenizer.json, or
 * vocab.json + merges.txt split at the first NUL; a loaded tokenizer then encodes and decodes
 * the input's tail. */
#include "fuzz_common.h"
#include <stdlib.h>
#include <sys/stat.h>
#include "cl_tokenizer.h"

static char dir[64];

static void put(const char *name, const uint8_t *d, size_t n) {
    char p[128];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *f = fopen(p, "wb");
    if (!f) abort();
    if (n) fwrite(d, 1, n, f);
    fclose(f);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!dir[0]) {
        snprintf(dir, sizeof dir, "/tmp/cl_fuzz_tok_%d", (int)getpid());
        mkdir(dir, 0700);
    }
    if (size < 1) return 0;
    int json = data[0] & 1;
    data++, size--;
    char tj[128], vj[128], mt[128];
    snprintf(tj, sizeof tj, "%s/tokenizer.json", dir);
    snprintf(vj, sizeof vj, "%s/vocab.json", dir);
    snprintf(mt, sizeof mt, "%s/merges.txt", dir);
    unlink(tj), unlink(vj), unlink(mt);
    if (json) put("tokenizer.json", data, size);
    else {
        const uint8_t *z = memchr(data, 0, size);
        size_t a = z ? (size_t)(z - data) : size;
        put("vocab.json", data, a);
        put("merges.txt", z ? z + 1 : data + size, z ? size - a - 1 : 0);
    }
    cl_tokenizer *t = NULL;
    cl_error err = {0};
    if (cl_tokenizer_load(dir, &t, &err) == CL_OK) {
        const char *text = (const char *)data + size / 2;
        size_t len = size - size / 2;
        cl_tok_result r = {0};
        if (cl_tokenizer_encode(t, text, len, 0, &r, NULL, &err) == CL_OK) {
            char *out = NULL;
            size_t out_len = 0;
            if (cl_tokenizer_decode(t, r.ids, r.n, 0, &out, &out_len, &err) == CL_OK) free(out);
        }
        cl_tok_result_free(&r);
        cl_tokenizer_free(t);
    }
    return 0;
}
