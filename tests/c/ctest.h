/* ctest.h: the check macro and tally of the C tests that test one file each. Each test ends with
 * ctest_report(): "N passed, N failed" and the exit status. */
#ifndef CTEST_H
#define CTEST_H

#include <stdio.h>

static int ctest_pass, ctest_fail;

#define CHECK(cond, ...)                                \
    do {                                                \
        if (cond) ctest_pass++;                         \
        else {                                          \
            ctest_fail++;                               \
            printf("FAIL %s:%d: ", __FILE__, __LINE__); \
            printf(__VA_ARGS__);                        \
            printf("\n");                               \
        }                                               \
    } while (0)

static inline int ctest_report(void) {
    printf("%d passed, %d failed\n", ctest_pass, ctest_fail);
    return ctest_fail ? 1 : 0;
}

#endif
