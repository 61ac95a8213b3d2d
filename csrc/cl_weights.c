/* cl_weights.c: Hugging Face tensors -> TransformerLens layout, and TransformerLens weight
 * processing (fold_ln, center_writing_weights, center_unembed, fold_value_biases).
 * GPT-2 stores Conv1D weights as [in, out] and packs q,k,v along the output; GPT-NeoX stores
 * Linear weights as [out, in] and packs q,k,v per head ([n_heads, 3, d_head] along the output),
 * so the same TransformerLens view needs a different copy per family. Large F32 tensors whose
 * layout already matches (the embeddings, a tied or separate unembedding) are used in place
 * from the mapping only when asked (mmap_weights); by default, and for everything else, each
 * tensor is converted once into the arena and the files are closed. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cl_model.h"

typedef struct {
    const cl_st_set *st;
    const char *dir;
    const char *prefix; /* "transformer." / "gpt_neox." or "" */
    float *scratch;     /* holds one converted tensor */
    size_t scratch_n;
} loader;

static int usable_in_place(const cl_st_tensor *t) {
    return t->dtype == CL_DT_F32 && ((uintptr_t)t->data % sizeof(float)) == 0;
}

/* Find a tensor, check its shape, and return it as float32 (in place or in l->scratch). */
static cl_status fetch(loader *l, const char *suffix, int with_prefix, int ndim, const int64_t *shape,
                       const cl_st_tensor **tout, const float **out, cl_error *err) {
    char name[256];
    snprintf(name, sizeof name, "%s%s", with_prefix ? l->prefix : "", suffix);
    const cl_st_tensor *t = cl_st_find(l->st, name);
    if (!t) return cl_fail(err, CL_EFORMAT, "%s: tensor '%s' is missing from the checkpoint", l->dir, name);
    if (t->dtype != CL_DT_F32 && t->dtype != CL_DT_F16 && t->dtype != CL_DT_BF16)
        return cl_fail(err, CL_EFORMAT, "%s: tensor '%s' has dtype %s; F32, F16 or BF16 expected", l->dir, name,
                       cl_dtype_name(t->dtype));
    int ok = t->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++) ok = t->shape[i] == shape[i];
    if (!ok) {
        char got[128] = "", want[128] = "";
        for (int i = 0; i < t->ndim; i++) snprintf(got + strlen(got), sizeof got - strlen(got), "%s%lld", i ? ", " : "", (long long)t->shape[i]);
        for (int i = 0; i < ndim; i++) snprintf(want + strlen(want), sizeof want - strlen(want), "%s%lld", i ? ", " : "", (long long)shape[i]);
        return cl_fail(err, CL_EFORMAT, "%s: tensor '%s' has shape [%s]; config.json implies [%s]", l->dir, name, got, want);
    }
    size_t n = 1;
    for (int i = 0; i < ndim; i++) n *= (size_t)shape[i];
    if (tout) *tout = t;
    if (usable_in_place(t)) { *out = t->data; return CL_OK; }
    if (n > l->scratch_n) return cl_fail(err, CL_EFORMAT, "%s: tensor '%s' is larger than expected", l->dir, name);
    cl_status st = cl_to_f32(l->scratch, t->data, n, t->dtype, err);
    if (st) return st;
    *out = l->scratch;
    return CL_OK;
}

/* fetch + plain copy into dst (n floats). */
static cl_status copy_to(loader *l, const char *suffix, int ndim, const int64_t *shape, float *dst, cl_error *err) {
    const float *src;
    const cl_st_tensor *t;
    cl_status st = fetch(l, suffix, 1, ndim, shape, &t, &src, err);
    if (st) return st;
    size_t n = 1;
    for (int i = 0; i < ndim; i++) n *= (size_t)shape[i];
    if (src != dst) memcpy(dst, src, n * sizeof(float));
    cl_st_release(l->st, t);
    return CL_OK;
}

/* fetch [rows, cols] and store its transpose into dst [cols, rows]. */
static cl_status transpose_to(loader *l, const char *suffix, int64_t rows, int64_t cols, float *dst, cl_error *err) {
    const float *src;
    const cl_st_tensor *t;
    int64_t shape[2] = {rows, cols};
    cl_status st = fetch(l, suffix, 1, 2, shape, &t, &src, err);
    if (st) return st;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++) dst[c * rows + r] = src[r * cols + c];
    cl_st_release(l->st, t);
    return CL_OK;
}

