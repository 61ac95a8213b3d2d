/* test_tokenizer.c: the C tokenizer alone, no Python.
 *
 *   gcc -std=c11 -O1 -fopenmp -D_GNU_SOURCE -Icsrc tests/c/test_tokenizer.c csrc/cl_tokenizer.c \
 *       csrc/cl_common.c $(pkg-config --cflags --libs libcjson) -o tests/c/bin/test_tokenizer
 *   tests/c/bin/test_tokenizer GPT2_DIR NEOX_DIR TMP_DIR
 *
 * Expected ids come from Hugging Face tokenizers 0.23.3 with the same files. Ends with
 * "N passed, N failed"; exits non-zero on failure. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cl_tokenizer.h"
#include "ctest.h"

static int same_ids(const cl_tok_result *r, const int32_t *want, size_t n) {
    if (r->n != n) return 0;
    for (size_t i = 0; i < n; i++)
        if (r->ids[i] != want[i]) return 0;
    return 1;
}

static void print_ids(const cl_tok_result *r) {
    printf("  got %zu ids:", r->n);
    for (size_t i = 0; i < r->n && i < 40; i++) printf(" %d", r->ids[i]);
    printf("\n");
}

static void expect_encode(const cl_tokenizer *t, const char *text, size_t len, unsigned flags, const int32_t *want,
                          size_t n) {
    cl_tok_result r = {0};
    cl_error err = {CL_OK, ""};
    cl_status st = cl_tokenizer_encode(t, text, len, flags, &r, NULL, &err);
    int ok = st == CL_OK && same_ids(&r, want, n);
    CHECK(ok, "encode(%.40s) status %d %s", text, (int)st, err.msg);
    if (!ok) print_ids(&r);
    /* round trip for valid text */
    if (st == CL_OK) {
        char *out = NULL;
        size_t ol = 0;
        st = cl_tokenizer_decode(t, r.ids, r.n, 0, &out, &ol, &err);
        CHECK(st == CL_OK && ol == len && memcmp(out, text, len) == 0, "decode(encode(%.40s)) round trip", text);
        free(out);
    }
    cl_tok_result_free(&r);
}

static void write_file(const char *dir, const char *name, const char *content) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f) {
        printf("cannot write %s\n", path);
        exit(2);
    }
    fputs(content, f);
    fclose(f);
}

