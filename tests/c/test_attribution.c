/* test_attribution.c: the head -> neuron attribution observers (cl_attribution.c) on hand-made
 * weights and activations, against the definition computed naively in double:
 * score[b, l, h] = sum_e z[last, h, e] * sum_d W_O[l, h, e, d] * W_in[tl, d, tn], NaN above tl. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cl_attribution.h"
#include "cl_model.h"
#include "ctest.h"

enum { L = 3, H = 2, DH = 3, D = H * DH, M = 5, B = 3 };

static float frand(unsigned *s) {
    *s = *s * 1103515245u + 12345u;
    return (float)((*s >> 8) & 0xFFFF) / 32768.0f - 1.0f;
}

int main(void) {
    unsigned seed = 7;
    float W_O[L * H * DH * D], W_in[L * D * M];
    for (size_t i = 0; i < sizeof W_O / sizeof *W_O; i++) W_O[i] = frand(&seed);
    for (size_t i = 0; i < sizeof W_in / sizeof *W_in; i++) W_in[i] = frand(&seed);
    cl_model m;
    memset(&m, 0, sizeof m);
    m.cfg.n_layers = L; m.cfg.n_heads = H; m.cfg.d_head = DH; m.cfg.d_model = D; m.cfg.d_mlp = M;
    m.W_O = W_O;
    m.W_in = W_in;
    /* three prompts of 2, 1 and 4 tokens, packed; a hook_z row stride wider than d_model */
    const int32_t lengths[B] = {2, 1, 4}, start[B] = {0, 2, 3}, tl[B] = {1, 0, 2}, tn[B] = {4, 0, 2};
    const size_t N = 7, stride = D + 3;
    float z[7 * (D + 3)], post[7 * (M + 1)];
    for (size_t i = 0; i < sizeof z / sizeof *z; i++) z[i] = frand(&seed);
    for (size_t i = 0; i < sizeof post / sizeof *post; i++) post[i] = frand(&seed);
    float score[B * L * H], act[B];
    for (int i = 0; i < B * L * H; i++) score[i] = -1.0f;
    cl_attribution at = {&m, B, tl, tn, score, act};
    cl_error err = {CL_OK, ""};
    for (int l = 0; l < L; l++) {
        CHECK(cl_attribution_observe_z(&at, l, z, stride, N, start, lengths, B, &err) == CL_OK, "observe_z layer %d", l);
        CHECK(cl_attribution_observe_post(&at, l, post, M + 1, N, start, lengths, B, &err) == CL_OK, "observe_post layer %d", l);
    }
    for (int b = 0; b < B; b++) {
        const float *zl = z + (size_t)(start[b] + lengths[b] - 1) * stride;
        for (int l = 0; l < L; l++)
            for (int h = 0; h < H; h++) {
                float got = score[(b * L + l) * H + h];
                if (l > tl[b]) { CHECK(isnan(got), "prompt %d layer %d head %d above the target layer is NaN", b, l, h); continue; }
                double want = 0;
                for (int e = 0; e < DH; e++)
                    for (int d = 0; d < D; d++)
                        want += (double)zl[h * DH + e] * W_O[((l * H + h) * DH + e) * D + d] * W_in[(tl[b] * D + d) * M + tn[b]];
                CHECK(fabs(got - want) <= 1e-5 * (1 + fabs(want)), "prompt %d layer %d head %d: %g, want %g", b, l, h, got, want);
            }
        float want_act = post[(size_t)(start[b] + lengths[b] - 1) * (M + 1) + tn[b]];
        CHECK(act[b] == want_act, "prompt %d: the target's hook_post at the last token", b);
    }
    return ctest_report();
}
