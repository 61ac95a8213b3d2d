/* cl_forward.c: embed -> blocks (sequential | parallel) -> ln_final -> unembed, with hooks.
 * Activations are packed: only real tokens are computed (sequences back to back, no padding),
 * so every row of a padded batch gets exactly the numbers it gets alone, and padding costs
 * nothing. Attention is per sequence and head (and query block, for long sequences), causal
 * half only. One OpenMP team does everything: GEMMs split across it (cl_blas.c), attention
 * tasks spread over it with single-threaded GEMMs inside. Stops after the deepest hook point
 * anyone asked for when logits are not wanted. */
#include "cl_forward.h"

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "cl_blas.h"
#include "cl_kernels.h"

typedef struct {
    const cl_model *m;
    const cl_fwd_args *a;
    const int32_t *start; /* (B) first packed row of each sequence */
    size_t N;
    int remaining;        /* active hook points not yet reached */
    float *tmp;           /* contiguous copy for callbacks on strided views (only with callbacks) */
    float *attn_buf;      /* (B, H, T_pad, T_pad) when scores/pattern are hooked */
} fwd;

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
                memcpy(data + (size_t)(f->start[b] + t) * stride, s->patch + ((size_t)b * a->T_pad + t) * F, F * sizeof(float));
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
            buf = f->tmp;
            for (size_t r = 0; r < N; r++) memcpy(buf + r * F, data + r * stride, F * sizeof(float));
        }
        cl_hook_view v = {kind, layer, buf, 0, N, F};
        cl_status st = a->hook_fn(a->hook_ctx, &v, err);
        if (st) return st;
        if (stride != F)
            for (size_t r = 0; r < N; r++) memcpy(data + r * stride, buf + r * F, F * sizeof(float));
    }
    if (s->observe) {
        cl_status st = s->observe(s->observe_ctx, layer, data, stride, N, f->start, a->lengths, a->B, err);
        if (st) return st;
    }
    if (s->capture) {
        int P = a->pos ? a->P : a->T_pad;
        for (int b = 0; b < a->B; b++)
            for (int p = 0; p < P; p++) {
                float *o = s->capture + ((size_t)b * P + p) * F;
                int t = a->pos ? a->pos[(size_t)b * P + p] : p;
                if (t < a->lengths[b]) memcpy(o, data + (size_t)(f->start[b] + t) * stride, F * sizeof(float));
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
    if (s->patch) memcpy(f->attn_buf, s->patch, total * sizeof(float));
    if (s->callback) {
        cl_hook_view v = {kind, layer, f->attn_buf, 1, 0, H};
        cl_status st = a->hook_fn(a->hook_ctx, &v, err);
        if (st) return st;
    }
    if (s->capture) {
        if (!a->pos) memcpy(s->capture, f->attn_buf, total * sizeof(float));
        else
            for (int b = 0; b < a->B; b++)
                for (size_t h = 0; h < H; h++)
                    for (int p = 0; p < a->P; p++)
                        memcpy(s->capture + (((size_t)b * H + h) * a->P + p) * T,
                               f->attn_buf + (((size_t)b * H + h) * T + a->pos[(size_t)b * a->P + p]) * T, T * sizeof(float));
    }
    return CL_OK;
}

/* Causal attention for query rows i0..i0+rows of one long sequence and head, with BLAS: the
 * block's scores need keys 0..i0+rows only, so the masked half is never computed except inside
 * the diagonal block. Runs on the calling thread (one task of a parallel loop). S: at least
 * rows * (i0 + rows) floats. */
enum { QB = 128 };
static void attention_block_blas(float *z, size_t zstride, const float *q, const float *k, const float *v, size_t stride,
                                 int i0, int rows, int d_head, float scale, float *S) {
    int end = i0 + rows;
    cl_sgemm(0, 1, rows, end, d_head, q + (size_t)i0 * stride, (int)stride, k, (int)stride, 0.0f, S, end);
    cl_softmax_causal(S, end, rows, i0, end, scale);
    cl_sgemm(0, 0, rows, d_head, end, S, end, v, (int)stride, 0.0f, z + (size_t)i0 * zstride, (int)zstride);
}

/* Attention work of one layer, as independent tasks over the threads: a whole (sequence, head)
 * for short sequences (the fused kernel), a block of QB query rows of one for long ones (BLAS). */
typedef struct {
    int32_t b, h, i0; /* i0 < 0: the whole sequence with the fused kernel */
} attn_task;

static attn_task *attention_tasks(const cl_fwd_args *a, int H, int *n_tasks) {
    size_t n = 0;
    for (int b = 0; b < a->B; b++) n += (size_t)H * (a->lengths[b] < 2 * QB ? 1 : (a->lengths[b] + QB - 1) / QB);
    attn_task *t = malloc(n * sizeof *t);
    if (!t) return NULL;
    size_t i = 0;
    for (int b = 0; b < a->B; b++) /* each head's blocks from the last (the costliest) down, for dynamic scheduling */
        for (int h = 0; h < H; h++) {
            if (a->lengths[b] < 2 * QB) { t[i++] = (attn_task){b, h, -1}; continue; }
            for (int i0 = (a->lengths[b] - 1) / QB * QB; i0 >= 0; i0 -= QB) t[i++] = (attn_task){b, h, i0};
        }
    *n_tasks = (int)n;
    return t;
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

#define TRY(x) do { st = (x); if (st) goto done; } while (0)
#define DONE_IF_FINISHED() do { if (f.remaining == 0 && !a->logits && !want_final && !a->kv) goto done; } while (0)

cl_status cl_forward(const cl_model *m, const cl_fwd_args *a, cl_error *err) {
    const cl_config *c = &m->cfg;
    const int L = c->n_layers, H = c->n_heads, dh = c->d_head;
    const size_t D = c->d_model, M = c->d_mlp, V = c->d_vocab;
    cl_status st = CL_OK;
    fwd f = {m, a, NULL, 0, 0, NULL, NULL};
    int32_t *start = NULL;
    int n_attn_tasks = 0;
    attn_task *attn_tasks = NULL;
    float *resid = NULL, *ln = NULL, *scale = NULL, *qkv = NULL, *z = NULL, *attn_out = NULL, *mlp = NULL,
          *mlp_out = NULL, *result = NULL, *scratch = NULL;

    /* ---- validate ---- */
    if (a->B < 1) return cl_fail(err, CL_EINVAL, "empty batch: at least one sequence is needed");
    if (a->stop_at_layer < 0 || a->stop_at_layer > L)
        return cl_fail(err, CL_EINVAL, "stop_at_layer %d is outside [0, %d]", a->stop_at_layer, L);
    if (a->logits && a->stop_at_layer != L) return cl_fail(err, CL_EINVAL, "logits need the full model (stop_at_layer = n_layers)");
    cl_kv_cache *kv = a->kv;
    if (kv) {
        if (kv->B != a->B || kv->n_layers != L || kv->d_model != (int)D)
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
    start = malloc((size_t)a->B * sizeof *start);
    if (!start) return cl_fail(err, CL_ENOMEM, "out of memory");
    size_t N = 0;
    int maxT = 0;
    for (int b = 0; b < a->B; b++) {
        int len = a->lengths[b];
        if (len < 1) { st = cl_fail(err, CL_EINVAL, "sequence %d is empty (length %d); every sequence needs at least one token", b, len); goto done; }
        if (len > c->n_ctx) { st = cl_fail(err, CL_EINVAL, "sequence %d has %d tokens, more than the model's context n_ctx = %d", b, len, c->n_ctx); goto done; }
        if (len > a->T_pad) { st = cl_fail(err, CL_EINVAL, "sequence %d has %d tokens, more than the padded length %d", b, len, a->T_pad); goto done; }
        start[b] = (int32_t)N;
        N += (size_t)len;
        if (len > maxT) maxT = len;
    }
    for (size_t i = 0; i < N; i++)
        if (a->tokens[i] < 0 || a->tokens[i] >= c->d_vocab) {
            int b = 0;
            while (b + 1 < a->B && (size_t)start[b + 1] <= i) b++;
            st = cl_fail(err, CL_EINVAL, "token id %d at sequence %d, position %d is outside the vocabulary [0, %d)",
                         a->tokens[i], b, (int)(i - (size_t)start[b]), c->d_vocab);
            goto done;
        }
    if (a->pos)
        for (int b = 0; b < a->B; b++)
            for (int p = 0; p < a->P; p++) {
                int t = a->pos[(size_t)b * a->P + p];
                if (t < 0 || t >= a->lengths[b]) {
                    st = cl_fail(err, CL_EINVAL, "pos[%d][%d] = %d is outside sequence %d's %d tokens", b, p, t, b, a->lengths[b]);
                    goto done;
                }
            }
    f.start = start;
    f.N = N;
    int want_attn_buf = 0, want_result = 0, want_final = 0, want_tmp = 0;
    if (a->slots) {
        for (int k = 0; k < CL_HK_COUNT; k++)
            for (int l = -1; l < L; l++) {
                if (cl_hook_is_block((cl_hook_kind)k) != (l >= 0)) continue;
                if (!slot_of(&f, (cl_hook_kind)k, l)) continue;
                if (!cl_hook_available(c, (cl_hook_kind)k)) {
                    char nm[96];
                    cl_hook_name(c, (cl_hook_kind)k, l, nm, sizeof nm);
                    st = cl_fail(err, CL_EINVAL, "hook '%s' does not exist in this model", nm);
                    goto done;
                }
                if ((l >= a->stop_at_layer) || (k >= CL_HK_LNF_SCALE && a->stop_at_layer != L)) {
                    char nm[96];
                    cl_hook_name(c, (cl_hook_kind)k, l, nm, sizeof nm);
                    st = cl_fail(err, CL_EINVAL, "hook '%s' is not reached with stop_at_layer = %d", nm, a->stop_at_layer);
                    goto done;
                }
                f.remaining++;
                if (k == CL_HK_ATTN_SCORES || k == CL_HK_PATTERN) want_attn_buf = 1;
                if (k == CL_HK_RESULT) want_result = 1;
                if (k >= CL_HK_LNF_SCALE) want_final = 1;
                if (slot_of(&f, (cl_hook_kind)k, l)->callback) want_tmp = 1;
                if (slot_of(&f, (cl_hook_kind)k, l)->callback && !a->hook_fn) {
                    st = cl_fail(err, CL_EINVAL, "a callback was requested without a hook function");
                    goto done;
                }
            }
    }
    int last_layer = a->stop_at_layer; /* blocks to run */

    /* ---- buffers ---- */
    size_t wide = 3 * D > M ? 3 * D : M;
    const int nthreads = cl_num_threads();
    size_t scratch_per = cl_attention_head_scratch(maxT, dh); /* the fused kernel */
    if (maxT >= 2 * QB && (size_t)QB * maxT > scratch_per) scratch_per = (size_t)QB * maxT; /* a BLAS score block */
    if (kv) {
        int maxK = 0; /* past + new keys of the longest sequence */
        for (int b = 0; b < a->B; b++) if (kv->len[b] + a->lengths[b] > maxK) maxK = kv->len[b] + a->lengths[b];
        if ((size_t)QB * maxK > scratch_per) scratch_per = (size_t)QB * maxK;
    }

    resid = malloc(N * D * sizeof(float));
    ln = malloc(N * D * sizeof(float));
    scale = malloc(N * sizeof(float));
    qkv = malloc(N * 3 * D * sizeof(float));
    z = malloc(N * D * sizeof(float));
    attn_out = malloc(N * D * sizeof(float));
    mlp = malloc(N * M * sizeof(float));
    mlp_out = malloc(N * D * sizeof(float));
    if (want_tmp) f.tmp = malloc(N * (wide > (size_t)H * D ? wide : (size_t)H * D) * sizeof(float)); /* callbacks on strided views */
    scratch = malloc((size_t)nthreads * scratch_per * sizeof(float));
    if (want_result) result = malloc(N * (size_t)H * D * sizeof(float));
    if (want_attn_buf) f.attn_buf = malloc((size_t)a->B * H * a->T_pad * a->T_pad * sizeof(float));
    attn_tasks = attention_tasks(a, H, &n_attn_tasks);
    if (!resid || !ln || !scale || !qkv || !z || !attn_out || !mlp || !mlp_out || (want_tmp && !f.tmp) || !scratch || !attn_tasks ||
        (want_result && !result) || (want_attn_buf && !f.attn_buf)) {
        st = cl_fail(err, CL_ENOMEM, "out of memory for activations of %zu tokens", N);
        goto done;
    }

    /* ---- embeddings: hook_embed, hook_pos_embed, resid_pre of block 0 ---- */
    for (size_t i = 0; i < N; i++) memcpy(ln + i * D, m->W_E + (size_t)a->tokens[i] * D, D * sizeof(float));
    TRY(hook_rows(&f, CL_HK_EMBED, -1, ln, D, err));
    memcpy(resid, ln, N * D * sizeof(float));
    if (m->W_pos) {
        for (int b = 0; b < a->B; b++)
            memcpy(attn_out + (size_t)start[b] * D, m->W_pos + (kv ? (size_t)kv->len[b] * D : 0),
                   (size_t)a->lengths[b] * D * sizeof(float));
        TRY(hook_rows(&f, CL_HK_POS_EMBED, -1, attn_out, D, err));
        cl_add(resid, attn_out, N * D);
    }

    for (int l = 0; l < last_layer; l++) {
        DONE_IF_FINISHED();
        if (cl_cancel_check(&a->cancel)) { st = cl_fail(err, CL_ECANCELLED, "cancelled"); goto done; }
        TRY(hook_rows(&f, CL_HK_RESID_PRE, l, resid, D, err));
        DONE_IF_FINISHED();
        /* attention: ln1 -> qkv -> (rotary) -> softmax(q k^T / sqrt(d_head)) v -> z -> W_O */
        cl_layernorm(ln, scale, resid, m->ln1_w ? m->ln1_w + l * D : NULL, m->ln1_b ? m->ln1_b + l * D : NULL, N, D, c->eps);
        TRY(hook_rows(&f, CL_HK_LN1_SCALE, l, scale, 1, err));
        TRY(hook_rows(&f, CL_HK_LN1_NORMALIZED, l, ln, D, err));
        DONE_IF_FINISHED();
        cl_fill_rows(qkv, m->b_QKV + (size_t)l * 3 * D, N, 3 * D);
        cl_sgemm(0, 0, (int)N, (int)(3 * D), (int)D, ln, (int)D, m->W_QKV + (size_t)l * D * 3 * D, (int)(3 * D), 1.0f, qkv, (int)(3 * D));
        TRY(hook_rows(&f, CL_HK_Q, l, qkv, 3 * D, err));
        TRY(hook_rows(&f, CL_HK_K, l, qkv + D, 3 * D, err));
        TRY(hook_rows(&f, CL_HK_V, l, qkv + 2 * D, 3 * D, err));
        if (c->rotary_dim) {
            for (int b = 0; b < a->B; b++) {
                float *row = qkv + (size_t)start[b] * 3 * D;
                size_t off = kv ? (size_t)kv->len[b] * (c->rotary_dim / 2) : 0; /* tables start at the first new position */
                cl_rotary(row, 3 * D, a->lengths[b], H, dh, c->rotary_dim, m->rope_cos + off, m->rope_sin + off);
                cl_rotary(row + D, 3 * D, a->lengths[b], H, dh, c->rotary_dim, m->rope_cos + off, m->rope_sin + off);
            }
            TRY(hook_rows(&f, CL_HK_ROT_Q, l, qkv, 3 * D, err));
            TRY(hook_rows(&f, CL_HK_ROT_K, l, qkv + D, 3 * D, err));
        }
        DONE_IF_FINISHED();
        float sc = c->attn_scale / (c->scale_by_layer ? (float)(l + 1) : 1.0f);
        const int tasks = a->B * H;
        if (kv) {
            /* append the new keys and values, then attend over everything cached */
            const size_t cap = kv->capacity;
            for (int b = 0; b < a->B; b++) {
                float *K = kv->k + (((size_t)l * a->B + b) * cap + kv->len[b]) * D, *Vc = kv->v + (((size_t)l * a->B + b) * cap + kv->len[b]) * D;
                for (int t = 0; t < a->lengths[b]; t++) {
                    const float *row = qkv + ((size_t)start[b] + t) * 3 * D;
                    memcpy(K + (size_t)t * D, row + D, D * sizeof(float));
                    memcpy(Vc + (size_t)t * D, row + 2 * D, D * sizeof(float));
                }
            }
#pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads)
            for (int task = 0; task < tasks; task++) {
                int b = task / H, h = task % H;
                const float *K = kv->k + ((size_t)l * a->B + b) * cap * D + (size_t)h * dh,
                            *Vc = kv->v + ((size_t)l * a->B + b) * cap * D + (size_t)h * dh;
                attention_past(z + (size_t)start[b] * D + (size_t)h * dh, D, qkv + (size_t)start[b] * 3 * D + (size_t)h * dh, 3 * D,
                               K, Vc, D, kv->len[b], a->lengths[b], dh, sc, scratch + (size_t)omp_get_thread_num() * scratch_per);
            }
        } else if (slot_of(&f, CL_HK_ATTN_SCORES, l) || slot_of(&f, CL_HK_PATTERN, l)) {
            const size_t T = a->T_pad;
#pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads)
            for (int task = 0; task < tasks; task++) {
                int b = task / H, h = task % H;
                const float *q = qkv + (size_t)start[b] * 3 * D + (size_t)h * dh;
                cl_attention_scores(f.attn_buf + ((size_t)b * H + h) * T * T, T, q, q + D, 3 * D, a->lengths[b], (int)T, dh, sc,
                                    scratch + (size_t)omp_get_thread_num() * scratch_per);
            }
            TRY(hook_attention(&f, CL_HK_ATTN_SCORES, l, err));
#pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads)
            for (int task = 0; task < tasks; task++) {
                int b = task / H, h = task % H;
                cl_attention_softmax(f.attn_buf + ((size_t)b * H + h) * T * T, T, a->lengths[b], (int)T);
                cl_attention_nan_keys(f.attn_buf + ((size_t)b * H + h) * T * T, T, (int)T, NULL, 0,
                                      qkv + (size_t)start[b] * 3 * D + D + (size_t)h * dh, 3 * D, a->lengths[b], dh);
            }
            TRY(hook_attention(&f, CL_HK_PATTERN, l, err));
#pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads)
            for (int task = 0; task < tasks; task++) {
                int b = task / H, h = task % H;
                const float *v = qkv + (size_t)start[b] * 3 * D + 2 * D + (size_t)h * dh;
                cl_attention_pv(z + (size_t)start[b] * D + (size_t)h * dh, D, f.attn_buf + ((size_t)b * H + h) * T * T, T, v, 3 * D,
                                a->lengths[b], dh);
            }
        } else {
#pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads)
            for (int i = 0; i < n_attn_tasks; i++) {
                const attn_task t = attn_tasks[i];
                const float *q = qkv + (size_t)start[t.b] * 3 * D + (size_t)t.h * dh;
                float *zo = z + (size_t)start[t.b] * D + (size_t)t.h * dh, *sc_buf = scratch + (size_t)omp_get_thread_num() * scratch_per;
                if (t.i0 < 0)
                    cl_attention_head(zo, D, q, q + D, q + 2 * D, 3 * D, a->lengths[t.b], dh, sc, sc_buf);
                else
                    attention_block_blas(zo, D, q, q + D, q + 2 * D, 3 * D, t.i0,
                                         a->lengths[t.b] - t.i0 < QB ? a->lengths[t.b] - t.i0 : QB, dh, sc, sc_buf);
            }
        }
#pragma omp parallel for schedule(static) num_threads(nthreads)
        for (int task = 0; task < tasks; task++) { /* NaN in k, NaN / inf in v reach every query, as in PyTorch */
            float *zh = z + (size_t)start[task / H] * D + (size_t)(task % H) * dh;
            const float *kh = qkv + (size_t)start[task / H] * 3 * D + D + (size_t)(task % H) * dh;
            cl_attention_nan_keys(NULL, 0, 0, zh, D, kh, 3 * D, a->lengths[task / H], dh);
            cl_attention_nonfinite_v(zh, D, kh + D, 3 * D, a->lengths[task / H], dh);
        }
        TRY(hook_rows(&f, CL_HK_Z, l, z, D, err));
        DONE_IF_FINISHED();
        const float *WO = m->W_O + (size_t)l * D * D;
        const cl_hook_slot *rs = slot_of(&f, CL_HK_RESULT, l);
        if (rs) {
            /* result[n, h] = z[n, h] @ W_O[h] (no b_O) */
            for (int h = 0; h < H; h++)
                cl_sgemm(0, 0, (int)N, (int)D, dh, z + (size_t)h * dh, (int)D, WO + (size_t)h * dh * D, (int)D, 0.0f,
                         result + (size_t)h * D, (int)(H * D));
        }
        int result_modified = rs && (rs->patch || rs->callback || rs->ablate_heads || rs->n_set);
        if (rs) TRY(hook_rows(&f, CL_HK_RESULT, l, result, (size_t)H * D, err));
        if (result_modified) {
            /* attn_out = sum_h result + b_O, so edits of hook_result reach the residual stream */
            cl_fill_rows(attn_out, m->b_O + (size_t)l * D, N, D);
            for (size_t r = 0; r < N; r++)
                for (int h = 0; h < H; h++) cl_add(attn_out + r * D, result + (r * H + h) * D, D);
        } else {
            /* capturing hook_result is observational: attn_out is the same GEMM as without it */
            cl_fill_rows(attn_out, m->b_O + (size_t)l * D, N, D);
            cl_sgemm(0, 0, (int)N, (int)D, (int)D, z, (int)D, WO, (int)D, 1.0f, attn_out, (int)D);
        }
        TRY(hook_rows(&f, CL_HK_ATTN_OUT, l, attn_out, D, err));
        DONE_IF_FINISHED();
        /* MLP: sequential reads resid_mid, parallel reads resid_pre */
        if (!c->parallel) {
            cl_add(resid, attn_out, N * D);
            TRY(hook_rows(&f, CL_HK_RESID_MID, l, resid, D, err));
        }
        cl_layernorm(ln, scale, resid, m->ln2_w ? m->ln2_w + l * D : NULL, m->ln2_b ? m->ln2_b + l * D : NULL, N, D, c->eps);
        TRY(hook_rows(&f, CL_HK_LN2_SCALE, l, scale, 1, err));
        TRY(hook_rows(&f, CL_HK_LN2_NORMALIZED, l, ln, D, err));
        DONE_IF_FINISHED();
        cl_fill_rows(mlp, m->b_in + (size_t)l * M, N, M);
        cl_sgemm(0, 0, (int)N, (int)M, (int)D, ln, (int)D, m->W_in + (size_t)l * D * M, (int)M, 1.0f, mlp, (int)M);
        TRY(hook_rows(&f, CL_HK_MLP_PRE, l, mlp, M, err));
        DONE_IF_FINISHED();
        if (c->act == CL_ACT_GELU_NEW) cl_gelu_tanh(mlp, N * M);
        else if (c->act == CL_ACT_GELU) cl_gelu_erf(mlp, N * M);
        else cl_relu(mlp, N * M);
        TRY(hook_rows(&f, CL_HK_MLP_POST, l, mlp, M, err));
        DONE_IF_FINISHED();
        cl_fill_rows(mlp_out, m->b_out + (size_t)l * D, N, D);
        cl_sgemm(0, 0, (int)N, (int)D, (int)M, mlp, (int)M, m->W_out + (size_t)l * M * D, (int)D, 1.0f, mlp_out, (int)D);
        TRY(hook_rows(&f, CL_HK_MLP_OUT, l, mlp_out, D, err));
        if (c->parallel) cl_add(resid, attn_out, N * D);
        cl_add(resid, mlp_out, N * D);
        TRY(hook_rows(&f, CL_HK_RESID_POST, l, resid, D, err));
    }
    if (last_layer < L) goto done;
    DONE_IF_FINISHED();
    if (cl_cancel_check(&a->cancel)) { st = cl_fail(err, CL_ECANCELLED, "cancelled"); goto done; }
    cl_layernorm(ln, scale, resid, m->lnf_w, m->lnf_b, N, D, c->eps);
    TRY(hook_rows(&f, CL_HK_LNF_SCALE, -1, scale, 1, err));
    TRY(hook_rows(&f, CL_HK_LNF_NORMALIZED, -1, ln, D, err));
    if (a->logits) {
        /* logits = ln_final @ W_U + b_U, in chunks of rows: the (rows, d_vocab) output block
         * stays in cache for the bias add, and beta = 0 never reads the output back */
        int has_bias = 0;
        for (size_t t = 0; t < V && !has_bias; t++) has_bias = m->b_U[t] != 0.0f;
        if (a->logits_last) {
            /* gather each sequence's last row, then one GEMM (B, d_model) x (d_model, d_vocab) */
            for (int b = 0; b < a->B; b++)
                memcpy(mlp_out + (size_t)b * D, ln + ((size_t)start[b] + a->lengths[b] - 1) * D, D * sizeof(float));
            for (int r0 = 0; r0 < a->B; r0 += QB) {
                int rows = a->B - r0 < QB ? a->B - r0 : QB;
                float *o = a->logits + (size_t)r0 * V;
                cl_sgemm(0, 1, rows, (int)V, (int)D, mlp_out + (size_t)r0 * D, (int)D, m->W_U_T, (int)D, 0.0f, o, (int)V);
                if (has_bias)
                    for (int r = 0; r < rows; r++) cl_add(o + (size_t)r * V, m->b_U, V);
            }
        }
        for (int b = 0; b < a->B && !a->logits_last; b++) {
            float *out = a->logits + (size_t)b * a->T_pad * V;
            for (int r0 = 0; r0 < a->lengths[b]; r0 += QB) {
                int rows = a->lengths[b] - r0 < QB ? a->lengths[b] - r0 : QB;
                float *o = out + (size_t)r0 * V;
                cl_sgemm(0, 1, rows, (int)V, (int)D, ln + ((size_t)start[b] + r0) * D, (int)D, m->W_U_T, (int)D, 0.0f, o, (int)V);
                if (has_bias)
                    for (int r = 0; r < rows; r++) cl_add(o + (size_t)r * V, m->b_U, V);
            }
            memset(out + (size_t)a->lengths[b] * V, 0, (size_t)(a->T_pad - a->lengths[b]) * V * sizeof(float));
        }
    }
    if (kv)
        for (int b = 0; b < a->B; b++) kv->len[b] += a->lengths[b];
done:
    free(start);
    free(resid); free(ln); free(scale); free(qkv); free(z); free(attn_out); free(mlp); free(mlp_out);
    free(result); free(scratch); free(f.tmp); free(f.attn_buf); free(attn_tasks);
    return st;
}
