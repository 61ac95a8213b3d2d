/* cl_safetensors.c: parse safetensors headers with cJSON, mmap the files, and validate every
 * tensor record (dtype, shape, offsets inside the file, no overlaps, no holes, total size)
 * before any tensor is touched. Sharded checkpoints are read through the index's weight_map.
 * Nothing here knows about models; cl_weights.c maps names to TransformerLens layouts. */
#include "cl_safetensors.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_HEADER (100u << 20) /* as the reference implementation */

static const struct { const char *name; cl_dtype dt; size_t size; } DTYPES[] = {
    {"F32", CL_DT_F32, 4},   {"F16", CL_DT_F16, 2},   {"BF16", CL_DT_BF16, 2},
    {"F64", CL_DT_F64, 8},   {"I64", CL_DT_I64, 8},   {"I32", CL_DT_I32, 4},
    {"I16", CL_DT_I16, 2},   {"I8", CL_DT_I8, 1},     {"U8", CL_DT_U8, 1},
    {"BOOL", CL_DT_BOOL, 1}, {"U16", CL_DT_U16, 2},   {"U32", CL_DT_U32, 4},
    {"U64", CL_DT_U64, 8},   {"F8_E4M3", CL_DT_F8_E4M3, 1}, {"F8_E5M2", CL_DT_F8_E5M2, 1},
};
#define N_DTYPES (sizeof DTYPES / sizeof DTYPES[0])

const char *cl_dtype_name(cl_dtype dt) {
    for (size_t i = 0; i < N_DTYPES; i++)
        if (DTYPES[i].dt == dt) return DTYPES[i].name;
    return "?";
}

size_t cl_dtype_size(cl_dtype dt) {
    for (size_t i = 0; i < N_DTYPES; i++)
        if (DTYPES[i].dt == dt) return DTYPES[i].size;
    return 0;
}

