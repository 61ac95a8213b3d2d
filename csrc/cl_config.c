/* cl_config.c: config.json (GPT2LMHeadModel, GPTNeoXForCausalLM) -> cl_config, validated.
 * Understands both the classic field names (rotary_pct, rotary_emb_base) and transformers 5's
 * rope_parameters. Every unsupported option is an error naming the field, never ignored. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "cl_model.h"

/* The value of key k in object o; with duplicated keys the last one, as Python's json (and so
 * transformers) reads them. cJSON keeps every duplicate and its own lookup returns the first. */
static const cJSON *get(const cJSON *o, const char *k) {
    const cJSON *found = NULL;
    if (!cJSON_IsObject(o)) return NULL;
    for (const cJSON *x = o->child; x; x = x->next)
        if (x->string && !strcmp(x->string, k)) found = x;
    return found;
}

static cl_status get_int(const cJSON *o, const char *k, int *v, int required, int dflt, const char *path, cl_error *err) {
    const cJSON *x = get(o, k);
    if (!x || cJSON_IsNull(x)) {
        if (required) return cl_fail(err, CL_EFORMAT, "%s: field '%s' is missing", path, k);
        *v = dflt;
        return CL_OK;
    }
    if (!cJSON_IsNumber(x) || x->valuedouble != floor(x->valuedouble) || x->valuedouble > 1e9 || x->valuedouble < -1e9)
        return cl_fail(err, CL_EFORMAT, "%s: field '%s' must be an integer (of at most 1e9 in size)", path, k);
    *v = (int)x->valuedouble;
    return CL_OK;
}

static cl_status get_num(const cJSON *o, const char *k, double *v, double dflt, const char *path, cl_error *err) {
    const cJSON *x = get(o, k);
    if (!x || cJSON_IsNull(x)) { *v = dflt; return CL_OK; }
    if (!cJSON_IsNumber(x)) return cl_fail(err, CL_EFORMAT, "%s: field '%s' must be a number", path, k);
    *v = x->valuedouble;
    return CL_OK;
}

static cl_status get_bool(const cJSON *o, const char *k, int *v, int dflt, const char *path, cl_error *err) {
    const cJSON *x = get(o, k);
    if (!x || cJSON_IsNull(x)) { *v = dflt; return CL_OK; }
    if (!cJSON_IsBool(x)) return cl_fail(err, CL_EFORMAT, "%s: field '%s' must be true or false", path, k);
    *v = cJSON_IsTrue(x);
    return CL_OK;
}

static cl_status parse_act(cl_config *c, const char *s, const char *field, const char *path, cl_error *err) {
    if (!strcmp(s, "gelu_new") || !strcmp(s, "gelu_pytorch_tanh")) c->act = CL_ACT_GELU_NEW;
    else if (!strcmp(s, "gelu")) c->act = CL_ACT_GELU;
    else if (!strcmp(s, "relu")) c->act = CL_ACT_RELU;
    else return cl_fail(err, CL_EFORMAT, "%s: field '%s' is '%s'; supported: gelu_new, gelu_pytorch_tanh, gelu, relu", path, field, s);
    snprintf(c->act_name, sizeof c->act_name, "%s", c->act == CL_ACT_GELU_NEW ? "gelu_new" : s);
    return CL_OK;
}

#define TRY(x) do { cl_status _s = (x); if (_s) { st = _s; goto done; } } while (0)

