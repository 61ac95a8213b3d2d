/* test_scan.c: the streaming top-k scanner (cl_scan.c) against brute force over the same
 * activations: psi(doc) = max over counted positions (skip_first skips a BOS), entries ranked by
 * activation descending, then doc id, then position; NaN never ranks; bad neurons are refused. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cl_scan.h"
#include "ctest.h"

enum { F = 4, K = 3 };

int main(void) {
    const int32_t layers[2] = {0, 1}, neurons[2] = {2, 0};
    cl_scanner *s = NULL;
    cl_error err = {CL_OK, ""};
    CHECK(cl_scanner_new(1, layers, (int32_t[]){F}, F, K, &s, &err) == CL_EINVAL && !s, "neuron %d outside d_mlp refused", F);
    CHECK(cl_scanner_new(2, layers, neurons, F, 0, &s, &err) == CL_EINVAL, "k = 0 refused");
    CHECK(cl_scanner_new(2, layers, neurons, F, K, &s, &err) == CL_OK && s, "new: %s", err.msg);
    if (!s) return ctest_report();
    /* two batches of layer-0 activations (packed rows, F features); column 2 is neuron 2 */
    const float b1[][F] = {{0, 0, 9, 0}, {0, 0, 1, 0}, {0, 0, 5, 0},   /* doc 10: pos 0 skipped, max 5 at 2 */
                           {0, 0, 5, 0}, {0, 0, 5, 0},                 /* doc 11: 5 at 1 (first of equal maxima) */
                           {0, 0, 7, 0}};                              /* doc 12: only the skipped position */
    const int32_t l1[3] = {3, 2, 1}, st1[3] = {0, 3, 5};
    const int64_t d1[3] = {10, 11, 12};
    s->skip_first = 1;
    s->batch_docs = d1;
    cl_scanner_observe(s, 0, &b1[0][0], F, 6, st1, l1, 3, &err);
    const float b2[][F] = {{0, 0, 0, 0}, {0, 0, NAN, 0},               /* doc 3: NaN never ranks */
                           {0, 0, 0, 0}, {0, 0, 6, 0}, {0, 0, 2, 0},   /* doc 4: 6 at 1 */
                           {0, 0, 0, 0}, {0, 0, 5, 0}};                /* doc 2: ties doc 10 and 11 at 5 */
    const int32_t l2[3] = {2, 3, 2}, st2[3] = {0, 2, 5};
    const int64_t d2[3] = {3, 4, 2};
    s->batch_docs = d2;
    cl_scanner_observe(s, 0, &b2[0][0], F, 7, st2, l2, 3, &err);
    cl_scanner_observe(s, 1, &b2[0][0], F, 7, st2, l2, 3, &err); /* neuron 0 of layer 1: all zeros */
    /* brute force: doc 4 (6), then the ties at 5 by doc id: 2, 10 (11 drops out with k = 3) */
    const float want_act[K] = {6, 5, 5};
    const int64_t want_doc[K] = {4, 2, 10};
    const int32_t want_pos[K] = {1, 1, 2};
    CHECK(s->count[0] == K, "neuron 0 holds k entries (%d)", s->count[0]);
    for (int i = 0; i < K; i++)
        CHECK(s->act[i] == want_act[i] && s->doc[i] == want_doc[i] && s->pos[i] == want_pos[i],
              "entry %d: (%g, doc %lld, pos %d), want (%g, %lld, %d)", i, s->act[i], (long long)s->doc[i], s->pos[i],
              want_act[i], (long long)want_doc[i], want_pos[i]);
    /* layer 1's neuron saw only the second batch: three zero maxima, doc 3's first counted position ranks by id */
    CHECK(s->count[1] == K && s->act[K] == 0 && s->doc[K] == 2 && s->doc[K + 1] == 3 && s->doc[K + 2] == 4,
          "neuron 1: docs %lld %lld %lld", (long long)s->doc[K], (long long)s->doc[K + 1], (long long)s->doc[K + 2]);
    cl_scanner_free(s);
    cl_scanner_free(NULL);
    return ctest_report();
}