static void test_gpt2(const char *dir) {
    cl_tokenizer *t = NULL;
    cl_error err = {CL_OK, ""};
    cl_status st = cl_tokenizer_load(dir, &t, &err);
    CHECK(st == CL_OK && t, "load %s: %s", dir, err.msg);
    if (!t) return;
    cl_tokenizer_info info;
    cl_tokenizer_get_info(t, &info);
    CHECK(info.vocab_size == 50257 && info.bos_id == 50256 && info.eos_id == 50256 && info.pad_id == 50256,
          "gpt2 info %d %d %d %d", info.vocab_size, info.bos_id, info.eos_id, info.pad_id);

    static const int32_t hello[] = {15496, 995, 50256, 340, 338};
    const char *s1 = "Hello world<|endoftext|> it's";
    expect_encode(t, s1, strlen(s1), CL_TOK_ALLOW_SPECIAL, hello, 5);
    static const int32_t spaces[] = {64, 220, 220, 23748, 220, 995, 628, 220, 2124};
    const char *s2 = "a   hello  world\n\n  x";
    expect_encode(t, s2, strlen(s2), CL_TOK_ALLOW_SPECIAL, spaces, 9);
    static const int32_t emoji[] = {47249, 222, 47249, 222, 257};
    const char *s3 = "\xf0\x9f\x98\x80\xf0\x9f\x98\x80 a";
    expect_encode(t, s3, strlen(s3), CL_TOK_ALLOW_SPECIAL, emoji, 5);
    static const int32_t contr[] = {705, 82, 705, 50, 314, 1101};
    const char *s4 = " 's 'S I'm";
    expect_encode(t, s4, strlen(s4), CL_TOK_ALLOW_SPECIAL, contr, 6);
    static const int32_t plain[] = {64, 27, 91, 437, 1659, 5239, 91, 29, 65};
    expect_encode(t, "a<|endoftext|>b", 15, 0, plain, 9);
    expect_encode(t, "", 0, CL_TOK_ALLOW_SPECIAL, NULL, 0);
    /* NUL bytes are text */
    cl_tok_result r = {0};
    st = cl_tokenizer_encode(t, "a\0b", 3, CL_TOK_ALLOW_SPECIAL, &r, NULL, &err);
    CHECK(st == CL_OK && r.n == 3, "NUL bytes: %d tokens", (int)r.n);

    /* offsets: bytes, then characters */
    st = cl_tokenizer_encode(t, s3, strlen(s3), CL_TOK_OFFSETS, &r, NULL, &err);
    CHECK(st == CL_OK && r.n == 5 && r.offsets[0] == 0 && r.offsets[1] == 4 && r.offsets[2] == 0 &&
              r.offsets[3] == 4 && r.offsets[4] == 4 && r.offsets[9] == 10,
          "emoji byte offsets");
    cl_offsets_bytes_to_chars(s3, strlen(s3), r.offsets, 2 * r.n);
    CHECK(r.offsets[0] == 0 && r.offsets[1] == 1 && r.offsets[4] == 1 && r.offsets[5] == 2 && r.offsets[8] == 2 &&
              r.offsets[9] == 4,
          "emoji char offsets");

    /* invalid UTF-8 */
    st = cl_tokenizer_encode(t, "ab\xff", 3, CL_TOK_ALLOW_SPECIAL, &r, NULL, &err);
    CHECK(st == CL_EINVAL && strstr(err.msg, "byte 2"), "invalid UTF-8: %d %s", (int)st, err.msg);

    /* decode errors and skip_special */
    int32_t bad[] = {1, 50257};
    char *out = NULL;
    size_t ol;
    st = cl_tokenizer_decode(t, bad, 2, 0, &out, &ol, &err);
    CHECK(st == CL_EINVAL && out == NULL, "decode of an unknown id");
    st = cl_tokenizer_decode(t, hello, 5, 1, &out, &ol, &err);
    CHECK(st == CL_OK && strcmp(out, "Hello world it's") == 0, "skip special: %s", out ? out : "");
    free(out);

    /* lookups */
    size_t len;
    const char *tok = cl_tokenizer_id_to_token(t, 262, &len);
    CHECK(tok && len == 5 && memcmp(tok, "\xc4\xa0the", 5) == 0, "id_to_token(262)");
    CHECK(cl_tokenizer_token_to_id(t, "\xc4\xa0the", 5) == 262, "token_to_id(Gthe)");
    CHECK(cl_tokenizer_is_special(t, 50256) && !cl_tokenizer_is_special(t, 262), "is_special");

    /* batch = single, several threads */
    const char *texts[4] = {s1, s2, s3, s4};
    size_t lens[4] = {strlen(s1), strlen(s2), strlen(s3), strlen(s4)};
    cl_tok_result outs[4] = {{0}};
    st = cl_tokenizer_encode_batch(t, 4, texts, lens, CL_TOK_ALLOW_SPECIAL, 2, outs, NULL, &err);
    CHECK(st == CL_OK && same_ids(&outs[0], hello, 5) && same_ids(&outs[1], spaces, 9) &&
              same_ids(&outs[2], emoji, 5) && same_ids(&outs[3], contr, 6),
          "batch");
    for (int i = 0; i < 4; i++) cl_tok_result_free(&outs[i]);
    const char *bad_texts[2] = {"ok", "\xc3\x28"};
    size_t bad_lens[2] = {2, 2};
    st = cl_tokenizer_encode_batch(t, 2, bad_texts, bad_lens, CL_TOK_ALLOW_SPECIAL, 2, outs, NULL, &err);
    CHECK(st == CL_EINVAL && strstr(err.msg, "text 1"), "batch error names the text: %s", err.msg);
    for (int i = 0; i < 2; i++) cl_tok_result_free(&outs[i]);

    /* a long word (heap BPE path) round-trips */
    size_t n = 100000;
    char *big = malloc(n + 1);
    for (size_t i = 0; i < n; i++) big[i] = (char)('a' + (i * 7 + i / 13) % 26);
    big[n] = 0;
    st = cl_tokenizer_encode(t, big, n, CL_TOK_ALLOW_SPECIAL, &r, NULL, &err);
    CHECK(st == CL_OK && r.n > 1000, "long word");
    st = cl_tokenizer_decode(t, r.ids, r.n, 0, &out, &ol, &err);
    CHECK(st == CL_OK && ol == n && memcmp(out, big, n) == 0, "long word round trip");
    free(out);
    free(big);
    cl_tok_result_free(&r);
    cl_tokenizer_free(t);
}

