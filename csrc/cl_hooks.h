/* cl_hooks.h: the hook-point table, the single source of truth for TransformerLens hook names
 * and the shape of each activation. */
#ifndef CL_HOOKS_H
#define CL_HOOKS_H

#include "cl_model.h"

typedef enum {
    /* global, before the blocks */
    CL_HK_EMBED, CL_HK_POS_EMBED,
    /* per block */
    CL_HK_RESID_PRE, CL_HK_LN1_SCALE, CL_HK_LN1_NORMALIZED, CL_HK_Q, CL_HK_K, CL_HK_V, CL_HK_ROT_Q, CL_HK_ROT_K,
    CL_HK_ATTN_SCORES, CL_HK_PATTERN, CL_HK_Z, CL_HK_RESULT, CL_HK_ATTN_OUT, CL_HK_RESID_MID,
    CL_HK_LN2_SCALE, CL_HK_LN2_NORMALIZED, CL_HK_MLP_PRE, CL_HK_MLP_POST, CL_HK_MLP_OUT, CL_HK_RESID_POST,
    /* global, after the blocks */
    CL_HK_LNF_SCALE, CL_HK_LNF_NORMALIZED,
    CL_HK_COUNT
} cl_hook_kind;

/* Shape of an activation after its (batch, pos) axes; attention kinds are (batch, head, query, key). */
typedef struct {
    int ndim;     /* 1 or 2 feature dims */
    int dims[2];  /* e.g. (d_model), (1), (n_heads, d_head), (n_heads, d_model), (d_mlp) */
    int attention;/* 1 for attn_scores / pattern: (B, n_heads, T, T) */
} cl_hook_shape;

int cl_hook_is_block(cl_hook_kind k);
/* "blocks.{l}.attn.hook_q" etc. Returns 0 on success, -1 if the name is unknown or not available
 * for this model (explained in err). */
cl_status cl_hook_parse(const cl_config *cfg, const char *name, cl_hook_kind *kind, int *layer, cl_error *err);
void cl_hook_name(const cl_config *cfg, cl_hook_kind kind, int layer, char *buf, size_t n);
int cl_hook_available(const cl_config *cfg, cl_hook_kind kind);
cl_hook_shape cl_hook_shape_of(const cl_config *cfg, cl_hook_kind kind);
/* features per token (product of dims); for attention kinds, n_heads */
size_t cl_hook_features(const cl_config *cfg, cl_hook_kind kind);
/* slot index in a (CL_HK_COUNT x (n_layers + 1)) table; global hooks use layer n_layers */
static inline int cl_hook_slot_index(const cl_config *cfg, cl_hook_kind k, int layer) {
    return (int)k * (cfg->n_layers + 1) + (layer < 0 ? cfg->n_layers : layer);
}

#endif