cl_status cl_config_parse(cl_config *c, const char *json, const char *path, cl_error *err) {
    memset(c, 0, sizeof *c);
    cl_status st = CL_OK;
    const char *ep = NULL;
    cJSON *root = cJSON_ParseWithOpts(json, &ep, 0);
    if (!root || !cJSON_IsObject(root)) {
        st = cl_fail(err, CL_EFORMAT, "%s: not a valid JSON object (near byte %ld)", path, ep ? (long)(ep - json) : -1L);
        goto done;
    }
    const char *arch = NULL;
    const cJSON *archs = get(root, "architectures"), *mt = get(root, "model_type");
    if (cJSON_IsArray(archs) && cJSON_GetArraySize(archs) > 0 && cJSON_IsString(cJSON_GetArrayItem(archs, 0)))
        arch = cJSON_GetArrayItem(archs, 0)->valuestring;
    else if (cJSON_IsString(mt))
        arch = !strcmp(mt->valuestring, "gpt2") ? "GPT2LMHeadModel"
             : !strcmp(mt->valuestring, "gpt_neox") ? "GPTNeoXForCausalLM" : mt->valuestring;
    if (!arch) { st = cl_fail(err, CL_EFORMAT, "%s: neither 'architectures' nor 'model_type' is given", path); goto done; }
    double eps, base = 10000.0, pct = 0.25;
    c->bos_token_id = c->eos_token_id = c->pad_token_id = -1;
    if (!strcmp(arch, "GPT2LMHeadModel") || !strcmp(arch, "GPT2Model")) {
        c->arch = CL_ARCH_GPT2;
        TRY(get_int(root, "n_embd", &c->d_model, 1, 0, path, err));
        TRY(get_int(root, "n_layer", &c->n_layers, 1, 0, path, err));
        TRY(get_int(root, "n_head", &c->n_heads, 1, 0, path, err));
        TRY(get_int(root, "n_positions", &c->n_ctx, 1, 0, path, err));
        TRY(get_int(root, "vocab_size", &c->d_vocab, 1, 0, path, err));
        TRY(get_int(root, "n_inner", &c->d_mlp, 0, 4 * c->d_model, path, err));
        TRY(get_num(root, "layer_norm_epsilon", &eps, 1e-5, path, err));
        TRY(get_bool(root, "tie_word_embeddings", &c->tied, 1, path, err));
        int scale_w;
        TRY(get_bool(root, "scale_attn_weights", &scale_w, 1, path, err));
        TRY(get_bool(root, "scale_attn_by_inverse_layer_idx", &c->scale_by_layer, 0, path, err));
        const cJSON *af = get(root, "activation_function");
        if (af && !cJSON_IsString(af)) { st = cl_fail(err, CL_EFORMAT, "%s: field 'activation_function' must be a string", path); goto done; }
        TRY(parse_act(c, af ? af->valuestring : "gelu_new", "activation_function", path, err));
        c->attn_bias = 1;
        c->rotary_dim = 0;
        c->parallel = 0;
        if (c->d_model > 0 && c->n_heads > 0) c->attn_scale = scale_w ? 1.0f / sqrtf((float)(c->d_model / c->n_heads)) : 1.0f;
    } else if (!strcmp(arch, "GPTNeoXForCausalLM") || !strcmp(arch, "GPTNeoXModel")) {
        c->arch = CL_ARCH_NEOX;
        TRY(get_int(root, "hidden_size", &c->d_model, 1, 0, path, err));
        TRY(get_int(root, "num_hidden_layers", &c->n_layers, 1, 0, path, err));
        TRY(get_int(root, "num_attention_heads", &c->n_heads, 1, 0, path, err));
        TRY(get_int(root, "max_position_embeddings", &c->n_ctx, 1, 0, path, err));
        TRY(get_int(root, "vocab_size", &c->d_vocab, 1, 0, path, err));
        TRY(get_int(root, "intermediate_size", &c->d_mlp, 1, 0, path, err));
        TRY(get_num(root, "layer_norm_eps", &eps, 1e-5, path, err));
        TRY(get_bool(root, "tie_word_embeddings", &c->tied, 0, path, err));
        TRY(get_bool(root, "use_parallel_residual", &c->parallel, 1, path, err));
        TRY(get_bool(root, "attention_bias", &c->attn_bias, 1, path, err));
        const cJSON *ha = get(root, "hidden_act");
        if (ha && !cJSON_IsString(ha)) { st = cl_fail(err, CL_EFORMAT, "%s: field 'hidden_act' must be a string", path); goto done; }
        TRY(parse_act(c, ha ? ha->valuestring : "gelu", "hidden_act", path, err));
        /* As transformers' GPTNeoXConfig: rope_scaling, when set (non-empty), replaces
         * rope_parameters; that dict's rope_theta / partial_rotary_factor win, else rotary_emb_base
         * / rotary_pct, else 10000 / 0.25. Top-level rope_theta and partial_rotary_factor are
         * not read (transformers ignores them too). */
        const cJSON *rp = get(root, "rope_scaling");
        const char *rp_name = "rope_scaling";
        if (!rp || cJSON_IsNull(rp) || (cJSON_IsObject(rp) && !rp->child) || cJSON_IsFalse(rp)) {
            rp = get(root, "rope_parameters");
            rp_name = "rope_parameters";
        }
        TRY(get_num(root, "rotary_pct", &pct, 0.25, path, err));
        TRY(get_num(root, "rotary_emb_base", &base, 10000.0, path, err));
        if (rp && !cJSON_IsNull(rp)) {
            if (!cJSON_IsObject(rp)) { st = cl_fail(err, CL_EFORMAT, "%s: field '%s' must be an object", path, rp_name); goto done; }
            const cJSON *rt = get(rp, "rope_type");
            if (!rt) rt = get(rp, "type");
            if (rt && (!cJSON_IsString(rt) || strcmp(rt->valuestring, "default"))) {
                st = cl_fail(err, CL_EFORMAT, "%s: %s.rope_type '%s' is not supported (only 'default'; RoPE scaling is not supported)",
                             path, rp_name, cJSON_IsString(rt) ? rt->valuestring : "?");
                goto done;
            }
            TRY(get_num(rp, "rope_theta", &base, base, path, err));
            TRY(get_num(rp, "partial_rotary_factor", &pct, pct, path, err));
        }
        if (!(pct > 0 && pct <= 1)) { st = cl_fail(err, CL_EFORMAT, "%s: rotary fraction %g must be in (0, 1]", path, pct); goto done; }
        if (!(base > 0)) { st = cl_fail(err, CL_EFORMAT, "%s: rotary base %g must be positive", path, base); goto done; }
        c->rotary_base = (float)base;
        if (c->d_model > 0 && c->n_heads > 0) {
            c->attn_scale = 1.0f / sqrtf((float)(c->d_model / c->n_heads));
            c->rotary_dim = (int)((c->d_model / c->n_heads) * pct);
        }
    } else {
        st = cl_fail(err, CL_EFORMAT, "%s: architecture '%s' is not supported (GPT2LMHeadModel or GPTNeoXForCausalLM)", path, arch);
        goto done;
    }
    c->eps = (float)eps;
    TRY(get_int(root, "bos_token_id", &c->bos_token_id, 0, -1, path, err));
    TRY(get_int(root, "eos_token_id", &c->eos_token_id, 0, -1, path, err));
    TRY(get_int(root, "pad_token_id", &c->pad_token_id, 0, -1, path, err));
    /* Each size within what a model can be (cl_model.h), so no size computed from them wraps. */
    const int gpt2 = c->arch == CL_ARCH_GPT2;
    const struct { int v, max; const char *name; } sizes[] = {
        {c->n_layers, CL_MAX_LAYERS, gpt2 ? "n_layer" : "num_hidden_layers"},
        {c->d_model, CL_MAX_D_MODEL, gpt2 ? "n_embd" : "hidden_size"},
        {c->n_heads, CL_MAX_HEADS, gpt2 ? "n_head" : "num_attention_heads"},
        {c->d_mlp, CL_MAX_D_MLP, gpt2 ? "n_inner" : "intermediate_size"},
        {c->d_vocab, CL_MAX_VOCAB, "vocab_size"},
        {c->n_ctx, CL_MAX_CTX, gpt2 ? "n_positions" : "max_position_embeddings"},
    };
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
        if (sizes[i].v < 1 || sizes[i].v > sizes[i].max) {
            st = cl_fail(err, CL_EFORMAT, "%s: field '%s' is %d; it must be in [1, %d]", path, sizes[i].name, sizes[i].v,
                         sizes[i].max);
            goto done;
        }
    if (c->d_model % c->n_heads) {
        st = cl_fail(err, CL_EFORMAT, "%s: d_model %d is not divisible by the number of heads %d", path, c->d_model, c->n_heads);
        goto done;
    }
    c->d_head = c->d_model / c->n_heads;
    if (c->rotary_dim % 2) {
        st = cl_fail(err, CL_EFORMAT, "%s: rotary dimension %d (d_head %d x rotary fraction) must be even", path, c->rotary_dim, c->d_head);
        goto done;
    }
    if ((int64_t)c->n_ctx * c->rotary_dim > ((int64_t)1 << 28)) { /* the rotary tables, 2 x n_ctx x rotary_dim / 2 floats */
        st = cl_fail(err, CL_EFORMAT, "%s: field 'max_position_embeddings' %d with rotary dimension %d needs rotary tables "
                     "over 1 GB", path, c->n_ctx, c->rotary_dim);
        goto done;
    }
    if (!(eps > 0)) { st = cl_fail(err, CL_EFORMAT, "%s: layer norm epsilon must be positive", path); goto done; }
done:
    cJSON_Delete(root);
    return st;
}
