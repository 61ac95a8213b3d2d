/* cl_tok_load.c: loading a tokenizer from a folder or a file: finds the layout, then builds the
 * tables both layouts share (vocabulary entries, merges, added tokens with HF's id assignment,
 * the tries, BOS / EOS / pad). Every failure names the file and the line or field. The layouts
 * themselves: cl_tok_load_gpt2.c (vocab.json + merges.txt), cl_tok_load_hf.c (tokenizer.json). */
#include <errno.h>
#include <stdio.h>
#include <sys/stat.h>

#include "cl_tok_private.h"

int cl_tok_pool_add(cl_tokenizer *t, const void *s, size_t n, uint32_t *off) {
    if (t->pool_len + n + 1 > UINT32_MAX) return 0;
    if (!grow((void **)&t->pool, &t->pool_cap, t->pool_len + n + 1, 1)) return 0;
    if (n) memcpy(t->pool + t->pool_len, s, n);
    t->pool[t->pool_len + n] = '\0';
    *off = (uint32_t)t->pool_len;
    t->pool_len += n + 1;
    return 1;
}


void cl_tokenizer_free(cl_tokenizer *t) {
    if (!t) return;
    free(t->info);
    free(t->pool);
    free(t->vocab.slots);
    free(t->merges.keys);
    free(t->merges.rank);
    free(t->merges.merged);
    free(t->added);
    free(t->raw_trie.nodes);
    free(t->norm_trie.nodes);
    free(t->source);
    for (int k = 0; k < CL_TOK_SPARES; k++) cl_tok_state_free(t->spare[k]);
    free(t);
}

static const char *base_name(const char *path) {
    const char *b = strrchr(path, '/');
    return b ? b + 1 : path;
}

void cl_tok_line_col(const char *data, size_t off, int *line, int *col) {
    int l = 1, c = 1;
    for (size_t i = 0; i < off; i++) {
        if (data[i] == '\n') {
            l++;
            c = 1;
        } else c++;
    }
    *line = l;
    *col = c;
}

/* length of a prefix of s[0, n) of at most 60 bytes that ends on a character boundary: file
 * content quoted in a message stays short and valid UTF-8 */
int cl_tok_clip(const char *s, size_t n) {
    if (n <= 60) return (int)n;
    size_t k = 60;
    while (k > 0 && ((uint8_t)s[k] & 0xC0) == 0x80) k--;
    return (int)k;
}

/* a message cut by the fixed-size buffer (or quoting a file) must still be UTF-8 for the binding */
static void msg_fix_utf8(cl_error *err) {
    if (!err) return;
    size_t len = strlen(err->msg), bad;
    while ((bad = cl_utf8_check(err->msg, len)) != len) {
        size_t k = bad + 1;
        while (k < len && ((uint8_t)err->msg[k] & 0xC0) == 0x80) k++;
        if (k == len) { /* an incomplete character at the end */
            err->msg[bad] = '\0';
            len = bad;
        } else {
            err->msg[bad] = '?';
        }
    }
}

/* every string we read from a file must be UTF-8, as Rust's serde_json and BufRead::lines demand */
cl_status cl_tok_check_file_utf8(const char *path, const char *data, size_t len, cl_error *err) {
    size_t bad = cl_utf8_check(data, len);
    if (bad == len) return CL_OK;
    int line, col;
    cl_tok_line_col(data, bad, &line, &col);
    return cl_fail(err, CL_EFORMAT, "%s:%d:%d: invalid UTF-8 (byte 0x%02X)", path, line, col, (unsigned)(uint8_t)data[bad]);
}

