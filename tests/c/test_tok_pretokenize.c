/* test_tok_pretokenize.c: the GPT-2 pre-tokenizer regex (cl_tok_pretokenize.c) on its own. Oracle:
 * HF tokenizers' ByteLevel(add_prefix_space=False, use_regex=True).pre_tokenize_str, its pieces'
 * end offsets converted to bytes (recorded with tokenizers 0.2x). */
#include <string.h>

#include "cl_tok_private.h"
#include "ctest.h"

static void expect_split(const char *text, const size_t *want, size_t n) {
    size_t len = strlen(text), ends[64];
    size_t k = cl_pretokenize(text, len, ends);
    int ok = k == n;
    for (size_t i = 0; ok && i < n; i++) ok = ends[i] == want[i];
    CHECK(ok, "pre-tokens of \"%s\": %zu pieces, want %zu", text, k, n);
    /* cl_tok_pretok_next walks the same boundaries one at a time */
    size_t i = 0, j = 0;
    while (i < len && j < n && (i = cl_tok_pretok_next((const uint8_t *)text, len, i)) == want[j]) j++;
    CHECK(j == n && i == len, "cl_tok_pretok_next over \"%s\" stops at piece %zu", text, j);
}

int main(void) {
    expect_split("Hello world's  test 123", (size_t[]){5, 11, 13, 14, 19, 23}, 6);
    expect_split("I'll've 'd  \n\n x", (size_t[]){1, 4, 7, 9, 10, 14, 16}, 7);  /* contractions, \s+(?!\S) */
    expect_split("  a", (size_t[]){1, 3}, 2);                                      /* all but the last space */
    expect_split("na\xc3\xafve caf\xc3\xa9 42nd \xc2\xbd \xf0\x9f\x98\x80!!", (size_t[]){6, 12, 15, 17, 20, 27}, 6);
    expect_split("x   ", (size_t[]){1, 4}, 2);                                     /* trailing spaces: one piece */
    expect_split("tab\tend", (size_t[]){3, 4, 7}, 3);
    expect_split("'s'S", (size_t[]){2, 3, 4}, 3);                                  /* contractions are lowercase only */
    size_t none[1];
    CHECK(cl_pretokenize("", 0, none) == 0, "empty text has no pre-tokens");
    return ctest_report();
}