static char *str_dup(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

static int cmp_begin(const void *a, const void *b) {
    const cl_st_tensor *x = *(const cl_st_tensor *const *)a, *y = *(const cl_st_tensor *const *)b;
    return x->begin < y->begin ? -1 : x->begin > y->begin ? 1 : (x->end > y->end) - (x->end < y->end);
}

static int cmp_name(const void *a, const void *b) {
    return strcmp(((const cl_st_tensor *)a)->name, ((const cl_st_tensor *)b)->name);
}

/* Parse one record {"dtype":..,"shape":[..],"data_offsets":[b,e]} into t. */
static cl_status parse_record(const char *path, const cJSON *rec, cl_st_tensor *t, size_t data_size,
                              cl_error *err) {
    const char *name = rec->string;
    if (!cJSON_IsObject(rec))
        return cl_fail(err, CL_EFORMAT, "%s: tensor '%s': header record is not an object", path, name);
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(rec, "dtype");
    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(rec, "shape");
    const cJSON *offs = cJSON_GetObjectItemCaseSensitive(rec, "data_offsets");
    if (!cJSON_IsString(dt))
        return cl_fail(err, CL_EFORMAT, "%s: tensor '%s': field 'dtype' missing or not a string", path, name);
    size_t isz = 0;
    for (size_t i = 0; i < N_DTYPES; i++)
        if (strcmp(dt->valuestring, DTYPES[i].name) == 0) { t->dtype = DTYPES[i].dt; isz = DTYPES[i].size; }
    if (!isz)
        return cl_fail(err, CL_EFORMAT, "%s: tensor '%s': unknown dtype '%s'", path, name, dt->valuestring);
    if (!cJSON_IsArray(shape))
        return cl_fail(err, CL_EFORMAT, "%s: tensor '%s': field 'shape' missing or not an array", path, name);
    int nd = cJSON_GetArraySize(shape);
    if (nd > CL_ST_MAX_DIMS)
        return cl_fail(err, CL_EFORMAT, "%s: tensor '%s': %d dimensions, at most %d supported", path, name, nd, CL_ST_MAX_DIMS);
    t->ndim = nd;
    size_t numel = 1;
    for (int i = 0; i < nd; i++) {
        const cJSON *d = cJSON_GetArrayItem(shape, i);
        if (!cJSON_IsNumber(d) || d->valuedouble < 0 || d->valuedouble > 9.007199254740992e15 ||
            d->valuedouble != (double)(int64_t)d->valuedouble)
            return cl_fail(err, CL_EFORMAT, "%s: tensor '%s': shape[%d] is not a non-negative integer", path, name, i);
        t->shape[i] = (int64_t)d->valuedouble;
        if (!cl_mul_size(numel, (size_t)t->shape[i], &numel))
            return cl_fail(err, CL_EFORMAT, "%s: tensor '%s': shape overflows", path, name);
    }
    if (!cJSON_IsArray(offs) || cJSON_GetArraySize(offs) != 2)
        return cl_fail(err, CL_EFORMAT, "%s: tensor '%s': field 'data_offsets' must be [begin, end]", path, name);
    double b = cJSON_GetArrayItem(offs, 0)->valuedouble, e = cJSON_GetArrayItem(offs, 1)->valuedouble;
    if (!cJSON_IsNumber(cJSON_GetArrayItem(offs, 0)) || !cJSON_IsNumber(cJSON_GetArrayItem(offs, 1)) ||
        b < 0 || e < b || e > 9.007199254740992e15 || b != (double)(int64_t)b || e != (double)(int64_t)e)
        return cl_fail(err, CL_EFORMAT, "%s: tensor '%s': data_offsets [%.0f, %.0f] are not valid", path, name, b, e);
    t->begin = (size_t)b;
    t->end = (size_t)e;
    size_t nbytes;
    if (!cl_mul_size(numel, isz, &nbytes) || nbytes != t->end - t->begin)
        return cl_fail(err, CL_EFORMAT,
                       "%s: tensor '%s': data_offsets span %zu bytes but dtype %s and its shape need %zu",
                       path, name, t->end - t->begin, dt->valuestring, numel * isz);
    if (t->end > data_size)
        return cl_fail(err, CL_EFORMAT,
                       "%s: tensor '%s': data_offsets end %zu is outside the file's data section (%zu bytes); "
                       "is the file truncated?", path, name, t->end, data_size);
    return CL_OK;
}

/* Map one file and append its validated records to *tensors. */
static cl_status open_shard(const char *path, cl_st_shard *sh, int shard_idx, cl_st_tensor **tensors,
                            int *n_tensors, int *cap, cl_error *err) {
    cl_status st = CL_OK;
    cJSON *root = NULL;
    char *hdr = NULL;
    cl_st_tensor **order = NULL;
    int first = *n_tensors;
    sh->path = str_dup(path);
    if (!sh->path) return cl_fail(err, CL_ENOMEM, "out of memory");
    int fd = cl_open_regular(path, err); /* a FIFO is refused at once, never blocked on */
    if (fd < 0) return err ? err->code : CL_EIO;
    struct stat sb;
    if (fstat(fd, &sb) != 0) { close(fd); return cl_fail(err, CL_EIO, "%s: cannot stat: %s", path, strerror(errno)); }
    sh->fd = fd; /* closed by cl_st_close */
    sh->ino = (int64_t)sb.st_ino;
    sh->dev = (int64_t)sb.st_dev;
    sh->size = (int64_t)sb.st_size;
    sh->mtime_ns = (int64_t)sb.st_mtim.tv_sec * 1000000000 + sb.st_mtim.tv_nsec;
    sh->ctime_ns = (int64_t)sb.st_ctim.tv_sec * 1000000000 + sb.st_ctim.tv_nsec;
    size_t size = (size_t)sb.st_size;
    if (size < 8) return cl_fail(err, CL_EFORMAT, "%s: %zu bytes, too short for a safetensors file (truncated?)", path, size);
    void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (map == MAP_FAILED) return cl_fail(err, CL_EIO, "%s: mmap failed: %s", path, strerror(errno));
    sh->map = map;
    sh->map_size = size;
    const unsigned char *p = map;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | p[i];
    if (hlen > MAX_HEADER || hlen > size - 8) {
        st = cl_fail(err, CL_EFORMAT, "%s: header length %llu does not fit in the file (%zu bytes); not a safetensors file or truncated",
                     path, (unsigned long long)hlen, size);
        goto done;
    }
    sh->data_offset = 8 + (size_t)hlen;
    size_t data_size = size - sh->data_offset;
    hdr = malloc(hlen + 1);
    if (!hdr) { st = cl_fail(err, CL_ENOMEM, "out of memory"); goto done; }
    memcpy(hdr, p + 8, hlen);
    hdr[hlen] = '\0';
    if (hlen == 0 || hdr[0] != '{') {
        st = cl_fail(err, CL_EFORMAT, "%s: header is not a JSON object", path);
        goto done;
    }
    const char *ep = NULL;
    root = cJSON_ParseWithOpts(hdr, &ep, 0);
    if (!root || !cJSON_IsObject(root)) {
        st = cl_fail(err, CL_EFORMAT, "%s: header is not valid JSON (near byte %ld of the header)", path,
                     ep ? (long)(ep - hdr) : -1L);
        goto done;
    }
    for (cJSON *rec = root->child; rec; rec = rec->next) {
        if (strcmp(rec->string, "__metadata__") == 0) continue;
        if (*n_tensors == *cap) {
            int nc = *cap ? 2 * *cap : 256;
            cl_st_tensor *nt = realloc(*tensors, (size_t)nc * sizeof **tensors);
            if (!nt) { st = cl_fail(err, CL_ENOMEM, "out of memory"); goto done; }
            *tensors = nt;
            *cap = nc;
        }
        cl_st_tensor *t = &(*tensors)[*n_tensors];
        memset(t, 0, sizeof *t);
        if ((st = parse_record(path, rec, t, data_size, err)) != CL_OK) goto done;
        t->name = str_dup(rec->string);
        if (!t->name) { st = cl_fail(err, CL_ENOMEM, "out of memory"); goto done; }
        t->file = shard_idx;
        t->data = p + sh->data_offset + t->begin;
        (*n_tensors)++;
    }
    /* No overlaps and no holes: the records must tile the data section exactly. */
    int n = *n_tensors - first;
    order = malloc((size_t)(n ? n : 1) * sizeof *order);
    if (!order) { st = cl_fail(err, CL_ENOMEM, "out of memory"); goto done; }
    for (int i = 0; i < n; i++) order[i] = &(*tensors)[first + i];
    qsort(order, (size_t)n, sizeof *order, cmp_begin);
    size_t pos = 0;
    for (int i = 0; i < n; i++) {
        if (order[i]->begin < pos) {
            st = cl_fail(err, CL_EFORMAT, "%s: tensor '%s' (bytes %zu-%zu) overlaps tensor '%s'", path,
                         order[i]->name, order[i]->begin, order[i]->end, order[i - 1]->name);
            goto done;
        }
        if (order[i]->begin > pos) {
            st = cl_fail(err, CL_EFORMAT, "%s: bytes %zu-%zu of the data section belong to no tensor (before '%s')",
                         path, pos, order[i]->begin, order[i]->name);
            goto done;
        }
        pos = order[i]->end;
    }
    if (pos != data_size) {
        st = cl_fail(err, CL_EFORMAT, "%s: the tensors cover %zu bytes but the data section has %zu", path, pos, data_size);
        goto done;
    }
done:
    free(order);
    cJSON_Delete(root);
    free(hdr);
    return st;
}

static int ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && strcmp(s + a - b, suf) == 0;
}