/* parse a JSON file; bad JSON -> CL_EFORMAT "path:line:col: invalid JSON" */
cl_status cl_tok_json_load(const char *path, cJSON **root, cl_error *err) {
    *root = NULL;
    char *data = NULL;
    size_t len = 0;
    cl_status st = cl_read_file(path, &data, &len, err);
    if (st) return st;
    if ((st = cl_tok_check_file_utf8(path, data, len, err))) {
        free(data);
        return st;
    }
    const char *end = NULL;
    cJSON *r = cJSON_ParseWithLengthOpts(data, len, &end, 0);
    if (!r) {
        size_t off = end && end >= data && end <= data + len ? (size_t)(end - data) : 0;
        int line, col;
        cl_tok_line_col(data, off, &line, &col);
        char near[24] = "";
        size_t k = 0;
        for (size_t i = off; i < len && k < 20; i++) near[k++] = (data[i] == '\n' || data[i] == '\r') ? ' ' : data[i];
        near[k] = '\0';
        free(data);
        return cl_fail(err, CL_EFORMAT, "%s:%d:%d: invalid JSON near '%.*s'", path, line, col, CLIP(near));
    }
    /* trailing garbage after the value */
    if (end) {
        size_t off = (size_t)(end - data);
        while (off < len && (data[off] == ' ' || data[off] == '\n' || data[off] == '\r' || data[off] == '\t')) off++;
        if (off < len) {
            int line, col;
            cl_tok_line_col(data, off, &line, &col);
            free(data);
            cJSON_Delete(r);
            return cl_fail(err, CL_EFORMAT, "%s:%d:%d: invalid JSON: unexpected data after the top-level value",
                           path, line, col);
        }
    }
    free(data);
    *root = r;
    return CL_OK;
}

static int file_exists(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
}

static char *join_path(const char *dir, const char *name) {
    size_t a = strlen(dir), b = strlen(name);
    char *p = malloc(a + b + 2);
    if (!p) return NULL;
    memcpy(p, dir, a);
    size_t k = a;
    if (k && p[k - 1] != '/') p[k++] = '/';
    memcpy(p + k, name, b + 1);
    return p;
}

/* an id value: a JSON integer in [0, MAX_TOKEN_ID) */
int cl_tok_json_id(const cJSON *v, int32_t *id) {
    if (!cJSON_IsNumber(v)) return 0;
    double d = v->valuedouble;
    if (!(d >= 0 && d < MAX_TOKEN_ID) || d != (double)(int32_t)d) return 0;
    *id = (int32_t)d;
    return 1;
}


/* decoded bytes of a token string: each char through GPT-2's byte map when all chars map,
 * else the UTF-8 string itself (HF's ByteLevel decoder) */
static int token_bytes(const char *s, size_t n, uint8_t *out, size_t *outn) {
    size_t k = 0;
    size_t i = 0;
    const uint8_t *u = (const uint8_t *)s;
    while (i < n) {
        int l;
        uint32_t cp = u8dec(u, i, &l);
        if (cp >= 0x144 || cl_tok_char_byte[cp] < 0) {
            memcpy(out, s, n);
            *outn = n;
            return 0;
        }
        out[k++] = (uint8_t)cl_tok_char_byte[cp];
        i += (size_t)l;
    }
    *outn = k;
    return 1;
}

static void count_ws(const char *s, size_t n, uint16_t *lead, uint16_t *trail) {
    const uint8_t *u = (const uint8_t *)s;
    size_t i = 0, nl = 0, nt = 0;
    int leading = 1;
    while (i < n) {
        int l;
        uint32_t cp = u8dec(u, i, &l);
        int ws = cp == 0x120 || (cl_tok_uprop(cp) & 3) == CLS_SPACE;
        if (leading && ws) nl++;
        else leading = 0;
        nt = ws ? nt + 1 : 0;
        i += (size_t)l;
    }
    *lead = (uint16_t)(nl > 65535 ? 65535 : nl);
    *trail = (uint16_t)(nt > 65535 ? 65535 : nt);
}


