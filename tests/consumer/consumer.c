/*
 * A program built against an installed flashattn, once through CMake's
 * find_package(flashattn) and once through pkg-config (.ci/run does both):
 * it checks the header/library version and one tiny forward against a
 * hand computation.
 */
#include <flashattn.h>

#include <math.h>
#include <stdio.h>

int main(void)
{
    if (fa_version() != FA_VERSION_NUMBER) {
        printf("header %d, library %u\n", FA_VERSION_NUMBER, fa_version());
        return 1;
    }
    /* one query, two keys, head_dim 2: scores 1*1 and 1*0, scaled by 1 */
    float q[2] = {1.0f, 0.0f}, k[4] = {1.0f, 0.0f, 0.0f, 1.0f}, v[4] = {2.0f, 0.0f, 0.0f, 4.0f};
    float out[2], lse[1];
    fa_attn attn;
    fa_attn_init(&attn);
    attn.batch = 1;
    attn.seqlen_q = 1;
    attn.seqlen_k = 2;
    attn.heads_q = attn.heads_kv = 1;
    attn.head_dim = 2;
    attn.softmax_scale = 1.0f;
    fa_context *ctx;
    if (fa_context_create(&ctx, FA_DEVICE_CPU, 0) != FA_SUCCESS)
        return 1;
    fa_tensor tq = fa_tensor_contiguous(q, 1, 1, 2), tk = fa_tensor_contiguous(k, 2, 1, 2),
              tv = fa_tensor_contiguous(v, 2, 1, 2), to = fa_tensor_contiguous(out, 1, 1, 2);
    fa_status st = fa_forward(ctx, &attn, &tq, &tk, &tv, &to, lse, NULL, 0);
    fa_context_destroy(ctx);
    double p0 = exp(1.0) / (exp(1.0) + 1.0);
    double want[2] = {2.0 * p0, 4.0 * (1.0 - p0)};
    if (st != FA_SUCCESS || fabs(out[0] - want[0]) > 1e-5 || fabs(out[1] - want[1]) > 1e-5 ||
        fabs(lse[0] - log(exp(1.0) + 1.0)) > 1e-5) {
        printf("consumer: %s; out (%g, %g), want (%g, %g)\n", fa_status_string(st), out[0],
               out[1], want[0], want[1]);
        return 1;
    }
    printf("consumer: flashattn %s ok\n", fa_version_string());
    return 0;
}
