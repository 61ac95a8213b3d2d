/* cl_forward.c: embed -> blocks (sequential | parallel) -> ln_final -> unembed, with hooks.
 * Activations are packed: only real tokens are computed (sequences back to back, no padding),
 * so every row of a padded batch gets exactly the numbers it gets alone, and padding costs
 * nothing. Attention is per sequence and head (and query block, for long sequences), causal
 * half only. One OpenMP team does everything: GEMMs split across it (cl_blas.c), attention
 * tasks spread over it with single-threaded GEMMs inside. Stops after the deepest hook point
 * anyone asked for when logits are not wanted. All of a call's memory is one allocation. */
#include "cl_forward.h"

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "cl_blas.h"
#include "cl_kernels.h"

enum { QB = 128 }; /* query rows per BLAS attention block; sequences of 2 QB tokens or more use blocks */

/* One task of a layer's attention: a whole (sequence, head) with the fused kernel (i0 < 0), or
 * the block of QB query rows from i0 of one long sequence (BLAS). */
typedef struct {
    int32_t b, h, i0;
} attn_task;

/* Every buffer a forward pass writes, carved from one allocation (acts_alloc). N: the real tokens
 * of the batch, packed: sequence b at rows start[b] .. start[b] + lengths[b] - 1. Head h of a
 * per-head buffer sits at columns h * d_head (h * d_model for result). In forward order: */
typedef struct {
    int32_t *start;   /* (B) first packed row of each sequence */
    float *resid;     /* (N, d_model) hook_resid_pre -> hook_resid_mid -> hook_resid_post, in place */
    float *ln;        /* (N, d_model) hook_embed, then ln1 / ln2 / ln_final.hook_normalized */
    float *scale;     /* (N) ln1 / ln2 / ln_final.hook_scale */
    float *qkv;       /* (N, 3, n_heads, d_head) hook_q | hook_k | hook_v, rotated in place: hook_rot_q / hook_rot_k */
    float *attn;      /* (B, n_heads, T_pad, T_pad) hook_attn_scores, then hook_pattern; only when either is hooked */
    float *z;         /* (N, n_heads, d_head) hook_z */
    float *result;    /* (N, n_heads, d_model) hook_result; only when it is hooked */
    float *attn_out;  /* (N, d_model) hook_pos_embed, then hook_attn_out */
    float *mlp;       /* (N, d_mlp) mlp.hook_pre, then mlp.hook_post (the activation, in place) */
    float *mlp_out;   /* (N, d_model) hook_mlp_out; with logits_last, (B, d_model) each sequence's last ln_final row */
    float *tmp;       /* (N, max(3 d_model, d_mlp, n_heads d_model)) contiguous copy of a strided view for a
                       * callback; only with callbacks */
    float *scratch;   /* (threads, scratch_per) one attention task's scores per thread */
    attn_task *tasks; /* (n_tasks) a layer's attention work without a KV cache or a hooked pattern */
} activations;

typedef struct {
    const cl_model *m;
    const cl_config *c;
    const cl_fwd_args *a;
    cl_kv_cache *kv;    /* a->kv */
    size_t N;           /* real tokens in the batch */
    int maxT;           /* the longest sequence */
    int remaining;      /* active hook points not yet reached */
    int want_final;     /* a hook point after the blocks (ln_final) */
    int want_attn, want_result, want_tmp; /* which optional buffers the hooks need */
    int nthreads, n_tasks;
    size_t scratch_per; /* floats of attention scratch per thread */
    activations x;
} fwd;

/* Nothing left to compute: every hook point reached and no logits, ln_final hook or KV cache. */
static int finished(const fwd *f) { return f->remaining == 0 && !f->a->logits && !f->want_final && !f->kv; }

#define TRY(x) do { cl_status st_ = (x); if (st_) return st_; } while (0)
#define HOOK(kind, layer, buf, stride) TRY(hook_rows(f, kind, layer, buf, stride, err))

/* ---- hook points ---------------------------------------------------------------------------- */

static cl_hook_slot *slot_of(const fwd *f, cl_hook_kind k, int layer) {
    if (!f->a->slots) return NULL;
    cl_hook_slot *s = &f->a->slots[cl_hook_slot_index(&f->m->cfg, k, layer)];
    return (s->capture || s->patch || s->callback || s->ablate_heads || s->n_set || s->observe) ? s : NULL;
}

