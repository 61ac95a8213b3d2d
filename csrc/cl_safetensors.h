/* cl_safetensors.h: read-only access to (possibly sharded) safetensors checkpoints. */
#ifndef CL_SAFETENSORS_H
#define CL_SAFETENSORS_H

#include "cl_common.h"

typedef enum {
    CL_DT_F32, CL_DT_F16, CL_DT_BF16, CL_DT_F64, CL_DT_I64, CL_DT_I32, CL_DT_I16, CL_DT_I8,
    CL_DT_U8, CL_DT_BOOL, CL_DT_U16, CL_DT_U32, CL_DT_U64, CL_DT_F8_E4M3, CL_DT_F8_E5M2
} cl_dtype;

#define CL_ST_MAX_DIMS 8

typedef struct {
    char *name;
    cl_dtype dtype;
    int ndim;
    int64_t shape[CL_ST_MAX_DIMS];
    size_t begin, end;  /* byte offsets into the data section */
    const void *data;   /* inside the mapping */
    int file;           /* index of the shard holding it */
} cl_st_tensor;

typedef struct {
    char *path;
    void *map;
    size_t map_size;
    size_t data_offset; /* 8 + header length */
    int fd;             /* kept open (-1: closed) to notice changes to the mapped file */
    int64_t ino, dev, size, mtime_ns, ctime_ns; /* at open */
} cl_st_shard;

typedef struct {
    cl_st_shard *shards;
    int n_shards;
    cl_st_tensor *tensors; /* sorted by name */
    int n_tensors;
} cl_st_set;

const char *cl_dtype_name(cl_dtype dt);
size_t cl_dtype_size(cl_dtype dt);

/* Open a checkpoint folder or file: <dir>/model.safetensors, or the shards listed by
 * <dir>/model.safetensors.index.json, or a single .safetensors file path. Every header
 * record is validated before anything is returned. */
cl_status cl_st_open(const char *path, cl_st_set **out, cl_error *err);
void cl_st_close(cl_st_set *s); /* accepts NULL */

/* CL_EIO naming the file when a mapped file's size, modification or change time differ from
 * when it was opened (truncated, rewritten in place); CL_OK while every file is as opened. */
cl_status cl_st_check(const cl_st_set *s, cl_error *err);
const cl_st_tensor *cl_st_find(const cl_st_set *s, const char *name);

/* Tell the kernel that a tensor's pages will not be read again (after converting it),
 * so they leave this process's resident set. */
void cl_st_release(const cl_st_set *s, const cl_st_tensor *t);

/* Convert n elements of dtype dt to float32. */
cl_status cl_to_f32(float *dst, const void *src, size_t n, cl_dtype dt, cl_error *err);

#endif
