/* cl_hooks.c: hook names <-> (kind, layer), availability per architecture, activation shapes.
 * Everything that lists hook names (the Python side's model.hook_names included) reads this. */
#include "cl_hooks.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const SUFFIX[CL_HK_COUNT] = {
    [CL_HK_EMBED] = "hook_embed",
    [CL_HK_POS_EMBED] = "hook_pos_embed",
    [CL_HK_RESID_PRE] = "hook_resid_pre",
    [CL_HK_LN1_SCALE] = "ln1.hook_scale",
    [CL_HK_LN1_NORMALIZED] = "ln1.hook_normalized",
    [CL_HK_Q] = "attn.hook_q",
    [CL_HK_K] = "attn.hook_k",
    [CL_HK_V] = "attn.hook_v",
    [CL_HK_ROT_Q] = "attn.hook_rot_q",
    [CL_HK_ROT_K] = "attn.hook_rot_k",
    [CL_HK_ATTN_SCORES] = "attn.hook_attn_scores",
    [CL_HK_PATTERN] = "attn.hook_pattern",
    [CL_HK_Z] = "attn.hook_z",
    [CL_HK_RESULT] = "attn.hook_result",
    [CL_HK_ATTN_OUT] = "hook_attn_out",
    [CL_HK_RESID_MID] = "hook_resid_mid",
    [CL_HK_LN2_SCALE] = "ln2.hook_scale",
    [CL_HK_LN2_NORMALIZED] = "ln2.hook_normalized",
    [CL_HK_MLP_PRE] = "mlp.hook_pre",
    [CL_HK_MLP_POST] = "mlp.hook_post",
    [CL_HK_MLP_OUT] = "hook_mlp_out",
    [CL_HK_RESID_POST] = "hook_resid_post",
    [CL_HK_LNF_SCALE] = "ln_final.hook_scale",
    [CL_HK_LNF_NORMALIZED] = "ln_final.hook_normalized",
};

int cl_hook_is_block(cl_hook_kind k) { return k >= CL_HK_RESID_PRE && k <= CL_HK_RESID_POST; }

int cl_hook_available(const cl_config *cfg, cl_hook_kind k) {
    if (k == CL_HK_POS_EMBED) return cfg->rotary_dim == 0;
    if (k == CL_HK_ROT_Q || k == CL_HK_ROT_K) return cfg->rotary_dim > 0;
    if (k == CL_HK_RESID_MID) return !cfg->parallel;
    return 1;
}

void cl_hook_name(const cl_config *cfg, cl_hook_kind kind, int layer, char *buf, size_t n) {
    if (cl_hook_is_block(kind)) snprintf(buf, n, "blocks.%d.%s", layer, SUFFIX[kind]);
    else snprintf(buf, n, "%s", SUFFIX[kind]);
}

cl_status cl_hook_parse(const cl_config *cfg, const char *name, cl_hook_kind *kind, int *layer, cl_error *err) {
    const char *rest = name;
    int l = -1;
    if (strncmp(name, "blocks.", 7) == 0) {
        char *end;
        long v = strtol(name + 7, &end, 10);
        if (end == name + 7 || *end != '.')
            return cl_fail(err, CL_EINVAL, "hook '%s': expected 'blocks.<layer>.<hook>'", name);
        if (v < 0 || v >= cfg->n_layers)
            return cl_fail(err, CL_EINVAL, "hook '%s': layer %ld is outside [0, %d)", name, v, cfg->n_layers);
        l = (int)v;
        rest = end + 1;
    }
    for (int k = 0; k < CL_HK_COUNT; k++) {
        if (strcmp(rest, SUFFIX[k]) != 0) continue;
        if (cl_hook_is_block((cl_hook_kind)k) != (l >= 0)) continue;
        if (!cl_hook_available(cfg, (cl_hook_kind)k))
            return cl_fail(err, CL_EINVAL, "hook '%s' does not exist in this model (%s)", name,
                           k == CL_HK_RESID_MID ? "parallel attention and MLP have no resid_mid"
                           : k == CL_HK_POS_EMBED ? "rotary models have no positional embedding"
                                                  : "no rotary embedding");
        *kind = (cl_hook_kind)k;
        *layer = l;
        return CL_OK;
    }
    return cl_fail(err, CL_EINVAL, "unknown hook name '%s' (see model.hook_names)", name);
}

cl_hook_shape cl_hook_shape_of(const cl_config *c, cl_hook_kind k) {
    cl_hook_shape s = {1, {c->d_model, 0}, 0};
    switch (k) {
    case CL_HK_LN1_SCALE: case CL_HK_LN2_SCALE: case CL_HK_LNF_SCALE: s.dims[0] = 1; break;
    case CL_HK_Q: case CL_HK_K: case CL_HK_V: case CL_HK_ROT_Q: case CL_HK_ROT_K: case CL_HK_Z:
        s.ndim = 2; s.dims[0] = c->n_heads; s.dims[1] = c->d_head; break;
    case CL_HK_RESULT: s.ndim = 2; s.dims[0] = c->n_heads; s.dims[1] = c->d_model; break;
    case CL_HK_ATTN_SCORES: case CL_HK_PATTERN: s.ndim = 1; s.dims[0] = c->n_heads; s.attention = 1; break;
    case CL_HK_MLP_PRE: case CL_HK_MLP_POST: s.dims[0] = c->d_mlp; break;
    default: break;
    }
    return s;
}

size_t cl_hook_features(const cl_config *cfg, cl_hook_kind kind) {
    cl_hook_shape s = cl_hook_shape_of(cfg, kind);
    return s.ndim == 2 ? (size_t)s.dims[0] * s.dims[1] : (size_t)s.dims[0];
}
