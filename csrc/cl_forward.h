/* cl_forward.h: the transformer forward pass with TransformerLens hook points: capture,
 * replacement (activation patching), head ablation, setting features, and callbacks. */
#ifndef CL_FORWARD_H
#define CL_FORWARD_H

#include "cl_hooks.h"

/* A C observer reads a per-token activation without copying it: packed rows (N, features) at
 * row stride `stride`; sequence b occupies rows start[b] .. start[b] + lengths[b] - 1. */
typedef cl_status (*cl_observe_fn)(void *ctx, int layer, const float *data, size_t stride, size_t N, const int32_t *start,
                                   const int32_t *lengths, int B, cl_error *err);

/* What happens at one hook point, in this order: patch, ablate/set, callback, observe, capture. */
typedef struct {
    cl_observe_fn observe;       /* per-token kinds only */
    void *observe_ctx;
    float *capture;              /* (B, P, F) or attention (B, n_heads, P, T_pad); NULL: none */
    const float *patch;          /* replacement: (B, T_pad, F) or attention (B, n_heads, T_pad, T_pad) */
    int callback;                /* call cl_fwd_args.hook_fn here */
    const uint8_t *ablate_heads; /* hook_z / hook_result / q,k,v: (n_heads) non-zero = replace that head */
    const float *ablate_values;  /* (n_heads, per-head features) replacement values, NULL = zeros */
    int n_set;                   /* set feature set_idx[i] to set_val[i] at every position */
    const int32_t *set_idx;
    const float *set_val;
} cl_hook_slot;

/* The activation handed to a callback. Per-token kinds: packed rows of the real tokens of
 * every sequence back to back, `rows` x `features`, contiguous. Attention kinds:
 * (B, n_heads, T_pad, T_pad). Callbacks may modify data in place. */
typedef struct {
    cl_hook_kind kind;
    int layer;
    float *data;
    int attention;
    size_t rows, features;
} cl_hook_view;

typedef cl_status (*cl_hook_fn)(void *ctx, const cl_hook_view *v, cl_error *err);

/* Keys (after rotary) and values of the positions a sequence has already been through, per
 * layer, so a forward pass over its next tokens computes only them (generation): each new token
 * costs one position. Sequence b holds len[b] positions. */
typedef struct {
    int B, capacity, n_layers, d_model;
    int32_t *len; /* (B) */
    float *k, *v; /* (n_layers, B, capacity, d_model): head h at columns h * d_head */
} cl_kv_cache;

/* A cache for B sequences of up to `capacity` positions (at most the model's n_ctx), empty. */
cl_status cl_kv_cache_new(const cl_config *c, int B, int capacity, cl_kv_cache **out, cl_error *err);
void cl_kv_cache_free(cl_kv_cache *kv); /* accepts NULL */

typedef struct {
    const int32_t *tokens;  /* (N) the real tokens of each sequence, back to back */
    const int32_t *lengths; /* (B) */
    int B, T_pad;           /* T_pad >= max(lengths): the pos axis of outputs */
    int stop_at_layer;      /* run blocks [0, stop_at_layer); n_layers runs everything */
    float *logits;          /* (B, T_pad, d_vocab), or (B, d_vocab) with logits_last; or NULL. Padded rows are zero */
    int logits_last;        /* only each sequence's last position */
    cl_hook_slot *slots;    /* (CL_HK_COUNT x (n_layers + 1)), see cl_hook_slot_index; or NULL */
    const int32_t *pos;     /* (B, P): positions captured, or NULL for all T_pad */
    int P;
    cl_hook_fn hook_fn;
    void *hook_ctx;
    cl_cancel cancel;
    cl_kv_cache *kv;        /* or NULL. Given: sequence b's tokens come after its kv->len[b] cached positions
                             * (positions, rotary and attention continue from there), and their keys and
                             * values are appended on success. No hooks, no pos, the whole model. */
} cl_fwd_args;

cl_status cl_forward(const cl_model *m, const cl_fwd_args *a, cl_error *err);

#endif
