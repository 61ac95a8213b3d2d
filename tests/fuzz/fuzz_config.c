/* libFuzzer harness: config.json text -> cl_config, which must then be within the bounds. */
#include "fuzz_common.h"
#include <stdlib.h>
#include "cl_model.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *json = malloc(size + 1);
    if (!json) return 0;
    memcpy(json, data, size);
    json[size] = '\0';
    cl_config c;
    cl_error err = {0};
    if (cl_config_parse(&c, json, "config.json", &err) == CL_OK) {
        if (c.n_layers < 1 || c.n_layers > CL_MAX_LAYERS || c.d_model < 1 || c.d_model > CL_MAX_D_MODEL ||
            c.n_heads < 1 || c.d_head * c.n_heads != c.d_model || c.d_mlp < 1 || c.d_mlp > CL_MAX_D_MLP ||
            c.d_vocab < 1 || c.d_vocab > CL_MAX_VOCAB || c.n_ctx < 1 || c.n_ctx > CL_MAX_CTX ||
            c.rotary_dim < 0 || c.rotary_dim > c.d_head || c.rotary_dim % 2)
            abort();
    }
    free(json);
    return 0;
}