/* add a model vocabulary entry (string s of n bytes, id) */
static cl_status add_vocab(builder *b, const char *file, const char *s, size_t n, int32_t id) {
    cl_tokenizer *t = b->t;
    uint32_t off;
    if (!cl_tok_pool_add(t, s, n, &off)) return cl_fail(b->err, CL_ENOMEM, "%s: out of memory", file);
    int32_t old = cl_tok_smap_put(&t->vocab, t->pool, off, (uint32_t)n, id);
    if (old >= 0)
        return cl_fail(b->err, CL_EFORMAT, "%s: field \"%.*s\": the token appears twice in the vocabulary", file,
                       CLIPN(s, n));
    if (!grow((void **)&b->ents, &b->cap_ents, b->n_ents + 1, sizeof *b->ents))
        return cl_fail(b->err, CL_ENOMEM, "%s: out of memory", file);
    b->ents[b->n_ents++] = (vocab_ent){off, (uint32_t)n, id};
    return CL_OK;
}

/* vocabulary object {"token": id, ...} */
cl_status cl_tok_load_vocab_object(builder *b, const char *file, const char *field, const cJSON *obj) {
    if (!cJSON_IsObject(obj))
        return cl_fail(b->err, CL_EFORMAT, "%s: %s must be a JSON object {\"token\": id}", file, field);
    size_t n = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, obj) n++;
    if (!cl_tok_smap_init(&b->t->vocab, n + 1)) return cl_fail(b->err, CL_ENOMEM, "%s: out of memory", file);
    cJSON_ArrayForEach(it, obj) {
        int32_t id;
        if (!it->string) return cl_fail(b->err, CL_EFORMAT, "%s: %s: entry without a key", file, field);
        if (!cl_tok_json_id(it, &id))
            return cl_fail(b->err, CL_EFORMAT, "%s: %s[\"%.*s\"]: the id must be an integer in [0, %d)", file,
                           field, CLIP(it->string), MAX_TOKEN_ID);
        cl_status st = add_vocab(b, file, it->string, strlen(it->string), id);
        if (st) return st;
    }
    return CL_OK;
}

static int cmp_ent_id(const void *a, const void *b) {
    const vocab_ent *x = a, *y = b;
    return (x->id > y->id) - (x->id < y->id);
}

/* check ids are unique; size info[] */
cl_status cl_tok_finish_vocab(builder *b, const char *file, const char *field) {
    cl_tokenizer *t = b->t;
    if (b->n_ents == 0) return cl_fail(b->err, CL_EFORMAT, "%s: %s is empty", file, field);
    qsort(b->ents, b->n_ents, sizeof *b->ents, cmp_ent_id);
    for (size_t i = 1; i < b->n_ents; i++)
        if (b->ents[i].id == b->ents[i - 1].id)
            return cl_fail(b->err, CL_EFORMAT, "%s: %s: duplicate id %d, used by \"%.*s\" and \"%.*s\"", file, field,
                           (int)b->ents[i].id, CLIP(t->pool + b->ents[i - 1].off), CLIP(t->pool + b->ents[i].off));
    t->model_size = (int32_t)b->n_ents;
    return CL_OK;
}

/* a merge (a, b); where names the location for errors ("merges.txt:12" / "file: model.merges[3]") */
cl_status cl_tok_add_merge(builder *b, const char *where, const char *a, size_t na, const char *bb, size_t nb,
                           uint32_t rank) {
    cl_tokenizer *t = b->t;
    int32_t ia = cl_tok_smap_get(&t->vocab, t->pool, a, na);
    if (ia < 0) return cl_fail(b->err, CL_EFORMAT, "%s: merge \"%.*s %.*s\": token \"%.*s\" is not in the vocabulary",
                               where, CLIPN(a, na), CLIPN(bb, nb), CLIPN(a, na));
    int32_t ib = cl_tok_smap_get(&t->vocab, t->pool, bb, nb);
    if (ib < 0) return cl_fail(b->err, CL_EFORMAT, "%s: merge \"%.*s %.*s\": token \"%.*s\" is not in the vocabulary",
                               where, CLIPN(a, na), CLIPN(bb, nb), CLIPN(bb, nb));
    char stackbuf[256];
    char *cat = na + nb <= sizeof stackbuf ? stackbuf : malloc(na + nb);
    if (!cat) return cl_fail(b->err, CL_ENOMEM, "out of memory");
    memcpy(cat, a, na);
    memcpy(cat + na, bb, nb);
    int32_t im = cl_tok_smap_get(&t->vocab, t->pool, cat, na + nb);
    if (cat != stackbuf) free(cat);
    if (im < 0) return cl_fail(b->err, CL_EFORMAT, "%s: merge \"%.*s %.*s\": the merged token \"%.*s%.*s\" is not in the vocabulary",
                               where, CLIPN(a, na), CLIPN(bb, nb), CLIPN(a, na), CLIPN(bb, nb));
    cl_tok_mmap_put(&t->merges, ia, ib, rank, im);
    return CL_OK;
}