/* Run a per-token hook point on a packed view data (N rows, F features, row stride `stride`). */
static cl_status hook_rows(fwd *f, cl_hook_kind kind, int layer, float *data, size_t stride, cl_error *err) {
    cl_hook_slot *s = slot_of(f, kind, layer);
    if (!s) return CL_OK;
    f->remaining--;
    const cl_config *c = &f->m->cfg;
    const cl_fwd_args *a = f->a;
    const size_t F = cl_hook_features(c, kind), N = f->N;
    if (s->patch) {
        for (int b = 0; b < a->B; b++)
            for (int t = 0; t < a->lengths[b]; t++)
                memcpy(data + (size_t)(f->x.start[b] + t) * stride, s->patch + ((size_t)b * a->T_pad + t) * F, F * sizeof(float));
    }
    if (s->ablate_heads) {
        size_t per = F / (size_t)c->n_heads;
        for (int h = 0; h < c->n_heads; h++) {
            if (!s->ablate_heads[h]) continue;
            for (size_t r = 0; r < N; r++) {
                float *d = data + r * stride + (size_t)h * per;
                if (s->ablate_values) memcpy(d, s->ablate_values + (size_t)h * per, per * sizeof(float));
                else memset(d, 0, per * sizeof(float));
            }
        }
    }
    for (int i = 0; i < s->n_set; i++)
        for (size_t r = 0; r < N; r++) data[r * stride + s->set_idx[i]] = s->set_val[i];
    if (s->callback) {
        float *buf = data;
        if (stride != F) {
            buf = f->x.tmp;
            for (size_t r = 0; r < N; r++) memcpy(buf + r * F, data + r * stride, F * sizeof(float));
        }
        cl_hook_view v = {kind, layer, buf, 0, N, F};
        cl_status st = a->hook_fn(a->hook_ctx, &v, err);
        if (st) return st;
        if (stride != F)
            for (size_t r = 0; r < N; r++) memcpy(data + r * stride, buf + r * F, F * sizeof(float));
    }
    if (s->observe) {
        cl_status st = s->observe(s->observe_ctx, layer, data, stride, N, f->x.start, a->lengths, a->B, err);
        if (st) return st;
    }
    if (s->capture) {
        int P = a->pos ? a->P : a->T_pad;
        for (int b = 0; b < a->B; b++)
            for (int p = 0; p < P; p++) {
                float *o = s->capture + ((size_t)b * P + p) * F;
                int t = a->pos ? a->pos[(size_t)b * P + p] : p;
                if (t < a->lengths[b]) memcpy(o, data + (size_t)(f->x.start[b] + t) * stride, F * sizeof(float));
                else memset(o, 0, F * sizeof(float));
            }
    }
    return CL_OK;
}

/* Attention hook point on the materialised (B, H, T_pad, T_pad) buffer. */
static cl_status hook_attention(fwd *f, cl_hook_kind kind, int layer, cl_error *err) {
    cl_hook_slot *s = slot_of(f, kind, layer);
    if (!s) return CL_OK;
    f->remaining--;
    const cl_fwd_args *a = f->a;
    const size_t H = f->m->cfg.n_heads, T = a->T_pad, total = (size_t)a->B * H * T * T;
    if (s->observe) return cl_fail(err, CL_EINVAL, "observers are for per-token hooks, not attention patterns");
    if (s->patch) memcpy(f->x.attn, s->patch, total * sizeof(float));
    if (s->callback) {
        cl_hook_view v = {kind, layer, f->x.attn, 1, 0, H};
        cl_status st = a->hook_fn(a->hook_ctx, &v, err);
        if (st) return st;
    }
    if (s->capture) {
        if (!a->pos) memcpy(s->capture, f->x.attn, total * sizeof(float));
        else
            for (int b = 0; b < a->B; b++)
                for (size_t h = 0; h < H; h++)
                    for (int p = 0; p < a->P; p++)
                        memcpy(s->capture + (((size_t)b * H + h) * a->P + p) * T,
                               f->x.attn + (((size_t)b * H + h) * T + a->pos[(size_t)b * a->P + p]) * T, T * sizeof(float));
    }
    return CL_OK;
}

/* Causal attention for query rows i0..i0+rows of one long sequence and head, with BLAS: the
 * block's scores need keys 0..i0+rows only, so the masked half is never computed except inside
 * the diagonal block. Runs on the calling thread (one task of a parallel loop). S: at least
 * rows * (i0 + rows) floats. */
static void attention_block_blas(float *z, size_t zstride, const float *q, const float *k, const float *v, size_t stride,
                                 int i0, int rows, int d_head, float scale, float *S) {
    int end = i0 + rows;
    cl_sgemm(0, 1, rows, end, d_head, q + (size_t)i0 * stride, (int)stride, k, (int)stride, 0.0f, S, end);
    cl_softmax_causal(S, end, rows, i0, end, scale);
    cl_sgemm(0, 0, rows, d_head, end, S, end, v, (int)stride, 0.0f, z + (size_t)i0 * zstride, (int)zstride);
}

cl_status cl_kv_cache_new(const cl_config *c, int B, int capacity, cl_kv_cache **out, cl_error *err) {
    *out = NULL;
    if (B < 1) return cl_fail(err, CL_EINVAL, "key-value cache: batch size %d, need at least 1", B);
    if (capacity < 1 || capacity > c->n_ctx)
        return cl_fail(err, CL_EINVAL, "key-value cache: capacity %d is outside [1, n_ctx = %d]", capacity, c->n_ctx);
    cl_kv_cache *kv = calloc(1, sizeof *kv);
    size_t n = (size_t)c->n_layers * B * capacity * c->d_model;
    if (kv) {
        kv->len = calloc((size_t)B, sizeof *kv->len);
        kv->k = malloc(n * sizeof(float));
        kv->v = malloc(n * sizeof(float));
    }
    if (!kv || !kv->len || !kv->k || !kv->v) {
        cl_kv_cache_free(kv);
        return cl_fail(err, CL_ENOMEM, "out of memory for a key-value cache of %d x %d positions", B, capacity);
    }
    kv->B = B;
    kv->capacity = capacity;
    kv->n_layers = c->n_layers;
    kv->d_model = c->d_model;
    *out = kv;
    return CL_OK;
}