#define TRY(x) do { cl_status _s = (x); if (_s) return _s; } while (0)

static cl_status load_gpt2_layer(loader *l, cl_model *m, int i, cl_error *err) {
    const cl_config *c = &m->cfg;
    const int64_t D = c->d_model, M = c->d_mlp;
    char n[128];
#define NM(s) (snprintf(n, sizeof n, "h.%d.%s", i, s), n)
    int64_t sD[1] = {D}, s3D[1] = {3 * D}, sM[1] = {M};
    int64_t sqkv[2] = {D, 3 * D}, so[2] = {D, D}, sin[2] = {D, M}, sout[2] = {M, D};
    /* Conv1D [in, out] with q|k|v along out = (3, H, d_head): exactly W_QKV's layout. */
    TRY(copy_to(l, NM("ln_1.weight"), 1, sD, m->ln1_w + i * D, err));
    TRY(copy_to(l, NM("ln_1.bias"), 1, sD, m->ln1_b + i * D, err));
    TRY(copy_to(l, NM("attn.c_attn.weight"), 2, sqkv, m->W_QKV + i * D * 3 * D, err));
    TRY(copy_to(l, NM("attn.c_attn.bias"), 1, s3D, m->b_QKV + i * 3 * D, err));
    TRY(copy_to(l, NM("attn.c_proj.weight"), 2, so, m->W_O + i * D * D, err));
    TRY(copy_to(l, NM("attn.c_proj.bias"), 1, sD, m->b_O + i * D, err));
    TRY(copy_to(l, NM("ln_2.weight"), 1, sD, m->ln2_w + i * D, err));
    TRY(copy_to(l, NM("ln_2.bias"), 1, sD, m->ln2_b + i * D, err));
    TRY(copy_to(l, NM("mlp.c_fc.weight"), 2, sin, m->W_in + i * D * M, err));
    TRY(copy_to(l, NM("mlp.c_fc.bias"), 1, sM, m->b_in + i * M, err));
    TRY(copy_to(l, NM("mlp.c_proj.weight"), 2, sout, m->W_out + i * M * D, err));
    TRY(copy_to(l, NM("mlp.c_proj.bias"), 1, sD, m->b_out + i * D, err));
#undef NM
    return CL_OK;
}

static cl_status load_neox_layer(loader *l, cl_model *m, int i, cl_error *err) {
    const cl_config *c = &m->cfg;
    const int64_t D = c->d_model, M = c->d_mlp, H = c->n_heads, dh = c->d_head;
    char n[128];
#define NM(s) (snprintf(n, sizeof n, "layers.%d.%s", i, s), n)
    int64_t sD[1] = {D}, sM[1] = {M}, s3D[1] = {3 * D}, sqkv[2] = {3 * D, D};
    TRY(copy_to(l, NM("input_layernorm.weight"), 1, sD, m->ln1_w + i * D, err));
    TRY(copy_to(l, NM("input_layernorm.bias"), 1, sD, m->ln1_b + i * D, err));
    TRY(copy_to(l, NM("post_attention_layernorm.weight"), 1, sD, m->ln2_w + i * D, err));
    TRY(copy_to(l, NM("post_attention_layernorm.bias"), 1, sD, m->ln2_b + i * D, err));
    /* query_key_value: Linear [out, in], out = (H, 3, d_head) -> W_QKV[d_model][3][H][d_head] */
    const float *src;
    const cl_st_tensor *t;
    float *W = m->W_QKV + i * D * 3 * D, *b = m->b_QKV + i * 3 * D;
    TRY(fetch(l, NM("attention.query_key_value.weight"), 1, 2, sqkv, &t, &src, err));
    for (int64_t h = 0; h < H; h++)
        for (int64_t s = 0; s < 3; s++)
            for (int64_t e = 0; e < dh; e++) {
                const float *row = src + ((h * 3 + s) * dh + e) * D;
                float *col = W + s * H * dh + h * dh + e;
                for (int64_t k = 0; k < D; k++) col[k * 3 * D] = row[k];
            }
    cl_st_release(l->st, t);
    if (c->attn_bias) {
        TRY(fetch(l, NM("attention.query_key_value.bias"), 1, 1, s3D, &t, &src, err));
        for (int64_t h = 0; h < H; h++)
            for (int64_t s = 0; s < 3; s++)
                for (int64_t e = 0; e < dh; e++) b[s * H * dh + h * dh + e] = src[(h * 3 + s) * dh + e];
        TRY(copy_to(l, NM("attention.dense.bias"), 1, sD, m->b_O + i * D, err));
    }
    TRY(transpose_to(l, NM("attention.dense.weight"), D, D, m->W_O + i * D * D, err));
    TRY(transpose_to(l, NM("mlp.dense_h_to_4h.weight"), M, D, m->W_in + i * D * M, err));
    TRY(copy_to(l, NM("mlp.dense_h_to_4h.bias"), 1, sM, m->b_in + i * M, err));
    TRY(transpose_to(l, NM("mlp.dense_4h_to_h.weight"), D, M, m->W_out + i * M * D, err));
    TRY(copy_to(l, NM("mlp.dense_4h_to_h.bias"), 1, sD, m->b_out + i * D, err));
#undef NM
    return CL_OK;
}

