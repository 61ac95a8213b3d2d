/* cl_tok_load_hf.c: a Hugging Face tokenizer.json (model BPE, ByteLevel pre-tokenizer and decoder,
 * optional NFC normalizer, added tokens); errors name the file and the field. */
#include <stdio.h>

#include "cl_tok_private.h"

static cl_status load_merges_json(builder *b, const char *path, const cJSON *merges) {
    if (!cJSON_IsArray(merges))
        return cl_fail(b->err, CL_EFORMAT, "%s: model.merges must be an array", path);
    int n = cJSON_GetArraySize(merges);
    if (!cl_tok_mmap_init(&b->t->merges, (size_t)n + 1)) return cl_fail(b->err, CL_ENOMEM, "%s: out of memory", path);
    const cJSON *it;
    uint32_t rank = 0;
    char where[600];
    cJSON_ArrayForEach(it, merges) {
        snprintf(where, sizeof where, "%s: model.merges[%u]", path, rank);
        const char *a, *bb;
        size_t na, nb;
        if (cJSON_IsString(it)) {
            const char *s = it->valuestring;
            size_t n2 = strlen(s);
            const char *sp = strchr(s, ' ');
            if (!sp || strchr(sp + 1, ' '))
                return cl_fail(b->err, CL_EFORMAT, "%s: expected \"a b\" (two tokens, one space), got \"%.*s\"", where, CLIP(s));
            a = s;
            na = (size_t)(sp - s);
            bb = sp + 1;
            nb = n2 - na - 1;
        } else if (cJSON_IsArray(it) && cJSON_GetArraySize(it) == 2 && cJSON_IsString(it->child) &&
                   cJSON_IsString(it->child->next)) {
            a = it->child->valuestring;
            na = strlen(a);
            bb = it->child->next->valuestring;
            nb = strlen(bb);
        } else {
            return cl_fail(b->err, CL_EFORMAT, "%s: expected a string \"a b\" or a pair [\"a\", \"b\"]", where);
        }
        cl_status st = cl_tok_add_merge(b, where, a, na, bb, nb, rank++);
        if (st) return st;
    }
    return CL_OK;
}

static int json_bool(const cJSON *obj, const char *key, int dflt) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (cJSON_IsBool(v)) return cJSON_IsTrue(v);
    return dflt;
}

static const char *json_type(const cJSON *obj) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, "type");
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