void cl_kv_cache_free(cl_kv_cache *kv) {
    if (!kv) return;
    free(kv->len);
    free(kv->k);
    free(kv->v);
    free(kv);
}

/* Attention of n new query rows of one sequence and head over its past + n cached keys (the
 * new ones already appended): query i sits at position past + i and sees keys 0..past + i.
 * Blocks of QB query rows, each with two GEMMs. K, V: the cache rows of this sequence (row
 * stride d_model), at the head's columns. S: QB * (past + n) floats. */
static void attention_past(float *z, size_t zstride, const float *q, size_t qstride, const float *K, const float *V,
                           size_t kvstride, int past, int n, int d_head, float scale, float *S) {
    for (int i0 = 0; i0 < n; i0 += QB) {
        int rows = n - i0 < QB ? n - i0 : QB, end = past + i0 + rows;
        cl_sgemm(0, 1, rows, end, d_head, q + (size_t)i0 * qstride, (int)qstride, K, (int)kvstride, 0.0f, S, end);
        cl_softmax_causal(S, end, rows, past + i0, end, scale);
        cl_sgemm(0, 0, rows, d_head, end, S, end, V, (int)kvstride, 0.0f, z + (size_t)i0 * zstride, (int)zstride);
    }
}

/* ---- validation and planning ---------------------------------------------------------------- */

/* The arguments against the model (and the KV cache): N and maxT from the lengths. */
static cl_status check_args(fwd *f, cl_error *err) {
    const cl_fwd_args *a = f->a;
    const cl_config *c = f->c;
    const int L = c->n_layers;
    if (a->B < 1) return cl_fail(err, CL_EINVAL, "empty batch: at least one sequence is needed");
    if (a->stop_at_layer < 0 || a->stop_at_layer > L)
        return cl_fail(err, CL_EINVAL, "stop_at_layer %d is outside [0, %d]", a->stop_at_layer, L);
    if (a->logits && a->stop_at_layer != L) return cl_fail(err, CL_EINVAL, "logits need the full model (stop_at_layer = n_layers)");
    cl_kv_cache *kv = f->kv;
    if (kv) {
        if (kv->B != a->B || kv->n_layers != L || kv->d_model != c->d_model)
            return cl_fail(err, CL_EINVAL, "the key-value cache was made for %d sequences of this shape of model; %d given",
                           kv->B, a->B);
        if (a->slots || a->pos || a->stop_at_layer != L)
            return cl_fail(err, CL_EINVAL, "hooks, pos and stop_at_layer are not available with a key-value cache");
        for (int b = 0; b < a->B; b++)
            if (kv->len[b] + a->lengths[b] > kv->capacity)
                return cl_fail(err, CL_EINVAL, "sequence %d: %d cached + %d new positions exceed the key-value cache's "
                               "capacity of %d (the model's context is n_ctx = %d)", b, kv->len[b], a->lengths[b],
                               kv->capacity, c->n_ctx);
    }
    f->N = 0;
    f->maxT = 0;
    for (int b = 0; b < a->B; b++) {
        int len = a->lengths[b];
        if (len < 1) return cl_fail(err, CL_EINVAL, "sequence %d is empty (length %d); every sequence needs at least one token", b, len);
        if (len > c->n_ctx) return cl_fail(err, CL_EINVAL, "sequence %d has %d tokens, more than the model's context n_ctx = %d", b, len, c->n_ctx);
        if (len > a->T_pad) return cl_fail(err, CL_EINVAL, "sequence %d has %d tokens, more than the padded length %d", b, len, a->T_pad);
        f->N += (size_t)len;
        if (len > f->maxT) f->maxT = len;
    }
    for (size_t i = 0, b = 0, t = 0; i < f->N; i++, t++) {
        while ((int)t == a->lengths[b]) { b++; t = 0; }
        if (a->tokens[i] < 0 || a->tokens[i] >= c->d_vocab)
            return cl_fail(err, CL_EINVAL, "token id %d at sequence %d, position %d is outside the vocabulary [0, %d)",
                           a->tokens[i], (int)b, (int)t, c->d_vocab);
    }
    if (a->pos)
        for (int b = 0; b < a->B; b++)
            for (int p = 0; p < a->P; p++) {
                int t = a->pos[(size_t)b * a->P + p];
                if (t < 0 || t >= a->lengths[b])
                    return cl_fail(err, CL_EINVAL, "pos[%d][%d] = %d is outside sequence %d's %d tokens", b, p, t, b, a->lengths[b]);
            }
    return CL_OK;
}