/* lay out info[] for model ids */
static cl_status build_info(builder *b, const char *file) {
    cl_tokenizer *t = b->t;
    int32_t n_ids = 0;
    for (size_t i = 0; i < b->n_ents; i++)
        if (b->ents[i].id + 1 > n_ids) n_ids = b->ents[i].id + 1;
    for (int i = 0; i < t->n_added; i++)
        if (t->added[i].id + 1 > n_ids) n_ids = t->added[i].id + 1;
    t->n_ids = n_ids;
    t->info = calloc((size_t)n_ids, sizeof *t->info);
    if (!t->info) return cl_fail(b->err, CL_ENOMEM, "%s: out of memory", file);
    size_t maxlen = 0;
    for (size_t i = 0; i < b->n_ents; i++) maxlen = b->ents[i].len > maxlen ? b->ents[i].len : maxlen;
    for (int i = 0; i < t->n_added; i++) maxlen = t->added[i].len > maxlen ? t->added[i].len : maxlen;
    uint8_t *tmp = malloc(maxlen + 1);
    if (!tmp) return cl_fail(b->err, CL_ENOMEM, "%s: out of memory", file);
    for (size_t pass = 0; pass < 2; pass++) {
        size_t cnt = pass == 0 ? b->n_ents : (size_t)t->n_added;
        for (size_t i = 0; i < cnt; i++) {
            uint32_t off, len;
            int32_t id;
            if (pass == 0) {
                off = b->ents[i].off;
                len = b->ents[i].len;
                id = b->ents[i].id;
            } else {
                off = t->added[i].off;
                len = t->added[i].len;
                id = t->added[i].id;
            }
            id_info *in = &t->info[id];
            size_t bl;
            token_bytes(t->pool + off, len, tmp, &bl);
            uint32_t boff;
            if (!cl_tok_pool_add(t, tmp, bl, &boff)) {
                free(tmp);
                return cl_fail(b->err, CL_ENOMEM, "%s: out of memory", file);
            }
            in->str_off = off;
            in->str_len = len;
            in->byt_off = boff;
            in->byt_len = (uint32_t)bl;
            count_ws(t->pool + off, len, &in->lead_ws, &in->trail_ws);
            in->flags |= ID_EXISTS | (pass == 0 ? ID_MODEL : ID_ADDED);
            if (pass == 1 && t->added[i].special) in->flags |= ID_SPECIAL;
        }
    }
    free(tmp);
    /* byte-level alphabet */
    for (int by = 0; by < 256; by++) {
        uint8_t u[4];
        int l = u8enc(cl_tok_byte_char[by], u);
        t->byte_id[by] = cl_tok_smap_get(&t->vocab, t->pool, (const char *)u, (size_t)l);
    }
    return CL_OK;
}

/* register an added token (content s, n bytes) with HF's id assignment. file_id < 0: no id given
 * in the file (GPT-2 layout). */