static void test_neox(const char *dir) {
    cl_tokenizer *t = NULL;
    cl_error err = {CL_OK, ""};
    cl_status st = cl_tokenizer_load(dir, &t, &err);
    CHECK(st == CL_OK && t, "load %s: %s", dir, err.msg);
    if (!t) return;
    cl_tokenizer_info info;
    cl_tokenizer_get_info(t, &info);
    CHECK(info.vocab_size == 50277 && info.bos_id == 0 && info.eos_id == 0 && info.pad_id == 1 && info.nfc,
          "neox info %d %d %d %d", info.vocab_size, info.bos_id, info.eos_id, info.pad_id);
    static const int32_t spaces[] = {66, 50275, 25521, 50276, 10186, 535, 50276, 89};
    const char *s = "a   hello  world\n\n  x";
    expect_encode(t, s, strlen(s), CL_TOK_ALLOW_SPECIAL, spaces, 8);
    static const int32_t eot[] = {0, 5801, 0};
    expect_encode(t, "<|endoftext|>hi<|endoftext|>", 28, CL_TOK_ALLOW_SPECIAL, eot, 3);
    /* trimmed offsets of a space-run token at the end of the text: (end, end) */
    cl_tok_result r = {0};
    const char *e = "\xc3\xa9   ";
    st = cl_tokenizer_encode(t, e, strlen(e), CL_TOK_OFFSETS | CL_TOK_TRIM_OFFSETS, &r, NULL, &err);
    CHECK(st == CL_OK && r.n == 2 && r.ids[0] == 860 && r.ids[1] == 50275 && r.offsets[2] == 5 && r.offsets[3] == 5,
          "trimmed offsets");
    /* NFC: e + combining acute -> e-acute, as HF */
    const char *d = "e\xcc\x81";
    char *out = NULL;
    size_t ol;
    st = cl_tokenizer_nfc(d, strlen(d), &out, &ol, &err);
    CHECK(st == CL_OK && ol == 2 && memcmp(out, "\xc3\xa9", 2) == 0, "nfc");
    free(out);
    st = cl_tokenizer_encode(t, d, strlen(d), CL_TOK_ALLOW_SPECIAL, &r, NULL, &err);
    CHECK(st == CL_OK && r.n == 1 && r.ids[0] == 860, "NFC before BPE");
    cl_tok_result_free(&r);
    cl_tokenizer_free(t);
}