static cl_status hook_fail(const fwd *f, cl_hook_kind k, int l, const char *why, cl_error *err) {
    char nm[96];
    cl_hook_name(f->c, k, l, nm, sizeof nm);
    return cl_fail(err, CL_EINVAL, why, nm, f->a->stop_at_layer);
}

/* Count the active hook points and note which optional buffers they need. */
static cl_status plan_hooks(fwd *f, cl_error *err) {
    const cl_fwd_args *a = f->a;
    const int L = f->c->n_layers;
    if (!a->slots) return CL_OK;
    for (int k = 0; k < CL_HK_COUNT; k++)
        for (int l = -1; l < L; l++) {
            if (cl_hook_is_block((cl_hook_kind)k) != (l >= 0)) continue;
            const cl_hook_slot *s = slot_of(f, (cl_hook_kind)k, l);
            if (!s) continue;
            if (!cl_hook_available(f->c, (cl_hook_kind)k)) return hook_fail(f, (cl_hook_kind)k, l, "hook '%s' does not exist in this model", err);
            if ((l >= a->stop_at_layer) || (k >= CL_HK_LNF_SCALE && a->stop_at_layer != L))
                return hook_fail(f, (cl_hook_kind)k, l, "hook '%s' is not reached with stop_at_layer = %d", err);
            f->remaining++;
            if (k == CL_HK_ATTN_SCORES || k == CL_HK_PATTERN) f->want_attn = 1;
            if (k == CL_HK_RESULT) f->want_result = 1;
            if (k >= CL_HK_LNF_SCALE) f->want_final = 1;
            if (s->callback) f->want_tmp = 1;
            if (s->callback && !a->hook_fn) return cl_fail(err, CL_EINVAL, "a callback was requested without a hook function");
        }
    return CL_OK;
}

/* The next `bytes` of the workspace at *off, 64-byte aligned; NULL for none, or while base is NULL
 * (the sizing pass). */
static void *carve(char *base, size_t *off, size_t bytes) {
    if (!bytes) return NULL;
    void *p = base ? base + *off : NULL;
    *off += (bytes + 63) / 64 * 64;
    return p;
}

/* Lay the activations out in base (NULL: only size them); returns the bytes needed. */
static size_t acts_layout(fwd *f, char *base) {
    const cl_fwd_args *a = f->a;
    const size_t N = f->N, D = f->c->d_model, M = f->c->d_mlp, H = f->c->n_heads, T = a->T_pad, fl = sizeof(float);
    const size_t wide = 3 * D > M ? 3 * D : M, tmp_cols = wide > H * D ? wide : H * D;
    activations *x = &f->x;
    size_t off = 0;
    x->start = carve(base, &off, (size_t)a->B * sizeof *x->start);
    x->resid = carve(base, &off, N * D * fl);
    x->ln = carve(base, &off, N * D * fl);
    x->scale = carve(base, &off, N * fl);
    x->qkv = carve(base, &off, N * 3 * D * fl);
    x->attn = carve(base, &off, f->want_attn ? (size_t)a->B * H * T * T * fl : 0);
    x->z = carve(base, &off, N * D * fl);
    x->result = carve(base, &off, f->want_result ? N * H * D * fl : 0);
    x->attn_out = carve(base, &off, N * D * fl);
    x->mlp = carve(base, &off, N * M * fl);
    x->mlp_out = carve(base, &off, N * D * fl);
    x->tmp = carve(base, &off, f->want_tmp ? N * tmp_cols * fl : 0);
    x->scratch = carve(base, &off, (size_t)f->nthreads * f->scratch_per * fl);
    x->tasks = carve(base, &off, (size_t)f->n_tasks * sizeof *x->tasks);
    return off;
}

/* Size the attention scratch and tasks, then allocate every buffer at once (*block: free it). */
static cl_status acts_alloc(fwd *f, void **block, cl_error *err) {
    const cl_fwd_args *a = f->a;
    f->nthreads = cl_num_threads();
    f->scratch_per = cl_attention_head_scratch(f->maxT, f->c->d_head); /* the fused kernel */
    if (f->maxT >= 2 * QB && (size_t)QB * f->maxT > f->scratch_per) f->scratch_per = (size_t)QB * f->maxT; /* a BLAS score block */
    if (f->kv) {
        int maxK = 0; /* past + new keys of the longest sequence */
        for (int b = 0; b < a->B; b++) if (f->kv->len[b] + a->lengths[b] > maxK) maxK = f->kv->len[b] + a->lengths[b];
        if ((size_t)QB * maxK > f->scratch_per) f->scratch_per = (size_t)QB * maxK;
    }
    f->n_tasks = 0;
    for (int b = 0; b < a->B; b++) f->n_tasks += f->c->n_heads * (a->lengths[b] < 2 * QB ? 1 : (a->lengths[b] + QB - 1) / QB);
    *block = malloc(acts_layout(f, NULL));
    if (!*block) return cl_fail(err, CL_ENOMEM, "out of memory for activations of %zu tokens", f->N);
    acts_layout(f, *block);
    activations *x = &f->x;
    int32_t n = 0;
    for (int b = 0; b < a->B; b++) { x->start[b] = n; n += a->lengths[b]; }
    int i = 0;
    for (int b = 0; b < a->B; b++) /* each head's blocks from the last (the costliest) down, for dynamic scheduling */
        for (int h = 0; h < f->c->n_heads; h++) {
            if (a->lengths[b] < 2 * QB) { x->tasks[i++] = (attn_task){b, h, -1}; continue; }
            for (int i0 = (a->lengths[b] - 1) / QB * QB; i0 >= 0; i0 -= QB) x->tasks[i++] = (attn_task){b, h, i0};
        }
    return CL_OK;
}