cl_status cl_tok_add_added(builder *b, const char *file, int index, const char *s, size_t n, int32_t file_id,
                           int special, int normalized) {
    cl_tokenizer *t = b->t;
    if (n == 0) return CL_OK; /* HF ignores empty added tokens */
    for (int i = 0; i < t->n_added; i++)
        if (t->added[i].len == n && memcmp(t->pool + t->added[i].off, s, n) == 0) {
            if (file_id < 0) { /* GPT-2 layout: a token named twice (config files): keep, upgrade */
                if (special) t->added[i].special = 1;
                return CL_OK;
            }
            return cl_fail(b->err, CL_EFORMAT, "%s: added_tokens[%d]: \"%.*s\" duplicates an earlier added token",
                           file, index, CLIPN(s, n));
        }
    /* HF: the model's id when the content is in the model vocabulary, else max(added) + 1 or the
     * model size */
    int32_t id = cl_tok_smap_get(&t->vocab, t->pool, s, n);
    if (id < 0) {
        int32_t mx = -1;
        for (int i = 0; i < t->n_added; i++) mx = t->added[i].id > mx ? t->added[i].id : mx;
        id = (mx >= t->model_size || t->model_size == 0) ? mx + 1 : t->model_size;
        if (mx < 0) id = t->model_size;
    }
    if (file_id >= 0 && file_id != id)
        return cl_fail(b->err, CL_EFORMAT,
                       "%s: added_tokens[%d].id: \"%.*s\" has id %d but Hugging Face assigns it id %d (model vocabulary "
                       "of %d entries, added tokens in order); fix the id", file, index, CLIPN(s, n), (int)file_id, (int)id,
                       (int)t->model_size);
    if (id >= MAX_TOKEN_ID) return cl_fail(b->err, CL_EFORMAT, "%s: added_tokens[%d]: id too large", file, index);
    uint32_t off;
    if (!cl_tok_pool_add(t, s, n, &off)) return cl_fail(b->err, CL_ENOMEM, "%s: out of memory", file);
    added_tok *na = realloc(t->added, ((size_t)t->n_added + 1) * sizeof *na);
    if (!na) return cl_fail(b->err, CL_ENOMEM, "%s: out of memory", file);
    t->added = na;
    t->added[t->n_added++] = (added_tok){off, (uint32_t)n, id, (uint8_t)(special != 0), (uint8_t)(normalized != 0)};
    return CL_OK;
}

static cl_status build_tries(builder *b, const char *file) {
    cl_tokenizer *t = b->t;
    t->raw_trie.empty = 1;
    t->norm_trie.empty = 1;
    /* HF order: special tokens first, then the others; for equal content the first wins */
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < t->n_added; i++) {
            added_tok *a = &t->added[i];
            if ((pass == 0) != (a->special != 0)) continue;
            /* normalized tokens are matched on normalized text: normalize their content too */
            trie *tr = a->normalized ? &t->norm_trie : &t->raw_trie;
            const uint8_t *s = (const uint8_t *)t->pool + a->off;
            size_t n = a->len;
            char *norm = NULL;
            size_t nn = 0;
            if (a->normalized && t->nfc) {
                cl_status st = cl_tokenizer_nfc((const char *)s, n, &norm, &nn, b->err);
                if (st) return st;
                s = (const uint8_t *)norm;
                n = nn;
            }
            int ok = n == 0 || cl_tok_trie_add(tr, s, n, i);
            free(norm);
            if (!ok) return cl_fail(b->err, CL_ENOMEM, "%s: out of memory", file);
        }
    return CL_OK;
}

/* a special-token entry of tokenizer_config.json / special_tokens_map.json: "str" or {"content": "str"} */
static const char *token_entry(const cJSON *v) {
    if (cJSON_IsString(v)) return v->valuestring;
    if (cJSON_IsObject(v)) {
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(v, "content");
        if (cJSON_IsString(c)) return c->valuestring;
    }
    return NULL;
}

/* bos / eos / pad: tokenizer_config.json, then special_tokens_map.json, then config.json, then the
 * tokenizer's own tokens ("<|endoftext|>" for BOS/EOS, "<|padding|>" else EOS for pad) */
