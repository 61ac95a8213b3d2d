/* test_tok_unicode.c: the tokenizer's Unicode layer (cl_tok_unicode.c) on its own: character classes
 * (Unicode 16 general categories, as the regex's \p{L}, \p{N}, \s), GPT-2's byte <-> character map
 * (bytes_to_unicode in GPT-2's encoder.py), and NFC with HF's alignments (tokenizers'
 * NormalizedString after normalizers.NFC(): the composed U+00E9 of "xe\u0301y" slices back to the
 * original "e" alone, [1, 2), as HF aligns a composition to its first character). */
#include <string.h>

#include "cl_tok_private.h"
#include "ctest.h"

int main(void) {
    CHECK((cl_tok_uprop('a') & 3) == CLS_LETTER && (cl_tok_uprop(0xE9) & 3) == CLS_LETTER, "letters");
    CHECK((cl_tok_uprop('5') & 3) == CLS_NUMBER && (cl_tok_uprop(0xBD) & 3) == CLS_NUMBER, "numbers (5, one half)");
    CHECK((cl_tok_uprop(' ') & 3) == CLS_SPACE && (cl_tok_uprop(0x3000) & 3) == CLS_SPACE, "spaces");
    CHECK((cl_tok_uprop('!') & 3) == CLS_OTHER && (cl_tok_uprop(0x301) & 3) == CLS_OTHER, "other: ! and a combining accent");
    CHECK(cl_tok_uprop(0x301) & PROP_UNSTABLE, "a combining accent can change under NFC");

    cl_tok_bytemap_init();
    CHECK(cl_tok_byte_char[' '] == 0x120 && cl_tok_byte_char['\n'] == 0x10A && cl_tok_byte_char['a'] == 'a' &&
          cl_tok_byte_char[0xAD] == 0x143, "bytes_to_unicode: space -> U+0120, newline -> U+010A, 0xAD -> U+0143");
    int inverse = 1;
    for (int b = 0; b < 256; b++) inverse &= cl_tok_char_byte[cl_tok_byte_char[b]] == b;
    CHECK(inverse, "the byte map is a bijection");

    tstate *st = cl_tok_state_new();
    if (!st) return ctest_report();
    const char *text = "xe\xcc\x81y"; /* x, e + U+0301, y: NFC composes U+00E9 */
    size_t olen = 0;
    int r = cl_tok_nfc_piece(st, (const uint8_t *)text, 0, strlen(text), 1, &olen);
    CHECK(r == 1 && olen == 4 && memcmp(st->nbuf, "x\xc3\xa9y", 4) == 0, "NFC(x e U+0301 y) = x U+00E9 y");
    CHECK(r == 1 && st->astart[0] == 0 && st->aend[0] == 1 && st->astart[1] == 1 && st->aend[1] == 2 && st->astart[2] == 1 &&
          st->aend[2] == 2 && st->astart[3] == 4 && st->aend[3] == 5, "the composed character's bytes align to the original e");
    CHECK(cl_tok_nfc_piece(st, (const uint8_t *)"plain", 0, 5, 1, &olen) == 0, "text already in NFC is left alone");
    CHECK(cl_utf8_check("a\xed\xa0\x80", 4) == 1 && cl_utf8_check("\xc3\xa9", 2) == 2, "surrogates are invalid UTF-8");
    cl_tok_state_free(st);
    return ctest_report();
}