/* ---- TransformerLens weight processing, in double where sums are taken ---- */

static void center_rows(float *x, size_t rows, size_t cols) { /* x[r, :] -= mean(x[r, :]) */
    for (size_t r = 0; r < rows; r++) {
        double s = 0;
        for (size_t c = 0; c < cols; c++) s += x[r * cols + c];
        float mu = (float)(s / (double)cols);
        for (size_t c = 0; c < cols; c++) x[r * cols + c] -= mu;
    }
}

static void center_cols(float *x, size_t rows, size_t cols) { /* x[:, c] -= mean(x[:, c]) */
    double *s = calloc(cols, sizeof *s);
    if (!s) return;
    for (size_t r = 0; r < rows; r++)
        for (size_t c = 0; c < cols; c++) s[c] += x[r * cols + c];
    for (size_t r = 0; r < rows; r++)
        for (size_t c = 0; c < cols; c++) x[r * cols + c] -= (float)(s[c] / (double)rows);
    free(s);
}

/* W (D, N) reads a LayerNorm's output: b[n] += sum_d lnb[d] W[d, n]; W[d, :] *= lnw[d];
 * then W[:, n] -= mean_d W[d, n] (the normalised input is mean-zero, so this changes nothing
 * but makes the weights comparable, as TransformerLens does). */
static cl_status fold_into(float *W, float *b, const float *lnw, const float *lnb, size_t D, size_t N) {
    double *acc = calloc(N, sizeof *acc);
    if (!acc) return CL_ENOMEM;
    for (size_t d = 0; d < D; d++)
        for (size_t n = 0; n < N; n++) acc[n] += (double)lnb[d] * W[d * N + n];
    for (size_t n = 0; n < N; n++) b[n] = (float)((double)b[n] + acc[n]);
    for (size_t d = 0; d < D; d++)
        for (size_t n = 0; n < N; n++) W[d * N + n] *= lnw[d];
    free(acc);
    center_cols(W, D, N);
    return CL_OK;
}