static char *join(const char *dir, const char *name) {
    size_t a = strlen(dir), b = strlen(name);
    char *p = malloc(a + b + 2);
    if (!p) return NULL;
    memcpy(p, dir, a);
    p[a] = '/';
    memcpy(p + a + 1, name, b + 1);
    return p;
}

static cl_status add_shard(cl_st_set *s, const char *path, int *cap_t, cl_error *err) {
    cl_st_shard *ns = realloc(s->shards, (size_t)(s->n_shards + 1) * sizeof *ns);
    if (!ns) return cl_fail(err, CL_ENOMEM, "out of memory");
    s->shards = ns;
    memset(&s->shards[s->n_shards], 0, sizeof *ns);
    s->shards[s->n_shards].fd = -1;
    s->n_shards++;
    return open_shard(path, &s->shards[s->n_shards - 1], s->n_shards - 1, &s->tensors, &s->n_tensors, cap_t, err);
}

/* Sharded: read the index, open each distinct shard once, check the weight_map agrees. */
static cl_status open_index(cl_st_set *s, const char *dir, const char *index_path, int *cap_t, cl_error *err) {
    char *text = NULL;
    cJSON *root = NULL;
    cl_status st = cl_read_file(index_path, &text, NULL, err);
    if (st) return st;
    root = cJSON_Parse(text);
    const cJSON *wm = root ? cJSON_GetObjectItemCaseSensitive(root, "weight_map") : NULL;
    if (!root) { st = cl_fail(err, CL_EFORMAT, "%s: not valid JSON", index_path); goto done; }
    if (!cJSON_IsObject(wm)) { st = cl_fail(err, CL_EFORMAT, "%s: field 'weight_map' missing or not an object", index_path); goto done; }
    for (const cJSON *e = wm->child; e; e = e->next) {
        if (!cJSON_IsString(e) || strchr(e->valuestring, '/') || strcmp(e->valuestring, "..") == 0) {
            st = cl_fail(err, CL_EFORMAT, "%s: weight_map['%s'] must be a file name in the same folder", index_path, e->string);
            goto done;
        }
        int seen = 0;
        for (int i = 0; i < s->n_shards; i++)
            if (strcmp(strrchr(s->shards[i].path, '/') + 1, e->valuestring) == 0) seen = 1;
        if (seen) continue;
        char *p = join(dir, e->valuestring);
        if (!p) { st = cl_fail(err, CL_ENOMEM, "out of memory"); goto done; }
        st = add_shard(s, p, cap_t, err);
        free(p);
        if (st) goto done;
    }
    /* every mapped name must be in the shard the index names */
    if (s->n_tensors > 1) qsort(s->tensors, (size_t)s->n_tensors, sizeof *s->tensors, cmp_name);
    for (const cJSON *e = wm->child; e; e = e->next) {
        const cl_st_tensor *t = cl_st_find(s, e->string);
        if (!t || strcmp(strrchr(s->shards[t->file].path, '/') + 1, e->valuestring) != 0) {
            st = cl_fail(err, CL_EFORMAT, "%s: weight_map says tensor '%s' is in %s, but it is not there", index_path,
                         e->string, e->valuestring);
            goto done;
        }
    }
done:
    cJSON_Delete(root);
    free(text);
    return st;
}