/* ---- the stages of the forward pass ---------------------------------------------------------- */

/* hook_embed = W_E[tokens] (in ln), hook_pos_embed = W_pos[positions] (in attn_out), resid = their sum */
static cl_status embed(fwd *f, cl_error *err) {
    const cl_fwd_args *a = f->a;
    const activations *x = &f->x;
    const size_t N = f->N, D = f->c->d_model;
    for (size_t i = 0; i < N; i++) memcpy(x->ln + i * D, f->m->W_E + (size_t)a->tokens[i] * D, D * sizeof(float));
    HOOK(CL_HK_EMBED, -1, x->ln, D);
    memcpy(x->resid, x->ln, N * D * sizeof(float));
    if (f->m->W_pos) {
        for (int b = 0; b < a->B; b++)
            memcpy(x->attn_out + (size_t)x->start[b] * D, f->m->W_pos + (f->kv ? (size_t)f->kv->len[b] * D : 0),
                   (size_t)a->lengths[b] * D * sizeof(float));
        HOOK(CL_HK_POS_EMBED, -1, x->attn_out, D);
        cl_add(x->resid, x->attn_out, N * D);
    }
    return CL_OK;
}

/* ln1 -> hook_q | hook_k | hook_v = ln1 W_QKV + b_QKV (one GEMM) -> rotary: hook_rot_q, hook_rot_k */
static cl_status attn_qkv(fwd *f, int l, cl_error *err) {
    const cl_model *m = f->m;
    const cl_config *c = f->c;
    const activations *x = &f->x;
    const size_t N = f->N, D = c->d_model;
    cl_layernorm(x->ln, x->scale, x->resid, m->ln1_w ? m->ln1_w + l * D : NULL, m->ln1_b ? m->ln1_b + l * D : NULL, N, D, c->eps);
    HOOK(CL_HK_LN1_SCALE, l, x->scale, 1);
    HOOK(CL_HK_LN1_NORMALIZED, l, x->ln, D);
    if (finished(f)) return CL_OK;
    cl_fill_rows(x->qkv, m->b_QKV + (size_t)l * 3 * D, N, 3 * D);
    cl_sgemm(0, 0, (int)N, (int)(3 * D), (int)D, x->ln, (int)D, m->W_QKV + (size_t)l * D * 3 * D, (int)(3 * D), 1.0f, x->qkv, (int)(3 * D));
    HOOK(CL_HK_Q, l, x->qkv, 3 * D);
    HOOK(CL_HK_K, l, x->qkv + D, 3 * D);
    HOOK(CL_HK_V, l, x->qkv + 2 * D, 3 * D);
    if (!c->rotary_dim) return CL_OK;
    for (int b = 0; b < f->a->B; b++) {
        float *row = x->qkv + (size_t)x->start[b] * 3 * D;
        size_t off = f->kv ? (size_t)f->kv->len[b] * (c->rotary_dim / 2) : 0; /* tables start at the first new position */
        cl_rotary(row, 3 * D, f->a->lengths[b], c->n_heads, c->d_head, c->rotary_dim, m->rope_cos + off, m->rope_sin + off);
        cl_rotary(row + D, 3 * D, f->a->lengths[b], c->n_heads, c->d_head, c->rotary_dim, m->rope_cos + off, m->rope_sin + off);
    }
    HOOK(CL_HK_ROT_Q, l, x->qkv, 3 * D);
    HOOK(CL_HK_ROT_K, l, x->qkv + D, 3 * D);
    return CL_OK;
}

/* With a KV cache: append the new keys and values of layer l, then each new query attends over
 * everything cached (attention_past). */