static cl_status process(cl_model *m, float *W_E, float *W_pos, float *W_U_T, cl_error *err) {
    const cl_config *c = &m->cfg;
    const size_t L = c->n_layers, D = c->d_model, M = c->d_mlp, V = c->d_vocab, H = c->n_heads, dh = c->d_head;
    if (m->opts.fold_ln) {
        for (size_t i = 0; i < L; i++) {
            if (fold_into(m->W_QKV + i * D * 3 * D, m->b_QKV + i * 3 * D, m->ln1_w + i * D, m->ln1_b + i * D, D, 3 * D) ||
                fold_into(m->W_in + i * D * M, m->b_in + i * M, m->ln2_w + i * D, m->ln2_b + i * D, D, M))
                return cl_fail(err, CL_ENOMEM, "out of memory while folding layer norms");
        }
        /* unembedding, stored transposed: row t of W_U_T is column t of W_U */
        for (size_t t = 0; t < V; t++) {
            float *row = W_U_T + t * D;
            double s = 0;
            for (size_t d = 0; d < D; d++) s += (double)m->lnf_b[d] * row[d];
            m->b_U[t] = (float)((double)m->b_U[t] + s);
            for (size_t d = 0; d < D; d++) row[d] *= m->lnf_w[d];
        }
        center_rows(W_U_T, V, D);
        m->ln1_w = m->ln1_b = m->ln2_w = m->ln2_b = m->lnf_w = m->lnf_b = NULL;
    }
    if (m->opts.center_writing_weights) {
        center_rows(W_E, V, D);
        if (W_pos) center_rows(W_pos, c->n_ctx, D);
        center_rows(m->W_O, L * H * dh, D);
        center_rows(m->b_O, L, D);
        center_rows(m->W_out, L * M, D);
        center_rows(m->b_out, L, D);
    }
    if (m->opts.center_unembed) {
        center_cols(W_U_T, V, D); /* W_U[d, :] -= mean over the vocabulary */
        center_rows(m->b_U, 1, V);
    }
    if (m->opts.fold_value_biases) {
        for (size_t i = 0; i < L; i++) {
            float *bV = m->b_QKV + i * 3 * D + 2 * D; /* (H, d_head) */
            const float *WO = m->W_O + i * D * D;      /* (H * d_head, d_model) */
            for (size_t o = 0; o < D; o++) {
                double s = m->b_O[i * D + o];
                for (size_t k = 0; k < D; k++) s += (double)bV[k] * WO[k * D + o];
                m->b_O[i * D + o] = (float)s;
            }
            memset(bV, 0, D * sizeof(float));
        }
    }
    return CL_OK;
}

static void rope_tables(cl_model *m) {
    const cl_config *c = &m->cfg;
    int half = c->rotary_dim / 2;
    for (int i = 0; i < half; i++) {
        /* as transformers: inv_freq = 1 / base ** (arange(0, dim, 2).float() / dim), in float32 */
        float ex = (float)(2 * i) / (float)c->rotary_dim;
        float inv = 1.0f / (float)pow((double)c->rotary_base, (double)ex);
        for (int p = 0; p < c->n_ctx; p++) {
            float ang = (float)p * inv;
            m->rope_cos[(size_t)p * half + i] = (float)cos((double)ang);
            m->rope_sin[(size_t)p * half + i] = (float)sin((double)ang);
        }
    }
}