static cl_status resolve_special_ids(builder *b, const char *dir, int gpt2_layout) {
    cl_tokenizer *t = b->t;
    static const char *names[3] = {"bos", "eos", "pad"};
    int32_t *slots[3] = {&t->bos_id, &t->eos_id, &t->pad_id};
    int found[3] = {0, 0, 0};
    static const char *files[3] = {"tokenizer_config.json", "special_tokens_map.json", "config.json"};
    cl_status st = CL_OK;
    for (int f = 0; f < 3; f++) {
        char *p = join_path(dir, files[f]);
        if (!p) return cl_fail(b->err, CL_ENOMEM, "out of memory");
        if (!file_exists(p)) {
            free(p);
            continue;
        }
        cJSON *root = NULL;
        st = cl_tok_json_load(p, &root, b->err);
        if (st) {
            free(p);
            return st;
        }
        if (!cJSON_IsObject(root)) {
            cJSON_Delete(root);
            st = cl_fail(b->err, CL_EFORMAT, "%s: the top level must be a JSON object", p);
            free(p);
            return st;
        }
        for (int k = 0; k < 3 && !st; k++) {
            if (found[k]) continue;
            char key[32];
            if (f < 2) {
                snprintf(key, sizeof key, "%s_token", names[k]);
                const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
                if (!v || cJSON_IsNull(v)) continue;
                const char *s = token_entry(v);
                if (!s) {
                    st = cl_fail(b->err, CL_EFORMAT, "%s: field \"%s\" must be a string or {\"content\": ...}", p, key);
                    break;
                }
                if (gpt2_layout) {
                    /* like transformers: special tokens named in the config are special added tokens */
                    if (cl_tok_smap_get(&t->vocab, t->pool, s, strlen(s)) >= 0)
                        st = cl_tok_add_added(b, p, -1, s, strlen(s), -1, 1, 0);
                    if (st) break;
                }
                int32_t id = cl_tokenizer_token_to_id(t, s, strlen(s));
                if (id < 0) {
                    st = cl_fail(b->err, CL_EFORMAT, "%s: field \"%s\": token \"%.*s\" is not in the vocabulary", p, key, CLIP(s));
                    break;
                }
                *slots[k] = id;
                found[k] = 1;
            } else {
                snprintf(key, sizeof key, "%s_token_id", names[k]);
                const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
                if (!v || cJSON_IsNull(v)) continue;
                if (cJSON_IsArray(v) && cJSON_GetArraySize(v) > 0) v = v->child; /* eos lists: the first */
                int32_t id;
                if (!cl_tok_json_id(v, &id)) {
                    st = cl_fail(b->err, CL_EFORMAT, "%s: field \"%s\" must be a non-negative integer", p, key);
                    break;
                }
                *slots[k] = id;
                found[k] = 1;
            }
        }
        cJSON_Delete(root);
        free(p);
        if (st) return st;
    }
    if (!found[0]) t->bos_id = cl_tokenizer_token_to_id(t, "<|endoftext|>", 13);
    if (!found[1]) t->eos_id = cl_tokenizer_token_to_id(t, "<|endoftext|>", 13);
    if (!found[2]) {
        t->pad_id = cl_tokenizer_token_to_id(t, "<|padding|>", 11);
        if (t->pad_id < 0) t->pad_id = t->eos_id;
    }
    return CL_OK;
}

static char *dir_of(const char *path) {
    const char *sl = strrchr(path, '/');
    if (!sl) return strdup(".");
    if (sl == path) return strdup("/");
    size_t n = (size_t)(sl - path);
    char *d = malloc(n + 1);
    if (!d) return NULL;
    memcpy(d, path, n);
    d[n] = '\0';
    return d;
}