static void test_errors(const char *tmp) {
    cl_tokenizer *t = NULL;
    cl_error err = {CL_OK, ""};
    char dir[1024], path[1100];
    cl_status st = cl_tokenizer_load("/nonexistent/tokenizer", &t, &err);
    CHECK(st == CL_EIO && t == NULL && strstr(err.msg, "/nonexistent/tokenizer"), "missing path: %s", err.msg);

    snprintf(dir, sizeof dir, "%s/ctok_bad_json", tmp);
    snprintf(path, sizeof path, "mkdir -p %s", dir);
    if (system(path) != 0) exit(2);
    write_file(dir, "tokenizer.json", "{\n  \"model\": {\n    \"type\": \"BPE\",,\n  }\n}\n");
    st = cl_tokenizer_load(dir, &t, &err);
    CHECK(st == CL_EFORMAT && strstr(err.msg, "tokenizer.json:3:"), "bad JSON: %s", err.msg);

    /* found by the fuzzer: the message quoted a bad merges.txt line after its text was freed */
    char vdir[1024];
    snprintf(vdir, sizeof vdir, "%s/ctok_bad_merges", tmp);
    snprintf(path, sizeof path, "mkdir -p %s", vdir);
    if (system(path) != 0) exit(2);
    write_file(vdir, "vocab.json", "{\"a\": 0, \"b\": 1, \"ab\": 2}");
    write_file(vdir, "merges.txt", "#version: 0.2\na b\nthis line has three spaces and is longer than sixty bytes in all\n");
    st = cl_tokenizer_load(vdir, &t, &err);
    CHECK(st == CL_EFORMAT && strstr(err.msg, "merges.txt:3: expected two tokens separated by one space, got \"this line has"),
          "bad merges line: %s", err.msg);

    write_file(dir, "tokenizer.json",
               "{\"model\": {\"type\": \"Unigram\", \"vocab\": []}, \"pre_tokenizer\": {\"type\": \"ByteLevel\"}}");
    st = cl_tokenizer_load(dir, &t, &err);
    CHECK(st == CL_EFORMAT && strstr(err.msg, "model.type \"Unigram\""), "model type: %s", err.msg);

    write_file(dir, "tokenizer.json",
               "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 1}, \"merges\": []},"
               " \"pre_tokenizer\": {\"type\": \"ByteLevel\"}}");
    st = cl_tokenizer_load(dir, &t, &err);
    CHECK(st == CL_EFORMAT && strstr(err.msg, "duplicate id 1"), "duplicate id: %s", err.msg);

    write_file(dir, "tokenizer.json",
               "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2}, \"merges\": [\"a b\", \"a c\"]},"
               " \"pre_tokenizer\": {\"type\": \"ByteLevel\"}}");
    st = cl_tokenizer_load(dir, &t, &err);
    CHECK(st == CL_EFORMAT && strstr(err.msg, "model.merges[1]") && strstr(err.msg, "\"c\""), "merge: %s", err.msg);

    snprintf(dir, sizeof dir, "%s/ctok_bad_merges", tmp);
    snprintf(path, sizeof path, "mkdir -p %s", dir);
    if (system(path) != 0) exit(2);
    write_file(dir, "vocab.json", "{\"a\": 0, \"b\": 1, \"ab\": 2}");
    write_file(dir, "merges.txt", "#version: 0.2\na b\nb x\n");
    st = cl_tokenizer_load(dir, &t, &err);
    CHECK(st == CL_EFORMAT && strstr(err.msg, "merges.txt:3:") && strstr(err.msg, "\"x\""), "merges.txt: %s",
          err.msg);
    write_file(dir, "merges.txt", "#version: 0.2\na b\n");
    st = cl_tokenizer_load(dir, &t, &err);
    CHECK(st == CL_OK, "tiny vocab loads: %s", err.msg);
    cl_tokenizer_free(t);
    cl_tokenizer_free(NULL);
}

/* The shared data folder next to the repository: the binary is <repo>/tests/c/bin/<name>, so
 * <repo>/../shared/data/tokenizers/<sub>, wherever the test is run from. */
static const char *shared_tokenizers(const char *argv0, const char *sub, char *buf, size_t cap) {
    char real[PATH_MAX];
    if (!realpath(argv0, real)) snprintf(real, sizeof real, "%s", argv0);
    for (int up = 0; up < 4; up++) { /* <name>, bin, c, tests */
        char *slash = strrchr(real, '/');
        if (slash) *slash = '\0';
    }
    snprintf(buf, cap, "%s/../shared/data/tokenizers/%s", real, sub);
    return buf;
}

/* usage: test_tokenizer [GPT2_DIR NEOX_DIR TMP_DIR]; by default the real tokenizer files in
 * ../shared/data/tokenizers next to the repository and a fresh temporary folder. */
int main(int argc, char **argv) {
    char tmpl[] = "/tmp/cl_tok_test_XXXXXX", gbuf[PATH_MAX + 64], nbuf[PATH_MAX + 64];
    const char *gpt2 = argc > 1 ? argv[1] : shared_tokenizers(argv[0], "gpt2", gbuf, sizeof gbuf);
    const char *neox = argc > 2 ? argv[2] : shared_tokenizers(argv[0], "gpt-neox-20b", nbuf, sizeof nbuf);
    const char *tmp = argc > 3 ? argv[3] : mkdtemp(tmpl);
    if (!tmp) {
        fprintf(stderr, "cannot make a temporary folder\n");
        return 2;
    }
    test_gpt2(gpt2);
    test_neox(neox);
    test_errors(tmp);
    return ctest_report();
}