static void attend_cached(fwd *f, int l, float scale) {
    const cl_fwd_args *a = f->a;
    const activations *x = &f->x;
    cl_kv_cache *kv = f->kv;
    const int H = f->c->n_heads, dh = f->c->d_head;
    const size_t D = f->c->d_model, cap = kv->capacity;
    for (int b = 0; b < a->B; b++) {
        float *K = kv->k + (((size_t)l * a->B + b) * cap + kv->len[b]) * D, *Vc = kv->v + (((size_t)l * a->B + b) * cap + kv->len[b]) * D;
        for (int t = 0; t < a->lengths[b]; t++) {
            const float *row = x->qkv + ((size_t)x->start[b] + t) * 3 * D;
            memcpy(K + (size_t)t * D, row + D, D * sizeof(float));
            memcpy(Vc + (size_t)t * D, row + 2 * D, D * sizeof(float));
        }
    }
#pragma omp parallel for schedule(dynamic, 1) num_threads(f->nthreads)
    for (int task = 0; task < a->B * H; task++) {
        int b = task / H, h = task % H;
        const float *K = kv->k + ((size_t)l * a->B + b) * cap * D + (size_t)h * dh,
                    *Vc = kv->v + ((size_t)l * a->B + b) * cap * D + (size_t)h * dh;
        attention_past(x->z + (size_t)x->start[b] * D + (size_t)h * dh, D, x->qkv + (size_t)x->start[b] * 3 * D + (size_t)h * dh,
                       3 * D, K, Vc, D, kv->len[b], a->lengths[b], dh, scale,
                       x->scratch + (size_t)omp_get_thread_num() * f->scratch_per);
    }
}

/* With hook_attn_scores or hook_pattern: the (T_pad, T_pad) scores of every sequence and head
 * materialised, hooked, softmaxed (NaN keys as PyTorch), hooked again, then z = pattern v. */
static cl_status attend_with_pattern(fwd *f, int l, float scale, cl_error *err) {
    const cl_fwd_args *a = f->a;
    const activations *x = &f->x;
    const int H = f->c->n_heads, dh = f->c->d_head, tasks = a->B * H;
    const size_t D = f->c->d_model, T = a->T_pad;
#pragma omp parallel for schedule(dynamic, 1) num_threads(f->nthreads)
    for (int task = 0; task < tasks; task++) {
        int b = task / H, h = task % H;
        const float *q = x->qkv + (size_t)x->start[b] * 3 * D + (size_t)h * dh;
        cl_attention_scores(x->attn + ((size_t)b * H + h) * T * T, T, q, q + D, 3 * D, a->lengths[b], (int)T, dh, scale,
                            x->scratch + (size_t)omp_get_thread_num() * f->scratch_per);
    }
    TRY(hook_attention(f, CL_HK_ATTN_SCORES, l, err));
#pragma omp parallel for schedule(dynamic, 1) num_threads(f->nthreads)
    for (int task = 0; task < tasks; task++) {
        int b = task / H, h = task % H;
        cl_attention_softmax(x->attn + ((size_t)b * H + h) * T * T, T, a->lengths[b], (int)T);
        cl_attention_nan_keys(x->attn + ((size_t)b * H + h) * T * T, T, (int)T, NULL, 0,
                              x->qkv + (size_t)x->start[b] * 3 * D + D + (size_t)h * dh, 3 * D, a->lengths[b], dh);
    }
    TRY(hook_attention(f, CL_HK_PATTERN, l, err));
#pragma omp parallel for schedule(dynamic, 1) num_threads(f->nthreads)
    for (int task = 0; task < tasks; task++) {
        int b = task / H, h = task % H;
        const float *v = x->qkv + (size_t)x->start[b] * 3 * D + 2 * D + (size_t)h * dh;
        cl_attention_pv(x->z + (size_t)x->start[b] * D + (size_t)h * dh, D, x->attn + ((size_t)b * H + h) * T * T, T, v, 3 * D,
                        a->lengths[b], dh);
    }
    return CL_OK;
}

/* Otherwise: the causal half only, the fused kernel for short sequences, BLAS blocks for long. */
static void attend(fwd *f, float scale) {
    const activations *x = &f->x;
    const int dh = f->c->d_head;
    const size_t D = f->c->d_model;
#pragma omp parallel for schedule(dynamic, 1) num_threads(f->nthreads)
    for (int i = 0; i < f->n_tasks; i++) {
        const attn_task t = x->tasks[i];
        const int len = f->a->lengths[t.b];
        const float *q = x->qkv + (size_t)x->start[t.b] * 3 * D + (size_t)t.h * dh;
        float *zo = x->z + (size_t)x->start[t.b] * D + (size_t)t.h * dh, *sc_buf = x->scratch + (size_t)omp_get_thread_num() * f->scratch_per;
        if (t.i0 < 0) cl_attention_head(zo, D, q, q + D, q + 2 * D, 3 * D, len, dh, scale, sc_buf);
        else attention_block_blas(zo, D, q, q + D, q + 2 * D, 3 * D, t.i0, len - t.i0 < QB ? len - t.i0 : QB, dh, scale, sc_buf);
    }
}

/* hook_z = softmax(q k^T * attn_scale) v per sequence and head; NaN in k, NaN / inf in v reach
 * every query, as in PyTorch. */
