/* libFuzzer harness: a safetensors file (header + data), opened, every tensor converted. */
#include "fuzz_common.h"
#include <stdlib.h>
#include "cl_safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char path[64];
    int fd = fuzz_file(data, size, path, sizeof path);
    if (fd < 0) return 0;
    cl_st_set *s = NULL;
    cl_error err = {0};
    if (cl_st_open(path, &s, &err) == CL_OK) {
        for (int i = 0; i < s->n_tensors; i++) {
            const cl_st_tensor *t = &s->tensors[i];
            size_t es = cl_dtype_size(t->dtype), n = es ? (t->end - t->begin) / es : 0;
            if (n && n < (1u << 20)) {
                float *f = malloc(n * sizeof *f);
                if (f) cl_to_f32(f, t->data, n, t->dtype, &err);
                free(f);
            }
            if (cl_st_find(s, t->name) != t) abort(); /* names are unique and sorted */
        }
        cl_st_check(s, &err);
        cl_st_close(s);
    }
    close(fd);
    return 0;
}
