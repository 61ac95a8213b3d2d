/* cl_tok_load_gpt2.c: GPT-2's vocab.json + merges.txt, read as transformers' GPT2Tokenizer and HF
 * read them; errors name the file and line. */
#include <stdio.h>

#include "cl_tok_private.h"

cl_status cl_tok_load_vocab_json(builder *b, const char *path) {
    cJSON *root = NULL;
    cl_status st = cl_tok_json_load(path, &root, b->err);
    if (st) return st;
    st = cl_tok_load_vocab_object(b, path, "the vocabulary", root);
    if (!st) st = cl_tok_finish_vocab(b, path, "the vocabulary");
    cJSON_Delete(root);
    return st;
}

cl_status cl_tok_load_merges_txt(builder *b, const char *path) {
    char *data = NULL;
    size_t len = 0;
    cl_status st = cl_read_file(path, &data, &len, b->err);
    if (st) return st;
    if ((st = cl_tok_check_file_utf8(path, data, len, b->err))) {
        free(data);
        return st;
    }
    size_t lines = 1;
    for (size_t i = 0; i < len; i++) lines += data[i] == '\n';
    if (!cl_tok_mmap_init(&b->t->merges, lines)) {
        free(data);
        return cl_fail(b->err, CL_ENOMEM, "%s: out of memory", path);
    }
    uint32_t rank = 0;
    size_t i = 0;
    int lineno = 0;
    char where[600];
    while (i < len) {
        size_t e = i;
        while (e < len && data[e] != '\n') e++;
        size_t ll = e;
        lineno++;
        if (ll > i && data[ll - 1] == '\r') ll--;
        const char *line = data + i;
        size_t n = ll - i;
        i = e + (e < len);
        if (n >= 8 && memcmp(line, "#version", 8) == 0) continue;
        /* HF: split(' ') must give exactly two parts */
        const char *sp = memchr(line, ' ', n);
        snprintf(where, sizeof where, "%s:%d", path, lineno);
        if (!sp || memchr(sp + 1, ' ', n - (size_t)(sp + 1 - line))) {
            /* the message quotes the line: format it before freeing the text it points into */
            st = cl_fail(b->err, CL_EFORMAT, "%s: expected two tokens separated by one space, got \"%.*s\"",
                         where, CLIPN(line, n));
            free(data);
            return st;
        }
        st = cl_tok_add_merge(b, where, line, (size_t)(sp - line), sp + 1, n - (size_t)(sp + 1 - line), rank++);
        if (st) {
            free(data);
            return st;
        }
    }
    free(data);
    return CL_OK;
}