static cl_status attn_mix(fwd *f, int l, cl_error *err) {
    const activations *x = &f->x;
    const int H = f->c->n_heads, dh = f->c->d_head;
    const size_t D = f->c->d_model;
    float scale = f->c->attn_scale / (f->c->scale_by_layer ? (float)(l + 1) : 1.0f);
    if (f->kv) attend_cached(f, l, scale);
    else if (slot_of(f, CL_HK_ATTN_SCORES, l) || slot_of(f, CL_HK_PATTERN, l)) TRY(attend_with_pattern(f, l, scale, err));
    else attend(f, scale);
#pragma omp parallel for schedule(static) num_threads(f->nthreads)
    for (int task = 0; task < f->a->B * H; task++) {
        const int b = task / H, len = f->a->lengths[b];
        float *zh = x->z + (size_t)x->start[b] * D + (size_t)(task % H) * dh;
        const float *kh = x->qkv + (size_t)x->start[b] * 3 * D + D + (size_t)(task % H) * dh;
        cl_attention_nan_keys(NULL, 0, 0, zh, D, kh, 3 * D, len, dh);
        cl_attention_nonfinite_v(zh, D, kh + D, 3 * D, len, dh);
    }
    HOOK(CL_HK_Z, l, x->z, D);
    return CL_OK;
}

/* hook_result[n, h] = z[n, h] W_O[h] (no b_O), when hooked; hook_attn_out = z W_O + b_O, or the sum
 * of the heads' results + b_O when a hook changed them (so edits reach the residual stream). */
static cl_status attn_output(fwd *f, int l, cl_error *err) {
    const cl_model *m = f->m;
    const activations *x = &f->x;
    const int H = f->c->n_heads, dh = f->c->d_head;
    const size_t N = f->N, D = f->c->d_model;
    const float *WO = m->W_O + (size_t)l * D * D;
    const cl_hook_slot *rs = slot_of(f, CL_HK_RESULT, l);
    if (rs) {
        for (int h = 0; h < H; h++)
            cl_sgemm(0, 0, (int)N, (int)D, dh, x->z + (size_t)h * dh, (int)D, WO + (size_t)h * dh * D, (int)D, 0.0f,
                     x->result + (size_t)h * D, (int)(H * D));
        HOOK(CL_HK_RESULT, l, x->result, (size_t)H * D);
    }
    cl_fill_rows(x->attn_out, m->b_O + (size_t)l * D, N, D);
    if (rs && (rs->patch || rs->callback || rs->ablate_heads || rs->n_set)) {
        for (size_t r = 0; r < N; r++)
            for (int h = 0; h < H; h++) cl_add(x->attn_out + r * D, x->result + (r * H + h) * D, D);
    } else { /* capturing hook_result is observational: attn_out is the same GEMM as without it */
        cl_sgemm(0, 0, (int)N, (int)D, (int)D, x->z, (int)D, WO, (int)D, 1.0f, x->attn_out, (int)D);
    }
    HOOK(CL_HK_ATTN_OUT, l, x->attn_out, D);
    return CL_OK;
}

/* attention: ln1 -> qkv -> (rotary) -> softmax(q k^T / sqrt(d_head)) v -> z -> W_O */
static cl_status attention_block(fwd *f, int l, cl_error *err) {
    TRY(attn_qkv(f, l, err));
    if (finished(f)) return CL_OK;
    TRY(attn_mix(f, l, err));
    if (finished(f)) return CL_OK;
    return attn_output(f, l, err);
}

/* MLP: (sequential) hook_resid_mid = resid + attn_out -> ln2 -> hook_pre = ln2 W_in + b_in ->
 * hook_post = act(hook_pre) -> hook_mlp_out = post W_out + b_out -> hook_resid_post = resid (+
 * attn_out when parallel) + mlp_out. Sequential blocks read resid_mid, parallel ones resid_pre. */
static cl_status mlp_block(fwd *f, int l, cl_error *err) {
    const cl_model *m = f->m;
    const cl_config *c = f->c;
    const activations *x = &f->x;
    const size_t N = f->N, D = c->d_model, M = c->d_mlp;
    if (!c->parallel) {
        cl_add(x->resid, x->attn_out, N * D);
        HOOK(CL_HK_RESID_MID, l, x->resid, D);
    }
    cl_layernorm(x->ln, x->scale, x->resid, m->ln2_w ? m->ln2_w + l * D : NULL, m->ln2_b ? m->ln2_b + l * D : NULL, N, D, c->eps);
    HOOK(CL_HK_LN2_SCALE, l, x->scale, 1);
    HOOK(CL_HK_LN2_NORMALIZED, l, x->ln, D);
    if (finished(f)) return CL_OK;
    cl_fill_rows(x->mlp, m->b_in + (size_t)l * M, N, M);
    cl_sgemm(0, 0, (int)N, (int)M, (int)D, x->ln, (int)D, m->W_in + (size_t)l * D * M, (int)M, 1.0f, x->mlp, (int)M);
    HOOK(CL_HK_MLP_PRE, l, x->mlp, M);
    if (finished(f)) return CL_OK;
    if (c->act == CL_ACT_GELU_NEW) cl_gelu_tanh(x->mlp, N * M);
    else if (c->act == CL_ACT_GELU) cl_gelu_erf(x->mlp, N * M);
    else cl_relu(x->mlp, N * M);
    HOOK(CL_HK_MLP_POST, l, x->mlp, M);
    if (finished(f)) return CL_OK;
    cl_fill_rows(x->mlp_out, m->b_out + (size_t)l * D, N, D);
    cl_sgemm(0, 0, (int)N, (int)D, (int)M, x->mlp, (int)M, m->W_out + (size_t)l * M * D, (int)D, 1.0f, x->mlp_out, (int)D);
    HOOK(CL_HK_MLP_OUT, l, x->mlp_out, D);
    if (c->parallel) cl_add(x->resid, x->attn_out, N * D);
    cl_add(x->resid, x->mlp_out, N * D);
    HOOK(CL_HK_RESID_POST, l, x->resid, D);
    return CL_OK;
}

