/* cl_model.h: a loaded model: its config and float32 weights in TransformerLens layout. */
#ifndef CL_MODEL_H
#define CL_MODEL_H

#include "cl_common.h"
#include "cl_safetensors.h"

typedef enum { CL_ARCH_GPT2 = 0, CL_ARCH_NEOX = 1 } cl_arch;
typedef enum { CL_ACT_GELU_NEW = 0, CL_ACT_GELU = 1, CL_ACT_RELU = 2 } cl_act;

typedef struct {
    cl_arch arch;
    int n_layers, d_model, n_heads, d_head, d_mlp, d_vocab, n_ctx;
    cl_act act;
    int rotary_dim;        /* 0: learned absolute positions (GPT-2) */
    float rotary_base;
    int parallel;          /* NeoX use_parallel_residual */
    float eps;
    int tied;              /* unembedding tied to W_E */
    int attn_bias;         /* q/k/v/o biases present (GPT-2 always; NeoX attention_bias) */
    float attn_scale;      /* 1/sqrt(d_head), or 1 when GPT-2 scale_attn_weights is false */
    int scale_by_layer;    /* GPT-2 scale_attn_by_inverse_layer_idx */
    int bos_token_id, eos_token_id, pad_token_id; /* -1 when config.json has none */
    char act_name[32];
} cl_config;

/* Parse and validate config.json text; path is for messages. */
cl_status cl_config_parse(cl_config *cfg, const char *json, const char *path, cl_error *err);

typedef struct {
    int fold_ln, center_writing_weights, center_unembed, fold_value_biases;
    /* 0 (default): every weight is copied into the arena and the files are closed after loading,
     * so nothing done to them later can reach the model. 1: F32 embeddings whose layout matches
     * stay in the files' read-only mapping (less anonymous memory); cl_model_check_files then
     * refuses a model whose files changed since loading. */
    int mmap_weights;
} cl_load_opts;

/* Largest sizes a config.json may give (each far above any published GPT-2 / GPT-NeoX model);
 * a larger value is a CL_EFORMAT error naming the field, before anything is allocated. */
#define CL_MAX_LAYERS 1024
#define CL_MAX_D_MODEL 65536
#define CL_MAX_HEADS 1024
#define CL_MAX_D_MLP (4 * 65536)
#define CL_MAX_VOCAB (1 << 22)
#define CL_MAX_CTX (1 << 20)

typedef struct {
    cl_config cfg;
    cl_load_opts opts;
    cl_st_set *st;     /* kept open while a weight points into its mapping; else NULL */
    float *arena;      /* owned float32 storage for every converted or processed weight */
    size_t arena_floats;
    /* TransformerLens layout; L = n_layers, H = n_heads. ln_* are NULL after fold_ln. */
    const float *W_E;  /* (d_vocab, d_model), maybe in place in the mapping */
    const float *W_pos;/* (n_ctx, d_model) or NULL for rotary models */
    float *W_QKV;      /* (L, d_model, 3, H, d_head): W_Q = [:, :, 0] transposed to (L, H, d_model, d_head) */
    float *b_QKV;      /* (L, 3, H, d_head) */
    float *W_O;        /* (L, H, d_head, d_model) */
    float *b_O;        /* (L, d_model) */
    float *ln1_w, *ln1_b, *ln2_w, *ln2_b; /* (L, d_model) */
    float *W_in;       /* (L, d_model, d_mlp) */
    float *b_in;       /* (L, d_mlp) */
    float *W_out;      /* (L, d_mlp, d_model) */
    float *b_out;      /* (L, d_model) */
    float *lnf_w, *lnf_b; /* (d_model) */
    const float *W_U_T;/* (d_vocab, d_model): W_U transposed, maybe in place (tied: == W_E) */
    float *b_U;        /* (d_vocab) */
    float *rope_cos, *rope_sin; /* (n_ctx, rotary_dim / 2) */
    int W_E_in_place, W_pos_in_place, W_U_in_place;
} cl_model;

/* Load config.json + safetensors from a folder. */
cl_status cl_model_load(const char *dir, const cl_load_opts *opts, cl_model **out, cl_error *err);
void cl_model_free(cl_model *m); /* accepts NULL */

/* With mmap_weights: CL_EIO naming the file when a mapped checkpoint file was truncated,
 * rewritten or otherwise modified since loading (size, modification or change time of the
 * mapped inode); reading it could crash the process (SIGBUS) or silently change the weights.
 * Without mapped weights: always CL_OK. Run before every forward pass. */
cl_status cl_model_check_files(const cl_model *m, cl_error *err);

#endif
