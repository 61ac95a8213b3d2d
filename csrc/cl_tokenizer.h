/* cl_tokenizer.h: byte-level BPE tokenizers (GPT-2, GPT-NeoX / Pythia), bit-identical to
 * Hugging Face `tokenizers` with the same files. No Python here.
 *
 * Loading: cl_tokenizer_load(path) takes a folder or a file:
 *   - a Hugging Face tokenizer.json (model BPE, ByteLevel pre-tokenizer/decoder, optional NFC
 *     normalizer, added tokens), or
 *   - GPT-2's vocab.json + merges.txt (either file, or their folder); "<|endoftext|>" becomes a
 *     special added token, as transformers' GPT2Tokenizer does.
 *   tokenizer_config.json, special_tokens_map.json and config.json in the same folder give the
 *   BOS / EOS / pad ids (see cl_tokenizer_info).
 *
 * Encoding follows Hugging Face's pipeline exactly:
 *   1. added tokens with normalized=false (the special ones) are matched on the raw text,
 *      leftmost-longest, before anything else;
 *   2. each remaining piece is normalized (NFC for GPT-NeoX), then added tokens with
 *      normalized=true (NeoX's runs of spaces) are matched on it;
 *   3. the GPT-2 regex splits what is left into pre-tokens, each is BPE-encoded on its bytes.
 * Offsets are byte offsets into the input, computed as HF does (through the NFC alignments),
 * optionally trimmed as HF's ByteLevel post-processor does.
 *
 * Thread safety: a loaded tokenizer is immutable except for a small pool of encoder states (word
 * caches), each lent to one thread at a time through an atomic flag; any number of threads may
 * encode with one tokenizer concurrently. Free it only when no encode is running. */
#ifndef CL_TOKENIZER_H
#define CL_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "cl_common.h"

typedef struct cl_tokenizer cl_tokenizer;

/* Encoding flags. */
enum {
    CL_TOK_ALLOW_SPECIAL = 1u << 0, /* match special tokens in the text (HF's default); without it
                                       they are encoded as plain text (HF encode_special_tokens) */
    CL_TOK_OFFSETS = 1u << 1,       /* fill cl_tok_result.offsets */
    CL_TOK_TRIM_OFFSETS = 1u << 2,  /* trim leading/trailing spaces off each span, as HF's
                                       ByteLevel post-processor with trim_offsets=true */
};

/* The result of one encode. Reused between calls (buffers grow); free with cl_tok_result_free. */
typedef struct {
    int32_t *ids;
    int64_t *offsets; /* 2 per token when CL_TOK_OFFSETS: [start, end) byte offsets in the input */
    size_t n;
    size_t cap;
    size_t offsets_cap;
} cl_tok_result;

typedef struct {
    int32_t vocab_size;      /* max id + 1, added tokens included */
    int32_t bos_id, eos_id, pad_id, unk_id; /* -1 when the tokenizer has none */
    int nfc;                 /* 1 when the normalizer is NFC */
    int trim_offsets;        /* what the tokenizer file's post-processor does (HF's default) */
    int add_prefix_space;    /* post-processor add_prefix_space (only affects trimming) */
    int n_added;             /* number of added tokens */
    const char *source;      /* the file(s) the tokenizer was read from */
} cl_tokenizer_info;

/* Load a tokenizer from a folder or a file (see above). Malformed files give CL_EFORMAT with
 * "file:line: ..." or "file: field ...: ..."; a missing file CL_EIO. */
cl_status cl_tokenizer_load(const char *path, cl_tokenizer **out, cl_error *err);
void cl_tokenizer_free(cl_tokenizer *tok); /* accepts NULL */

void cl_tokenizer_get_info(const cl_tokenizer *tok, cl_tokenizer_info *info);

/* Encode len bytes of UTF-8 text (NUL bytes allowed). Invalid UTF-8 gives CL_EINVAL naming the
 * byte offset. out->n is reset first. cancel may be NULL; it is consulted about every MiB. */
cl_status cl_tokenizer_encode(const cl_tokenizer *tok, const char *text, size_t len, unsigned flags,
                              cl_tok_result *out, const cl_cancel *cancel, cl_error *err);

/* Encode n texts with num_threads OpenMP threads (<= 0: OpenMP's default). outs[i] receives
 * texts[i]. cancel is consulted only from the calling thread. On error (the first one in
 * document order is not guaranteed; the message names the document index) all outs are still
 * valid to free. */
cl_status cl_tokenizer_encode_batch(const cl_tokenizer *tok, size_t n, const char *const *texts,
                                    const size_t *lens, unsigned flags, int num_threads,
                                    cl_tok_result *outs, const cl_cancel *cancel, cl_error *err);

void cl_tok_result_free(cl_tok_result *r); /* frees the buffers, keeps the struct; NULL ok */

/* Decode ids to the bytes HF's ByteLevel decoder produces (before its lossy UTF-8 step):
 * *out is malloc'ed (free it), NUL-terminated, *out_len bytes. skip_special drops special
 * tokens (HF's skip_special_tokens). An id outside the vocabulary gives CL_EINVAL. */
cl_status cl_tokenizer_decode(const cl_tokenizer *tok, const int32_t *ids, size_t n, int skip_special,
                              char **out, size_t *out_len, cl_error *err);

/* Token string of an id as written in the tokenizer files ("Ġthe", "<|endoftext|>"), or NULL
 * when id is not in the vocabulary. Not NUL-terminated: *len bytes. */
const char *cl_tokenizer_id_to_token(const cl_tokenizer *tok, int32_t id, size_t *len);
/* The bytes an id decodes to (what decode emits for it). NULL when id is not in the vocabulary. */
const char *cl_tokenizer_id_to_bytes(const cl_tokenizer *tok, int32_t id, size_t *len);
/* Id of a token string (added tokens first, as HF), or -1. */
int32_t cl_tokenizer_token_to_id(const cl_tokenizer *tok, const char *s, size_t len);
/* 1 when id is a special added token. */
int cl_tokenizer_is_special(const cl_tokenizer *tok, int32_t id);

/* Convert byte offsets into code-point offsets in place, as HF's Python binding does: an offset
 * inside a multi-byte character maps to that character's index; len maps to the number of
 * characters. text must be valid UTF-8; offsets outside [0, len] are left unchanged. */
void cl_offsets_bytes_to_chars(const char *text, size_t len, int64_t *offsets, size_t n_offsets);

/* ---- building blocks, exposed for tests ---- */

/* Index of the first byte of invalid UTF-8 in text, or len when it is valid (surrogates and
 * overlong forms are invalid, as in Rust and Python). */
size_t cl_utf8_check(const char *text, size_t len);

/* NFC exactly as HF's NFC normalizer (Unicode 9.0 data); *out is malloc'ed, NUL-terminated. */
cl_status cl_tokenizer_nfc(const char *text, size_t len, char **out, size_t *out_len, cl_error *err);

/* The GPT-2 pre-tokenizer regex: writes the end offset of each pre-token of valid UTF-8 text into
 * ends (caller provides len entries at least); returns the count. */
size_t cl_pretokenize(const char *text, size_t len, size_t *ends);

#endif