cl_status cl_tokenizer_load(const char *path, cl_tokenizer **out, cl_error *err) {
    *out = NULL;
    if (!path) return cl_fail(err, CL_EINVAL, "cl_tokenizer_load: NULL path");
    cl_tok_bytemap_init();
    cl_tokenizer *t = calloc(1, sizeof *t);
    builder b = {t, NULL, 0, 0, err};
    char *dir = NULL, *tj = NULL, *vj = NULL, *mt = NULL;
    cl_status st = CL_OK;
    if (!t) return cl_fail(err, CL_ENOMEM, "out of memory");
    t->unk_id = t->bos_id = t->eos_id = t->pad_id = -1;
    struct stat sb;
    if (stat(path, &sb) != 0) {
        st = cl_fail(err, CL_EIO, "%s: cannot open: %s", path, strerror(errno));
        goto done;
    }
    if (S_ISDIR(sb.st_mode)) {
        dir = strdup(path);
        tj = join_path(path, "tokenizer.json");
        vj = join_path(path, "vocab.json");
        mt = join_path(path, "merges.txt");
        if (!dir || !tj || !vj || !mt) {
            st = cl_fail(err, CL_ENOMEM, "out of memory");
            goto done;
        }
        if (file_exists(tj)) {
            free(vj);
            free(mt);
            vj = mt = NULL;
        } else if (file_exists(vj) && file_exists(mt)) {
            free(tj);
            tj = NULL;
        } else {
            st = cl_fail(err, CL_EIO, "%s: no tokenizer.json, nor vocab.json and merges.txt, in this folder", path);
            goto done;
        }
    } else {
        dir = dir_of(path);
        const char *bn = base_name(path);
        if (!dir) {
            st = cl_fail(err, CL_ENOMEM, "out of memory");
            goto done;
        }
        if (strcmp(bn, "vocab.json") == 0 || strcmp(bn, "merges.txt") == 0) {
            vj = join_path(dir, "vocab.json");
            mt = join_path(dir, "merges.txt");
            if (!vj || !mt) {
                st = cl_fail(err, CL_ENOMEM, "out of memory");
                goto done;
            }
            const char *missing = !file_exists(vj) ? vj : !file_exists(mt) ? mt : NULL;
            if (missing) {
                st = cl_fail(err, CL_EIO, "%s: cannot open: %s (GPT-2 layout needs vocab.json and merges.txt side by side)",
                             missing, strerror(ENOENT));
                goto done;
            }
        } else {
            tj = strdup(path);
            if (!tj) {
                st = cl_fail(err, CL_ENOMEM, "out of memory");
                goto done;
            }
        }
    }
    if (tj) {
        if ((st = cl_tok_load_tokenizer_json(&b, tj))) goto done;
        t->source = strdup(tj);
    } else {
        if ((st = cl_tok_load_vocab_json(&b, vj))) goto done;
        if ((st = cl_tok_load_merges_txt(&b, mt))) goto done;
        /* transformers' GPT2Tokenizer: "<|endoftext|>" is the bos/eos/unk special token */
        if (cl_tok_smap_get(&t->vocab, t->pool, "<|endoftext|>", 13) >= 0)
            if ((st = cl_tok_add_added(&b, vj, -1, "<|endoftext|>", 13, -1, 1, 0))) goto done;
        size_t n = strlen(vj) + strlen(mt) + 4;
        t->source = malloc(n);
        if (t->source) snprintf(t->source, n, "%s + %s", vj, mt);
    }
    if (!t->source) {
        st = cl_fail(err, CL_ENOMEM, "out of memory");
        goto done;
    }
    if ((st = resolve_special_ids(&b, dir, tj == NULL))) goto done;
    if ((st = build_info(&b, t->source))) goto done;
    if ((st = build_tries(&b, t->source))) goto done;
    for (int k = 0; k < 3; k++) {
        int32_t id = k == 0 ? t->bos_id : k == 1 ? t->eos_id : t->pad_id;
        if (id >= t->n_ids || (id >= 0 && !(t->info[id].flags & ID_EXISTS))) {
            st = cl_fail(err, CL_EFORMAT, "%s: %s id %d is not in the vocabulary", dir,
                         k == 0 ? "bos" : k == 1 ? "eos" : "pad", (int)id);
            goto done;
        }
    }
    *out = t;
    t = NULL;
done:
    if (st) msg_fix_utf8(err);
    free(b.ents);
    free(dir);
    free(tj);
    free(vj);
    free(mt);
    cl_tokenizer_free(t);
    return st;
}