cl_status cl_st_open(const char *path, cl_st_set **out, cl_error *err) {
    *out = NULL;
    cl_st_set *s = calloc(1, sizeof *s);
    if (!s) return cl_fail(err, CL_ENOMEM, "out of memory");
    int cap_t = 0;
    cl_status st = CL_OK;
    struct stat sb;
    if (stat(path, &sb) != 0) {
        st = cl_fail(err, CL_EIO, "%s: %s", path, strerror(errno));
        goto done;
    }
    if (S_ISDIR(sb.st_mode)) {
        char *single = join(path, "model.safetensors"), *index = join(path, "model.safetensors.index.json");
        if (!single || !index) { free(single); free(index); st = cl_fail(err, CL_ENOMEM, "out of memory"); goto done; }
        if (access(single, R_OK) == 0) st = add_shard(s, single, &cap_t, err);
        else if (access(index, R_OK) == 0) st = open_index(s, path, index, &cap_t, err);
        else st = cl_fail(err, CL_EIO, "%s: no model.safetensors or model.safetensors.index.json in this folder "
                          "(PyTorch .bin checkpoints are not supported; convert with safetensors)", path);
        free(single);
        free(index);
    } else if (ends_with(path, ".json")) {
        char *dir = str_dup(path);
        if (!dir) { st = cl_fail(err, CL_ENOMEM, "out of memory"); goto done; }
        char *slash = strrchr(dir, '/');
        if (slash) *slash = '\0'; else strcpy(dir, ".");
        st = open_index(s, dir, path, &cap_t, err);
        free(dir);
    } else {
        st = add_shard(s, path, &cap_t, err);
    }
    if (st) goto done;
    if (s->n_tensors > 1) qsort(s->tensors, (size_t)s->n_tensors, sizeof *s->tensors, cmp_name);
    for (int i = 1; i < s->n_tensors; i++)
        if (strcmp(s->tensors[i].name, s->tensors[i - 1].name) == 0) {
            st = cl_fail(err, CL_EFORMAT, "tensor '%s' appears in both %s and %s", s->tensors[i].name,
                         s->shards[s->tensors[i - 1].file].path, s->shards[s->tensors[i].file].path);
            goto done;
        }
done:
    if (st) { cl_st_close(s); return st; }
    *out = s;
    return CL_OK;
}