cl_status cl_model_load(const char *dir, const cl_load_opts *opts, cl_model **out, cl_error *err) {
    *out = NULL;
    cl_status st = CL_OK;
    char *json = NULL, path[4096];
    loader l = {0};
    cl_model *m = calloc(1, sizeof *m);
    if (!m) return cl_fail(err, CL_ENOMEM, "out of memory");
    if (opts) m->opts = *opts;
    snprintf(path, sizeof path, "%s/config.json", dir);
    if ((st = cl_read_file(path, &json, NULL, err))) goto done;
    if ((st = cl_config_parse(&m->cfg, json, path, err))) goto done;
    if ((st = cl_st_open(dir, &m->st, err))) goto done;
    cl_config *c = &m->cfg;
    const int neox = c->arch == CL_ARCH_NEOX;
    const size_t L = c->n_layers, D = c->d_model, M = c->d_mlp, V = c->d_vocab, C = c->n_ctx;
    l.st = m->st;
    l.dir = dir;
    if (neox) l.prefix = cl_st_find(m->st, "gpt_neox.embed_in.weight") ? "gpt_neox." : "";
    else l.prefix = cl_st_find(m->st, "transformer.wte.weight") ? "transformer." : "";

    /* Which large tensors can stay in the mapping? */
    const cl_st_tensor *tE = cl_st_find(m->st, neox ? (l.prefix[0] ? "gpt_neox.embed_in.weight" : "embed_in.weight")
                                                    : (l.prefix[0] ? "transformer.wte.weight" : "wte.weight"));
    /* NeoX checkpoints name the unembedding embed_out; transformers 5 calls it lm_head in memory */
    const char *unembed_name = neox && cl_st_find(m->st, "embed_out.weight") ? "embed_out.weight" : "lm_head.weight";
    /* tie_word_embeddings with a separate unembedding in the file: transformers then does not tie
     * (it uses the stored unembedding, with a warning when it differs), and neither do we. */
    if (c->tied && cl_st_find(m->st, unembed_name)) c->tied = 0;
    const cl_st_tensor *tU = c->tied ? tE : cl_st_find(m->st, unembed_name);
    const cl_st_tensor *tP = neox ? NULL : cl_st_find(m->st, l.prefix[0] ? "transformer.wpe.weight" : "wpe.weight");
    const int mm = m->opts.mmap_weights;
    int E_in_place = mm && tE && usable_in_place(tE) && !m->opts.center_writing_weights;
    int P_in_place = mm && tP && usable_in_place(tP) && !m->opts.center_writing_weights;
    int U_in_place = mm && tU && usable_in_place(tU) && !m->opts.fold_ln && !m->opts.center_unembed;
    /* A tied unembedding processed differently from W_E needs its own copy. */
    int U_shares_E = c->tied && !E_in_place && !m->opts.fold_ln && !m->opts.center_unembed && !m->opts.center_writing_weights;

    /* Every size below comes from config.json: checked arithmetic throughout (cl_mul_add_size
     * saturates at SIZE_MAX), and the config must not ask for more weights than the files hold,
     * so a hostile config cannot make a small arena that the copies then overrun. */
    size_t need = 0, held = 0;
    cl_mul_add_size(&need, V, D);                 /* W_E */
    cl_mul_add_size(&need, L, 4 * D * D);         /* W_QKV + W_O (4 D^2 cannot overflow: D <= 65536) */
    cl_mul_add_size(&need, L * 2 * D, M);         /* W_in + W_out */
    if (!neox) cl_mul_add_size(&need, C, D);      /* W_pos */
    for (int i = 0; i < m->st->n_tensors; i++) {
        const cl_st_tensor *ti = &m->st->tensors[i];
        size_t es = cl_dtype_size(ti->dtype);
        cl_add_size(held, es ? (ti->end - ti->begin) / es : 0, &held); /* sum <= total file bytes */
    }
    if (need == SIZE_MAX || need > held) {
        st = cl_fail(err, CL_EFORMAT,
                     "%s: config.json (n_layers %zu, d_model %zu, d_mlp %zu, d_vocab %zu) implies at least %s%zu "
                     "weights, but the checkpoint holds only %zu; config.json does not belong to these weights",
                     path, L, D, M, V, need == SIZE_MAX ? "more than " : "", need, held);
        goto done;
    }
    size_t n = 0, half = (size_t)c->rotary_dim / 2;
    size_t off_E = n; if (!E_in_place) cl_mul_add_size(&n, V, D);
    size_t off_P = n; if (!neox && !P_in_place) cl_mul_add_size(&n, C, D);
    size_t off_U = n; if (!U_in_place && !U_shares_E) cl_mul_add_size(&n, V, D);
    size_t off_QKV = n; cl_mul_add_size(&n, L * D, 3 * D);
    size_t off_bQKV = n; cl_mul_add_size(&n, L, 3 * D);
    size_t off_O = n; cl_mul_add_size(&n, L * D, D);
    size_t off_bO = n; cl_mul_add_size(&n, L, D);
    size_t off_ln = n; cl_mul_add_size(&n, 4 * L, D);
    size_t off_in = n; cl_mul_add_size(&n, L * D, M);
    size_t off_bin = n; cl_mul_add_size(&n, L, M);
    size_t off_out = n; cl_mul_add_size(&n, L * M, D);
    size_t off_bout = n; cl_mul_add_size(&n, L, D);
    size_t off_lnf = n; cl_mul_add_size(&n, 2, D);
    size_t off_bU = n; cl_mul_add_size(&n, 1, V);
    size_t off_rope = n; cl_mul_add_size(&n, 2 * C, half);
    size_t nbytes;
    if (n == SIZE_MAX || !cl_mul_size(n, sizeof(float), &nbytes)) {
        st = cl_fail(err, CL_EFORMAT, "%s: the weights config.json describes do not fit in memory", path);
        goto done;
    }
    /* scratch for one converted tensor: the largest we may convert (each product fits: all are
     * at most need or the rope/position tables, checked above) */
    l.scratch_n = V * D;
    if (3 * D * D > l.scratch_n) l.scratch_n = 3 * D * D;
    if (D * M > l.scratch_n) l.scratch_n = D * M;
    if (C * D > l.scratch_n) l.scratch_n = C * D;
    m->arena = calloc(n ? n : 1, sizeof(float));
    l.scratch = malloc(l.scratch_n * sizeof(float));
    if (!m->arena || !l.scratch) {
        st = cl_fail(err, CL_ENOMEM, "out of memory allocating %zu MB for the weights of %s", nbytes >> 20, dir);
        goto done;
    }
    m->arena_floats = n;
    float *A = m->arena;
    m->W_QKV = A + off_QKV; m->b_QKV = A + off_bQKV; m->W_O = A + off_O; m->b_O = A + off_bO;
    m->ln1_w = A + off_ln; m->ln1_b = m->ln1_w + L * D; m->ln2_w = m->ln1_b + L * D; m->ln2_b = m->ln2_w + L * D;
    m->W_in = A + off_in; m->b_in = A + off_bin; m->W_out = A + off_out; m->b_out = A + off_bout;
    m->lnf_w = A + off_lnf; m->lnf_b = m->lnf_w + D; m->b_U = A + off_bU;
    m->rope_cos = A + off_rope; m->rope_sin = m->rope_cos + C * half;

    int64_t sVD[2] = {(int64_t)V, (int64_t)D}, sCD[2] = {(int64_t)C, (int64_t)D}, sD[1] = {(int64_t)D};
    const float *src;
    const cl_st_tensor *t;
    /* embeddings */
    if ((st = fetch(&l, neox ? "embed_in.weight" : "wte.weight", 1, 2, sVD, &t, &src, err))) goto done;
    if (E_in_place) m->W_E = src;
    else { memcpy(A + off_E, src, V * D * sizeof(float)); m->W_E = A + off_E; }
    if (!neox) {
        if ((st = fetch(&l, "wpe.weight", 1, 2, sCD, &t, &src, err))) goto done;
        if (P_in_place) m->W_pos = src;
        else { memcpy(A + off_P, src, C * D * sizeof(float)); m->W_pos = A + off_P; cl_st_release(m->st, t); }
    }
    /* unembedding */
    if (c->tied) {
        if (U_in_place) m->W_U_T = m->W_E;
        else if (U_shares_E) m->W_U_T = A + off_E;
        else { memcpy(A + off_U, m->W_E, V * D * sizeof(float)); m->W_U_T = A + off_U; }
    } else {
        if ((st = fetch(&l, unembed_name, 0, 2, sVD, &t, &src, err))) goto done;
        if (U_in_place) m->W_U_T = src;
        else { memcpy(A + off_U, src, V * D * sizeof(float)); m->W_U_T = A + off_U; cl_st_release(m->st, t); }
    }
    if (!E_in_place && tE) cl_st_release(m->st, tE);
    m->W_E_in_place = E_in_place;
    m->W_pos_in_place = !neox && P_in_place;
    m->W_U_in_place = U_in_place;
    for (size_t i = 0; i < L; i++)
        if ((st = neox ? load_neox_layer(&l, m, (int)i, err) : load_gpt2_layer(&l, m, (int)i, err))) goto done;
    if ((st = copy_to(&l, neox ? "final_layer_norm.weight" : "ln_f.weight", 1, sD, m->lnf_w, err))) goto done;
    if ((st = copy_to(&l, neox ? "final_layer_norm.bias" : "ln_f.bias", 1, sD, m->lnf_b, err))) goto done;
    if (c->rotary_dim) rope_tables(m);
    if ((st = process(m, (float *)(E_in_place ? NULL : A + off_E), (float *)(neox || P_in_place ? NULL : A + off_P),
                      (float *)(U_in_place || U_shares_E ? NULL : A + off_U), err)))
        goto done;
    if (!E_in_place && !P_in_place && !U_in_place) { cl_st_close(m->st); m->st = NULL; }
    else if (m->st && (st = cl_st_check(m->st, err))) goto done; /* changed while loading */
done:
    free(l.scratch);
    free(json);
    if (st) { cl_model_free(m); return st; }
    *out = m;
    return CL_OK;
}

cl_status cl_model_check_files(const cl_model *m, cl_error *err) {
    return m->st ? cl_st_check(m->st, err) : CL_OK;
}

void cl_model_free(cl_model *m) {
    if (!m) return;
    cl_st_close(m->st);
    free(m->arena);
    free(m);
}