/* out (rows, d_vocab) = ln (rows, d_model; row stride d_model) W_U + b_U, in chunks of QB rows:
 * the output block stays in cache for the bias add, and beta = 0 never reads the output back. */
static void unembed_rows(const fwd *f, float *out, const float *ln, int rows, int has_bias) {
    const size_t D = f->c->d_model, V = f->c->d_vocab;
    for (int r0 = 0; r0 < rows; r0 += QB) {
        int n = rows - r0 < QB ? rows - r0 : QB;
        float *o = out + (size_t)r0 * V;
        cl_sgemm(0, 1, n, (int)V, (int)D, ln + (size_t)r0 * D, (int)D, f->m->W_U_T, (int)D, 0.0f, o, (int)V);
        if (has_bias)
            for (int r = 0; r < n; r++) cl_add(o + (size_t)r * V, f->m->b_U, V);
    }
}

/* ln_final: hook_scale, hook_normalized -> logits (B, T_pad, d_vocab), padded rows zero, or each
 * sequence's last position (B, d_vocab) with logits_last. */
static cl_status unembed(fwd *f, cl_error *err) {
    const cl_model *m = f->m;
    const cl_fwd_args *a = f->a;
    const activations *x = &f->x;
    const size_t D = f->c->d_model, V = f->c->d_vocab;
    cl_layernorm(x->ln, x->scale, x->resid, m->lnf_w, m->lnf_b, f->N, D, f->c->eps);
    HOOK(CL_HK_LNF_SCALE, -1, x->scale, 1);
    HOOK(CL_HK_LNF_NORMALIZED, -1, x->ln, D);
    if (!a->logits) return CL_OK;
    int has_bias = 0;
    for (size_t t = 0; t < V && !has_bias; t++) has_bias = m->b_U[t] != 0.0f;
    if (a->logits_last) { /* gather each sequence's last row, then one GEMM (B, d_model) x (d_model, d_vocab) */
        for (int b = 0; b < a->B; b++)
            memcpy(x->mlp_out + (size_t)b * D, x->ln + ((size_t)x->start[b] + a->lengths[b] - 1) * D, D * sizeof(float));
        unembed_rows(f, a->logits, x->mlp_out, a->B, has_bias);
        return CL_OK;
    }
    for (int b = 0; b < a->B; b++) {
        float *out = a->logits + (size_t)b * a->T_pad * V;
        unembed_rows(f, out, x->ln + (size_t)x->start[b] * D, a->lengths[b], has_bias);
        memset(out + (size_t)a->lengths[b] * V, 0, (size_t)(a->T_pad - a->lengths[b]) * V * sizeof(float));
    }
    return CL_OK;
}

/* ---- the forward pass ------------------------------------------------------------------------ */

static cl_status run(fwd *f, cl_error *err) {
    const cl_fwd_args *a = f->a;
    TRY(embed(f, err));
    for (int l = 0; l < a->stop_at_layer; l++) {
        if (finished(f)) return CL_OK;
        if (cl_cancel_check(&a->cancel)) return cl_fail(err, CL_ECANCELLED, "cancelled");
        HOOK(CL_HK_RESID_PRE, l, f->x.resid, f->c->d_model);
        if (finished(f)) return CL_OK;
        TRY(attention_block(f, l, err));
        if (finished(f)) return CL_OK;
        TRY(mlp_block(f, l, err));
    }
    if (a->stop_at_layer < f->c->n_layers || finished(f)) return CL_OK;
    if (cl_cancel_check(&a->cancel)) return cl_fail(err, CL_ECANCELLED, "cancelled");
    TRY(unembed(f, err));
    if (f->kv)
        for (int b = 0; b < a->B; b++) f->kv->len[b] += a->lengths[b];
    return CL_OK;
}

cl_status cl_forward(const cl_model *m, const cl_fwd_args *a, cl_error *err) {
    fwd f = {.m = m, .c = &m->cfg, .a = a, .kv = a->kv};
    void *block = NULL;
    cl_status st = check_args(&f, err);
    if (!st) st = plan_hooks(&f, err);
    if (!st) st = acts_alloc(&f, &block, err);
    if (!st) st = run(&f, err);
    free(block);
    return st;
}