cl_status cl_tok_load_tokenizer_json(builder *b, const char *path) {
    cl_tokenizer *t = b->t;
    cJSON *root = NULL;
    cl_status st = cl_tok_json_load(path, &root, b->err);
    if (st) return st;
    cl_error *err = b->err;
#define FAIL(...)                                  \
    do {                                           \
        st = cl_fail(err, CL_EFORMAT, __VA_ARGS__); \
        goto done;                                 \
    } while (0)
    if (!cJSON_IsObject(root)) FAIL("%s: the top level must be a JSON object", path);
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    if (!cJSON_IsObject(model)) FAIL("%s: field \"model\" is missing or not an object", path);
    const char *mtype = json_type(model);
    if (mtype && strcmp(mtype, "BPE") != 0)
        FAIL("%s: model.type \"%s\" is not supported (only \"BPE\", byte-level)", path, mtype);
    if (!mtype && !cJSON_GetObjectItemCaseSensitive(model, "merges"))
        FAIL("%s: model.type is missing and the model has no merges: only BPE is supported", path);
    {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(model, "dropout");
        if (v && !cJSON_IsNull(v) && !(cJSON_IsNumber(v) && v->valuedouble == 0.0))
            FAIL("%s: model.dropout is not supported (must be null)", path);
        const char *keys[2] = {"continuing_subword_prefix", "end_of_word_suffix"};
        for (int k = 0; k < 2; k++) {
            v = cJSON_GetObjectItemCaseSensitive(model, keys[k]);
            if (v && !cJSON_IsNull(v) && !(cJSON_IsString(v) && v->valuestring[0] == '\0'))
                FAIL("%s: model.%s is not supported (must be null)", path, keys[k]);
        }
        if (json_bool(model, "byte_fallback", 0)) FAIL("%s: model.byte_fallback=true is not supported", path);
        t->fuse_unk = json_bool(model, "fuse_unk", 0);
        t->ignore_merges = json_bool(model, "ignore_merges", 0);
    }
    st = cl_tok_load_vocab_object(b, path, "model.vocab", cJSON_GetObjectItemCaseSensitive(model, "vocab"));
    if (st) goto done;
    if ((st = cl_tok_finish_vocab(b, path, "model.vocab"))) goto done;
    st = load_merges_json(b, path, cJSON_GetObjectItemCaseSensitive(model, "merges"));
    if (st) goto done;
    {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(model, "unk_token");
        if (v && !cJSON_IsNull(v)) {
            if (!cJSON_IsString(v)) FAIL("%s: model.unk_token must be a string or null", path);
            t->unk_id = cl_tok_smap_get(&t->vocab, t->pool, v->valuestring, strlen(v->valuestring));
            if (t->unk_id < 0) FAIL("%s: model.unk_token \"%.*s\" is not in model.vocab", path, CLIP(v->valuestring));
        }
    }
    /* normalizer: none or NFC (possibly inside a Sequence) */
    {
        const cJSON *nz = cJSON_GetObjectItemCaseSensitive(root, "normalizer");
        if (nz && !cJSON_IsNull(nz)) {
            const char *ty = json_type(nz);
            if (ty && strcmp(ty, "NFC") == 0) t->nfc = 1;
            else if (ty && strcmp(ty, "Sequence") == 0) {
                const cJSON *arr = cJSON_GetObjectItemCaseSensitive(nz, "normalizers"), *it;
                if (!cJSON_IsArray(arr)) FAIL("%s: normalizer.normalizers must be an array", path);
                int k = 0;
                cJSON_ArrayForEach(it, arr) {
                    const char *t2 = json_type(it);
                    if (!t2 || strcmp(t2, "NFC") != 0)
                        FAIL("%s: normalizer.normalizers[%d].type \"%s\" is not supported (only NFC)", path, k,
                             t2 ? t2 : "?");
                    t->nfc = 1;
                    k++;
                }
            } else FAIL("%s: normalizer.type \"%s\" is not supported (only NFC or null)", path, ty ? ty : "?");
        }
    }
    /* pre-tokenizer: ByteLevel, no prefix space, GPT-2 regex */
    {
        const cJSON *pt = cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer");
        const char *ty = pt ? json_type(pt) : NULL;
        if (!ty || strcmp(ty, "ByteLevel") != 0)
            FAIL("%s: pre_tokenizer.type \"%s\" is not supported (only ByteLevel)", path, ty ? ty : "null");
        if (json_bool(pt, "add_prefix_space", 0))
            FAIL("%s: pre_tokenizer.add_prefix_space=true is not supported", path);
        if (!json_bool(pt, "use_regex", 1)) FAIL("%s: pre_tokenizer.use_regex=false is not supported", path);
    }
    {
        const cJSON *dc = cJSON_GetObjectItemCaseSensitive(root, "decoder");
        const char *ty = dc && !cJSON_IsNull(dc) ? json_type(dc) : NULL;
        if (dc && !cJSON_IsNull(dc) && (!ty || strcmp(ty, "ByteLevel") != 0))
            FAIL("%s: decoder.type \"%s\" is not supported (only ByteLevel)", path, ty ? ty : "?");
    }
    {
        const cJSON *pp = cJSON_GetObjectItemCaseSensitive(root, "post_processor");
        if (pp && !cJSON_IsNull(pp)) {
            const char *ty = json_type(pp);
            if (ty && strcmp(ty, "ByteLevel") == 0) {
                t->trim_offsets = json_bool(pp, "trim_offsets", 1);
                t->pp_add_prefix_space = json_bool(pp, "add_prefix_space", 1);
            } else if (ty && strcmp(ty, "TemplateProcessing") == 0) {
                const cJSON *sp = cJSON_GetObjectItemCaseSensitive(pp, "special_tokens");
                if (sp && cJSON_GetArraySize(sp) > 0)
                    FAIL("%s: post_processor: TemplateProcessing that adds special tokens is not supported", path);
            } else FAIL("%s: post_processor.type \"%s\" is not supported (ByteLevel or null)", path, ty ? ty : "?");
        }
    }
    /* added tokens */
    {
        const cJSON *arr = cJSON_GetObjectItemCaseSensitive(root, "added_tokens"), *it;
        if (arr && !cJSON_IsNull(arr)) {
            if (!cJSON_IsArray(arr)) FAIL("%s: added_tokens must be an array", path);
            int k = 0;
            cJSON_ArrayForEach(it, arr) {
                const cJSON *content = cJSON_GetObjectItemCaseSensitive(it, "content");
                int32_t id;
                if (!cJSON_IsObject(it) || !cJSON_IsString(content))
                    FAIL("%s: added_tokens[%d].content must be a string", path, k);
                if (!cl_tok_json_id(cJSON_GetObjectItemCaseSensitive(it, "id"), &id))
                    FAIL("%s: added_tokens[%d].id must be an integer in [0, %d)", path, k, MAX_TOKEN_ID);
                const char *opts[3] = {"single_word", "lstrip", "rstrip"};
                for (int o = 0; o < 3; o++)
                    if (json_bool(it, opts[o], 0))
                        FAIL("%s: added_tokens[%d].%s=true is not supported", path, k, opts[o]);
                int special = json_bool(it, "special", 0);
                int normalized = json_bool(it, "normalized", !special);
                st = cl_tok_add_added(b, path, k, content->valuestring, strlen(content->valuestring), id, special,
                               normalized);
                if (st) goto done;
                k++;
            }
        }
    }
    st = CL_OK;
done:
#undef FAIL
    cJSON_Delete(root);
    return st;
}
