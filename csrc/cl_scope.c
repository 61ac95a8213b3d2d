/* cl_scope.c: Neuroscope's all-neurons state (see cl_scope.h): top-k documents, histograms on
 * a nested power-of-two grid, and sampled examples per band, updated inside the forward pass
 * and merged exactly. Each observer call walks the packed rows once per chunk of neurons; the
 * chunks are split among the core's threads, so no two threads touch one neuron. */
#include "cl_scope.h"

#include "cl_topk.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define CHUNK 64 /* neurons per thread task: one 256-byte run of each row */

uint64_t cl_scope_key(int64_t doc, int32_t pos) {
    uint64_t z = (uint64_t)doc * 0x9E3779B97F4A7C15ull + (uint64_t)(uint32_t)pos + 0x632BE59BD9B4E019ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull; /* splitmix64's finaliser */
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* 2^x as a float */
static inline float pow2f(int x) {
    if (x >= -126 && x <= 127) {
        union { uint32_t u; float f; } c = {(uint32_t)(x + 127) << 23};
        return c.f;
    }
    return ldexpf(1.0f, x);
}

/* floor(v / 2^e) on the grid: v * 2^-e is exact, and so is the floor (|v / 2^e| < 2^22 by the
 * grid's rule, see cl_scope.h) */
static inline int64_t grid_cell(float v, int e) {
    const float x = v * pow2f(-e);
    int64_t i = (int64_t)x;
    return (float)i > x ? i - 1 : i;
}

/* floor(a / 2^d) for any sign */
static inline int64_t floor_shift(int64_t a, int d) { return a >= 0 ? a >> d : -((-a - 1) >> d) - 1; }

/* The canonical grid exponent of a range (cl_scope.h). */
static int grid_exp(float mn, float mx, int bins) {
    float am = fmaxf(fabsf(mn), fabsf(mx));
    int e = CL_SCOPE_EXP_MIN;
    if (am > 0) {
        int lb = ilogbf(am) - 20;
        if (lb > e) e = lb;
    }
    while (grid_cell(mx, e) - grid_cell(mn, e) >= bins) e++;
    return e;
}

/* The checks and allocation shared by both constructors; the neurons' layers and columns are the
 * caller's to fill. */
static cl_status scope_alloc(int n_layers, size_t n, int d_mlp, int k, int bins, int samples, cl_scope **out,
                             cl_error *err) {
    *out = NULL;
    if (d_mlp < 1) return cl_fail(err, CL_EINVAL, "d_mlp must be >= 1, got %d", d_mlp);
    if (k < 1) return cl_fail(err, CL_EINVAL, "k must be >= 1, got %d", k);
    if (samples < 0) return cl_fail(err, CL_EINVAL, "samples must be >= 0, got %d", samples);
    int g = 0;
    while (g < 20 && (CL_SCOPE_BANDS << g) < bins) g++;
    if (bins < CL_SCOPE_BANDS || (CL_SCOPE_BANDS << g) != bins)
        return cl_fail(err, CL_EINVAL, "bins must be %d times a power of two (16, 32, 64, 128, ...), got %d",
                       CL_SCOPE_BANDS, bins);
    if (n > INT32_MAX) return cl_fail(err, CL_EINVAL, "too many neurons (%zu)", n);
    cl_scope *s = calloc(1, sizeof *s);
    if (!s) return cl_fail(err, CL_ENOMEM, "out of memory");
    s->n_layers = n_layers; s->d_mlp = d_mlp; s->k = k; s->bins = bins; s->samples = samples;
    s->band_shift = g; s->bands = CL_SCOPE_BANDS + 1; s->n = (int)n;
    size_t nb = n * s->bands, ns = nb * (samples ? samples : 1);
    s->layers = malloc((size_t)n_layers * sizeof *s->layers);
    s->first = malloc(((size_t)n_layers + 1) * sizeof *s->first);
    s->col = malloc(n * sizeof *s->col);
    s->top_act = malloc(n * k * sizeof *s->top_act);
    s->top_doc = malloc(n * k * sizeof *s->top_doc);
    s->top_pos = malloc(n * k * sizeof *s->top_pos);
    s->top_count = calloc(n, sizeof *s->top_count);
    s->hist = calloc(n * bins, sizeof *s->hist);
    s->hist_exp = malloc(n * sizeof *s->hist_exp);
    s->hist_start = calloc(n, sizeof *s->hist_start);
    s->vmin = malloc(n * sizeof *s->vmin);
    s->vmax = malloc(n * sizeof *s->vmax);
    s->total = calloc(n, sizeof *s->total);
    s->nonfinite = calloc(n, sizeof *s->nonfinite);
    s->s_key = calloc(ns, sizeof *s->s_key);
    s->s_doc = calloc(ns, sizeof *s->s_doc);
    s->s_pos = calloc(ns, sizeof *s->s_pos);
    s->s_act = calloc(ns, sizeof *s->s_act);
    s->s_count = calloc(nb, sizeof *s->s_count);
    if (!s->layers || !s->first || !s->col || !s->top_act || !s->top_doc || !s->top_pos || !s->top_count || !s->hist ||
        !s->hist_exp || !s->hist_start || !s->vmin || !s->vmax || !s->total || !s->nonfinite || !s->s_key || !s->s_doc ||
        !s->s_pos || !s->s_act || !s->s_count) {
        cl_scope_free(s);
        return cl_fail(err, CL_ENOMEM, "out of memory for the state of %zu neurons (k = %d, %d bins, %d samples)", n, k,
                       bins, samples);
    }
    cl_topk_clear(s->top_act, s->top_doc, s->top_pos, n * k);
    for (size_t j = 0; j < n; j++) { s->hist_exp[j] = CL_SCOPE_EXP_MIN; s->vmin[j] = INFINITY; s->vmax[j] = -INFINITY; }
    *out = s;
    return CL_OK;
}

cl_status cl_scope_new(int n_layers, const int32_t *layers, int d_mlp, int k, int bins, int samples, cl_scope **out,
                       cl_error *err) {
    *out = NULL;
    if (n_layers < 1) return cl_fail(err, CL_EINVAL, "no layers to scope");
    for (int i = 0; i < n_layers; i++)
        if (layers[i] < 0 || (i && layers[i] <= layers[i - 1]))
            return cl_fail(err, CL_EINVAL, "layers must be distinct, ascending and >= 0 (entry %d is %d)", i, layers[i]);
    cl_status st = scope_alloc(n_layers, (size_t)n_layers * (d_mlp > 0 ? d_mlp : 0), d_mlp, k, bins, samples, out, err);
    if (st) return st;
    cl_scope *s = *out;
    memcpy(s->layers, layers, (size_t)n_layers * sizeof *layers);
    for (int i = 0; i <= n_layers; i++) s->first[i] = i * d_mlp;
    for (size_t j = 0; j < (size_t)s->n; j++) s->col[j] = (int32_t)(j % d_mlp);
    return CL_OK;
}

cl_status cl_scope_new_subset(int n, const int32_t *layer, const int32_t *neuron, int d_mlp, int k, int bins,
                              int samples, cl_scope **out, cl_error *err) {
    *out = NULL;
    if (n < 1) return cl_fail(err, CL_EINVAL, "no neurons to scope");
    int n_layers = 0;
    for (int j = 0; j < n; j++) {
        if (layer[j] < 0) return cl_fail(err, CL_EINVAL, "entry %d: layer %d is negative", j, layer[j]);
        if (neuron[j] < 0 || neuron[j] >= d_mlp)
            return cl_fail(err, CL_EINVAL, "entry %d: neuron %d is outside [0, %d)", j, neuron[j], d_mlp);
        if (j && (layer[j] < layer[j - 1] || (layer[j] == layer[j - 1] && neuron[j] <= neuron[j - 1])))
            return cl_fail(err, CL_EINVAL, "the neurons must be distinct and sorted by (layer, neuron): entry %d "
                           "(layer %d, neuron %d) follows (layer %d, neuron %d)", j, layer[j], neuron[j], layer[j - 1],
                           neuron[j - 1]);
        n_layers += !j || layer[j] != layer[j - 1];
    }
    cl_status st = scope_alloc(n_layers, (size_t)n, d_mlp, k, bins, samples, out, err);
    if (st) return st;
    cl_scope *s = *out;
    for (int j = 0, li = -1; j < n; j++) {
        if (!j || layer[j] != layer[j - 1]) { s->layers[++li] = layer[j]; s->first[li] = j; }
        s->col[j] = neuron[j];
    }
    s->first[n_layers] = n;
    return CL_OK;
}

int cl_scope_layer_of(const cl_scope *s, int j) {
    int li = 0;
    while (li + 1 < s->n_layers && s->first[li + 1] <= j) li++;
    return s->layers[li];
}

void cl_scope_free(cl_scope *s) {
    if (!s) return;
    free(s->layers); free(s->first); free(s->col); free(s->top_act); free(s->top_doc); free(s->top_pos); free(s->top_count);
    free(s->hist); free(s->hist_exp); free(s->hist_start); free(s->vmin); free(s->vmax); free(s->total);
    free(s->nonfinite); free(s->s_key); free(s->s_doc); free(s->s_pos); free(s->s_act); free(s->s_count);
    free(s);
}

/* ------------------------------------------------------------------ top-k */

static inline cl_topk top_of(cl_scope *s, size_t j) {
    const size_t o = j * s->k;
    cl_topk t = {s->top_act + o, s->top_doc + o, s->top_pos + o, s->top_count + j, s->k};
    return t;
}

/* ------------------------------------------------------------------ samples */

/* One band's sample list: ascending by (key, doc, pos), at most S entries. */
typedef struct {
    uint64_t *key; /* (S) */
    int64_t *doc;  /* (S) */
    int32_t *pos;  /* (S) */
    float *act;    /* (S) */
    int32_t *count;
} band_ref;

static inline int key_before(uint64_t k, int64_t d, int32_t p, uint64_t k2, int64_t d2, int32_t p2) {
    if (k != k2) return k < k2;
    if (d != d2) return d < d2;
    return p < p2;
}

static void band_insert(band_ref b, int S, uint64_t key, int64_t doc, int32_t pos, float act) {
    int n = *b.count;
    if (n == S && !key_before(key, doc, pos, b.key[S - 1], b.doc[S - 1], b.pos[S - 1])) return;
    int i = n < S ? n : S - 1;
    while (i > 0 && key_before(key, doc, pos, b.key[i - 1], b.doc[i - 1], b.pos[i - 1])) {
        b.key[i] = b.key[i - 1]; b.doc[i] = b.doc[i - 1]; b.pos[i] = b.pos[i - 1]; b.act[i] = b.act[i - 1];
        i--;
    }
    b.key[i] = key; b.doc[i] = doc; b.pos[i] = pos; b.act[i] = act;
    if (n < S) *b.count = n + 1;
}

static inline band_ref band_of(const cl_scope *s, size_t j, int band) {
    size_t jb = j * s->bands + band, o = jb * s->samples;
    band_ref r = {s->s_key + o, s->s_doc + o, s->s_pos + o, s->s_act + o, s->s_count + jb};
    return r;
}

/* ------------------------------------------------------------------ regridding */

/* A neuron's histogram and samples on some grid, for regridding and merging. */
typedef struct {
    int64_t *hist;  /* (bins) */
    uint64_t *key;  /* (bands, S) */
    int64_t *doc;   /* (bands, S) */
    int32_t *pos;   /* (bands, S) */
    float *act;     /* (bands, S) */
    int32_t *count; /* (bands) */
} neuron_buf;

static int buf_alloc(const cl_scope *s, neuron_buf *b) {
    size_t ns = (size_t)s->bands * (s->samples ? s->samples : 1);
    b->hist = malloc((size_t)s->bins * sizeof *b->hist);
    b->key = malloc(ns * sizeof *b->key);
    b->doc = malloc(ns * sizeof *b->doc);
    b->pos = malloc(ns * sizeof *b->pos);
    b->act = malloc(ns * sizeof *b->act);
    b->count = malloc((size_t)s->bands * sizeof *b->count);
    return b->hist && b->key && b->doc && b->pos && b->act && b->count;
}

static void buf_free(neuron_buf *b) {
    free(b->hist); free(b->key); free(b->doc); free(b->pos); free(b->act); free(b->count);
}

static void buf_clear(const cl_scope *s, neuron_buf *b) {
    memset(b->hist, 0, (size_t)s->bins * sizeof *b->hist);
    memset(b->count, 0, (size_t)s->bands * sizeof *b->count);
}

/* Add neuron j of `src` (on its grid) into b on the grid (e, st), e >= src's exponent. */
static void buf_add(const cl_scope *src, size_t j, neuron_buf *b, int e, int64_t st) {
    const int bins = src->bins, g = src->band_shift, S = src->samples;
    if (!(src->vmin[j] <= src->vmax[j])) return; /* empty */
    const int d = e - src->hist_exp[j];
    const int64_t st0 = src->hist_start[j];
    const int64_t *h = src->hist + j * bins;
    for (int i = 0; i < bins; i++)
        if (h[i]) b->hist[floor_shift(st0 + i, d) - st] += h[i];
    const int64_t band0 = floor_shift(st0, g), nband0 = floor_shift(st, g);
    for (int bd = 0; bd < src->bands; bd++) {
        band_ref from = band_of(src, j, bd);
        if (!*from.count) continue;
        int nb = (int)(floor_shift(band0 + bd, d) - nband0);
        band_ref to = {b->key + (size_t)nb * S, b->doc + (size_t)nb * S, b->pos + (size_t)nb * S, b->act + (size_t)nb * S,
                       b->count + nb};
        for (int i = 0; i < *from.count; i++) band_insert(to, S, from.key[i], from.doc[i], from.pos[i], from.act[i]);
    }
}

static void buf_store(cl_scope *s, size_t j, const neuron_buf *b, int e, int64_t st) {
    const size_t S = s->samples, nbs = (size_t)s->bands * S;
    memcpy(s->hist + j * s->bins, b->hist, (size_t)s->bins * sizeof *b->hist);
    memcpy(s->s_key + j * nbs, b->key, nbs * sizeof *b->key);
    memcpy(s->s_doc + j * nbs, b->doc, nbs * sizeof *b->doc);
    memcpy(s->s_pos + j * nbs, b->pos, nbs * sizeof *b->pos);
    memcpy(s->s_act + j * nbs, b->act, nbs * sizeof *b->act);
    memcpy(s->s_count + j * s->bands, b->count, (size_t)s->bands * sizeof *b->count);
    /* unused sample slots are zeroed so equal states are equal byte for byte */
    for (int bd = 0; bd < s->bands; bd++) {
        band_ref r = band_of(s, j, bd);
        for (size_t i = (size_t)*r.count; i < S; i++) { r.key[i] = 0; r.doc[i] = 0; r.pos[i] = 0; r.act[i] = 0; }
    }
    s->hist_exp[j] = e;
    s->hist_start[j] = st;
}

/* Move neuron j to the grid (e, st); b is scratch. */
static void regrid(cl_scope *s, size_t j, int e, int64_t st, neuron_buf *b) {
    buf_clear(s, b);
    buf_add(s, j, b, e, st);
    buf_store(s, j, b, e, st);
}

/* ------------------------------------------------------------------ observing */

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(CL_NO_CLONES)
#define HOT __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define HOT
#endif

/* The vectorisable part of one row of a chunk: each neuron's bin on its current grid, the
 * document's running maximum (the first position wins ties; non-finite values never count), and a
 * flag per neuron for the scalar pass: 1 = the value is outside [lo, hi] (its bin is meaningless:
 * widen first), 2 = the token's key may enter the sample of the value's band (key <= the band's
 * threshold). Unflagged neurons only count the value in their bin. */
HOT static void row_bins(const float *restrict row /* (w) */, int w, const float *restrict scl /* (w) */,
                         const int32_t *restrict st, const float *restrict lo /* (w) */, const float *restrict hi,
                         const int32_t *restrict off, int g, int bands, const uint64_t *restrict thr /* (w, bands) */,
                         uint64_t key, int32_t *restrict bin, uint8_t *restrict flag, float *restrict dmax /* (w) */,
                         int32_t *restrict darg, int32_t t) {
    /* bitwise & and | rather than && and ||: no branches, so the loop vectorises */
    for (int i = 0; i < w; i++) {
        const float v = row[i];
        const int up = (v > dmax[i]) & (v <= FLT_MAX);
        dmax[i] = up ? v : dmax[i];
        darg[i] = up ? t : darg[i];
        float x = v * scl[i];
        x = (x > 4194304.0f) | (x < -4194304.0f) | (x != x) ? 0.0f : x; /* only out-of-range values: keeps the conversion defined */
        int32_t c = (int32_t)x;
        c -= (float)c > x;
        const int32_t bn = c - st[i];
        const int out = !((v >= lo[i]) & (v <= hi[i]));
        const int band = out ? 0 : (bn + off[i]) >> g;
        bin[i] = bn;
        flag[i] = (uint8_t)(out | (key <= thr[i * bands + band]) << 1);
    }
}

/* Per-thread scratch for one chunk of neurons. */
typedef struct {
    float lo[CHUNK], hi[CHUNK], scl[CHUNK], dmax[CHUNK], g[CHUNK]; /* (CHUNK) */
    int32_t st[CHUNK], off[CHUNK], darg[CHUNK], bin[CHUNK];
    uint8_t flag[CHUNK];
    int64_t nonfinite[CHUNK];
    uint64_t *thr; /* (CHUNK, bands): a key must be <= this to enter the band's sample */
    neuron_buf buf;
} chunk_scratch;

static void chunk_load(const cl_scope *s, chunk_scratch *c, size_t j, int i) {
    const int e = s->hist_exp[j], S = s->samples;
    c->lo[i] = s->vmin[j];
    c->hi[i] = s->vmax[j];
    c->scl[i] = pow2f(-e);
    c->st[i] = (int32_t)s->hist_start[j];
    c->off[i] = (int32_t)(s->hist_start[j] & ((1 << s->band_shift) - 1));
    for (int bd = 0; bd < s->bands; bd++) {
        band_ref r = band_of(s, j, bd);
        c->thr[(size_t)i * s->bands + bd] = !S ? 0 : *r.count < S ? UINT64_MAX : r.key[S - 1];
    }
}

/* A value outside the neuron's [min, max]: widen the range (and the grid if needed). Returns 0
 * for a non-finite value, which is only counted. */
static int widen(cl_scope *s, chunk_scratch *c, size_t j, int i, float v) {
    if (!(v >= -FLT_MAX && v <= FLT_MAX)) {
        c->nonfinite[i]++;
        return 0;
    }
    const int empty = !(s->vmin[j] <= s->vmax[j]);
    const float mn = empty ? v : fminf(s->vmin[j], v), mx = empty ? v : fmaxf(s->vmax[j], v);
    const int e = grid_exp(mn, mx, s->bins);
    const int64_t st = grid_cell(mn, e);
    if (empty) { s->hist_exp[j] = e; s->hist_start[j] = st; }
    else if (e != s->hist_exp[j] || st != s->hist_start[j]) regrid(s, j, e, st, &c->buf);
    s->vmin[j] = mn;
    s->vmax[j] = mx;
    chunk_load(s, c, j, i);
    return 1;
}

cl_status cl_scope_observe(void *ctx, int layer, const float *data, size_t stride, size_t N, const int32_t *start,
                           const int32_t *lengths, int B, cl_error *err) {
    cl_scope *s = ctx;
    int li = -1;
    for (int i = 0; i < s->n_layers; i++)
        if (s->layers[i] == layer) li = i;
    if (li < 0) return CL_OK;
    const int M = s->first[li + 1] - s->first[li], bins = s->bins, g = s->band_shift, S = s->samples,
              skip = s->skip_first, bands = s->bands;
    /* chunks of up to CHUNK neurons, at least two per thread when the layer has few neurons (a
     * chosen subset), so every thread gets work */
    const int nt = cl_num_threads();
    int cw = (M + 2 * nt - 1) / (2 * nt);
    cw = cw < 8 ? 8 : cw > CHUNK ? CHUNK : cw;
    const int n_chunks = (M + cw - 1) / cw;
    int64_t counted = 0;
    for (int b = 0; b < B; b++)
        if (lengths[b] > skip) counted += lengths[b] - skip;
    /* every token's sample key, once for all chunks */
    uint64_t *keys = malloc((N ? N : 1) * sizeof *keys);
    if (!keys) return cl_fail(err, CL_ENOMEM, "out of memory for %zu sample keys", N);
    for (int b = 0; b < B; b++)
        for (int t = skip; t < lengths[b]; t++) keys[start[b] + t] = cl_scope_key(s->batch_docs[b], t);
    int failed = 0;
#pragma omp parallel num_threads(nt)
    {
        chunk_scratch *c = calloc(1, sizeof *c);
        int ok = c && buf_alloc(s, &c->buf) && (c->thr = malloc((size_t)CHUNK * bands * sizeof *c->thr));
        if (!ok) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(dynamic, 1)
        for (int ch = 0; ch < n_chunks; ch++) {
            if (!ok) continue;
            const int i0 = ch * cw, w = i0 + cw < M ? cw : M - i0;
            const size_t j0 = (size_t)s->first[li] + i0;
            /* a run of consecutive columns is read in place, others are gathered */
            const int32_t c0 = s->col[j0];
            const int gather = s->col[j0 + w - 1] - c0 != w - 1;
            for (int i = 0; i < w; i++) { chunk_load(s, c, j0 + i, i); c->nonfinite[i] = 0; }
            for (int b = 0; b < B; b++) {
                if (lengths[b] <= skip) continue;
                const int64_t doc = s->batch_docs[b];
                for (int i = 0; i < w; i++) { c->dmax[i] = -INFINITY; c->darg[i] = -1; }
                for (int t = skip; t < lengths[b]; t++) {
                    const float *row = data + ((size_t)start[b] + t) * stride;
                    if (gather) {
                        for (int i = 0; i < w; i++) c->g[i] = row[s->col[j0 + i]];
                        row = c->g;
                    } else
                        row += c0;
                    const uint64_t key = keys[start[b] + t];
                    row_bins(row, w, c->scl, c->st, c->lo, c->hi, c->off, g, bands, c->thr, key, c->bin, c->flag, c->dmax,
                             c->darg, t);
                    int64_t *h = s->hist + j0 * bins;
                    for (int i = 0; i < w; i++, h += bins) {
                        if (__builtin_expect(!c->flag[i], 1)) {
                            h[c->bin[i]]++;
                            continue;
                        }
                        const float v = row[i];
                        const size_t j = j0 + i;
                        int32_t bin = c->bin[i];
                        if (c->flag[i] & 1) {
                            if (!widen(s, c, j, i, v)) continue;
                            bin = (int32_t)(grid_cell(v, s->hist_exp[j]) - s->hist_start[j]);
                        }
                        h[bin]++;
                        if (S) {
                            const int band = (bin + c->off[i]) >> g;
                            uint64_t *thr = c->thr + (size_t)i * bands + band;
                            if (key <= *thr) {
                                band_ref r = band_of(s, j, band);
                                band_insert(r, S, key, doc, t, v);
                                *thr = *r.count < S ? UINT64_MAX : r.key[S - 1];
                            }
                        }
                    }
                }
                for (int i = 0; i < w; i++)
                    if (c->darg[i] >= 0) cl_topk_insert(top_of(s, j0 + i), c->dmax[i], doc, c->darg[i]);
            }
            for (int i = 0; i < w; i++) {
                s->nonfinite[j0 + i] += c->nonfinite[i];
                s->total[j0 + i] += counted - c->nonfinite[i];
            }
        }
        if (c) { buf_free(&c->buf); free(c->thr); }
        free(c);
    }
    free(keys);
    if (failed) return cl_fail(err, CL_ENOMEM, "out of memory for the scope's scratch");
    return CL_OK;
}

/* ------------------------------------------------------------------ canonical form, merging */

cl_status cl_scope_normalize(cl_scope *s, cl_error *err) {
    neuron_buf b;
    if (!buf_alloc(s, &b)) { buf_free(&b); return cl_fail(err, CL_ENOMEM, "out of memory"); }
    for (size_t j = 0; j < (size_t)s->n; j++) {
        if (!(s->vmin[j] <= s->vmax[j])) { /* empty: the canonical empty grid */
            s->hist_exp[j] = CL_SCOPE_EXP_MIN;
            s->hist_start[j] = 0;
            continue;
        }
        int e = grid_exp(s->vmin[j], s->vmax[j], s->bins);
        int64_t st = grid_cell(s->vmin[j], e);
        if (e != s->hist_exp[j] || st != s->hist_start[j]) regrid(s, j, e, st, &b);
    }
    buf_free(&b);
    return CL_OK;
}

cl_status cl_scope_merge(cl_scope *dst, cl_scope *src, cl_error *err) {
    if (dst->n_layers != src->n_layers || memcmp(dst->layers, src->layers, (size_t)dst->n_layers * sizeof(int32_t)) ||
        dst->n != src->n || memcmp(dst->first, src->first, ((size_t)dst->n_layers + 1) * sizeof(int32_t)) ||
        memcmp(dst->col, src->col, (size_t)dst->n * sizeof(int32_t)) || dst->d_mlp != src->d_mlp || dst->k != src->k || dst->bins != src->bins || dst->samples != src->samples)
        return cl_fail(err, CL_EINVAL, "the states differ in neurons, d_mlp, k, bins or samples and cannot be merged");
    cl_status st0 = cl_scope_normalize(dst, err);
    if (st0 || (st0 = cl_scope_normalize(src, err))) return st0;
    neuron_buf b;
    if (!buf_alloc(dst, &b)) { buf_free(&b); return cl_fail(err, CL_ENOMEM, "out of memory"); }
    for (size_t j = 0; j < (size_t)dst->n; j++) {
        for (int r = 0; r < src->top_count[j]; r++)
            cl_topk_insert(top_of(dst, j), src->top_act[j * src->k + r], src->top_doc[j * src->k + r], src->top_pos[j * src->k + r]);
        dst->total[j] += src->total[j];
        dst->nonfinite[j] += src->nonfinite[j];
        if (!(src->vmin[j] <= src->vmax[j])) continue;
        const int dst_empty = !(dst->vmin[j] <= dst->vmax[j]);
        float mn = dst_empty ? src->vmin[j] : fminf(dst->vmin[j], src->vmin[j]);
        float mx = dst_empty ? src->vmax[j] : fmaxf(dst->vmax[j], src->vmax[j]);
        int e = grid_exp(mn, mx, dst->bins);
        int64_t st = grid_cell(mn, e);
        buf_clear(dst, &b);
        buf_add(dst, j, &b, e, st);
        buf_add(src, j, &b, e, st);
        buf_store(dst, j, &b, e, st);
        dst->vmin[j] = mn;
        dst->vmax[j] = mx;
    }
    buf_free(&b);
    return CL_OK;
}

cl_status cl_scope_validate(const cl_scope *s, cl_error *err) {
    for (size_t j = 0; j < (size_t)s->n; j++) {
        const int L = cl_scope_layer_of(s, (int)j), i = s->col[j];
        if (s->top_count[j] < 0 || s->top_count[j] > s->k)
            return cl_fail(err, CL_EINVAL, "layer %d neuron %d: top-k count %d is outside [0, %d]", L, i, s->top_count[j], s->k);
        int64_t sum = 0;
        for (int b = 0; b < s->bins; b++) {
            if (s->hist[j * s->bins + b] < 0) return cl_fail(err, CL_EINVAL, "layer %d neuron %d: a negative bin count", L, i);
            sum += s->hist[j * s->bins + b];
        }
        if (sum != s->total[j])
            return cl_fail(err, CL_EINVAL, "layer %d neuron %d: the bins add up to %lld, not the total %lld", L, i,
                           (long long)sum, (long long)s->total[j]);
        for (int b = 0; b < s->bands; b++)
            if (s->s_count[j * s->bands + b] < 0 || s->s_count[j * s->bands + b] > s->samples)
                return cl_fail(err, CL_EINVAL, "layer %d neuron %d: band %d holds %d samples, outside [0, %d]", L, i, b,
                               s->s_count[j * s->bands + b], s->samples);
        if (!(s->vmin[j] <= s->vmax[j])) {
            if (s->total[j] != 0) return cl_fail(err, CL_EINVAL, "layer %d neuron %d: values counted but no range", L, i);
            continue;
        }
        if (!isfinite(s->vmin[j]) || !isfinite(s->vmax[j]))
            return cl_fail(err, CL_EINVAL, "layer %d neuron %d: the range is not finite", L, i);
        int e = grid_exp(s->vmin[j], s->vmax[j], s->bins);
        if (s->hist_exp[j] != e || s->hist_start[j] != grid_cell(s->vmin[j], e))
            return cl_fail(err, CL_EINVAL, "layer %d neuron %d: the histogram is not on the grid of its range", L, i);
    }
    return CL_OK;
}