void cl_st_close(cl_st_set *s) {
    if (!s) return;
    for (int i = 0; i < s->n_tensors; i++) free(s->tensors[i].name);
    free(s->tensors);
    for (int i = 0; i < s->n_shards; i++) {
        if (s->shards[i].map) munmap(s->shards[i].map, s->shards[i].map_size);
        if (s->shards[i].fd >= 0) close(s->shards[i].fd);
        free(s->shards[i].path);
    }
    free(s->shards);
    free(s);
}

cl_status cl_st_check(const cl_st_set *s, cl_error *err) {
    for (int i = 0; s && i < s->n_shards; i++) {
        const cl_st_shard *sh = &s->shards[i];
        struct stat sb;
        if (sh->fd < 0) continue;
        if (fstat(sh->fd, &sb) != 0)
            return cl_fail(err, CL_EIO, "%s: cannot stat the loaded checkpoint file: %s", sh->path, strerror(errno));
        int64_t mt = (int64_t)sb.st_mtim.tv_sec * 1000000000 + sb.st_mtim.tv_nsec;
        int64_t ct = (int64_t)sb.st_ctim.tv_sec * 1000000000 + sb.st_ctim.tv_nsec;
        if ((int64_t)sb.st_size != sh->size || mt != sh->mtime_ns || ct != sh->ctime_ns)
            return cl_fail(err, CL_EIO,
                           "%s: the checkpoint file was modified after the model was loaded (%s); its weights are "
                           "used from the file's memory map (mmap=True), so the model can no longer be used: "
                           "load it again", sh->path,
                           (int64_t)sb.st_size != sh->size ? "its size changed" : "rewritten in place");
    }
    return CL_OK;
}

const cl_st_tensor *cl_st_find(const cl_st_set *s, const char *name) {
    int lo = 0, hi = s->n_tensors - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2, c = strcmp(s->tensors[mid].name, name);
        if (c == 0) return &s->tensors[mid];
        if (c < 0) lo = mid + 1; else hi = mid - 1;
    }
    return NULL;
}

void cl_st_release(const cl_st_set *s, const cl_st_tensor *t) {
    long pg = sysconf(_SC_PAGESIZE);
    uintptr_t a = (uintptr_t)t->data, e = a + (t->end - t->begin);
    a = (a + (uintptr_t)pg - 1) & ~((uintptr_t)pg - 1); /* whole pages only: neighbours may still be needed */
    e &= ~((uintptr_t)pg - 1);
    if (e > a) madvise((void *)a, e - a, MADV_DONTNEED);
}

static inline float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0) {
        if (man == 0) bits = sign;
        else { /* subnormal: normalise */
            exp = 127 - 15 + 1;
            while (!(man & 0x400)) { man <<= 1; exp--; }
            man &= 0x3ff;
            bits = sign | (exp << 23) | (man << 13);
        }
    } else if (exp == 31) bits = sign | 0x7f800000u | (man << 13);
    else bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

cl_status cl_to_f32(float *dst, const void *src, size_t n, cl_dtype dt, cl_error *err) {
    switch (dt) {
    case CL_DT_F32: memcpy(dst, src, n * 4); return CL_OK;
    case CL_DT_F16: {
        const unsigned char *p = src;
        for (size_t i = 0; i < n; i++) { uint16_t h; memcpy(&h, p + 2 * i, 2); dst[i] = half_to_float(h); }
        return CL_OK;
    }
    case CL_DT_BF16: {
        const unsigned char *p = src;
        for (size_t i = 0; i < n; i++) {
            uint16_t h; memcpy(&h, p + 2 * i, 2);
            uint32_t b = (uint32_t)h << 16;
            memcpy(&dst[i], &b, 4);
        }
        return CL_OK;
    }
    default:
        return cl_fail(err, CL_EINVAL, "dtype %s cannot be used as model weights (F32, F16 or BF16 expected)", cl_dtype_name(dt));
    }
}
