/*
 * test_gradcheck: gradients against central finite differences on tiny f32
 * problems with softcap, ALiBi and a sliding window (and one with dropout,
 * whose mask is a fixed function of the position, so the loss stays
 * differentiable). The loss is L = sum(out ∘ W), so dout = W.
 *
 * Three comparisons per input tensor:
 *  1. the float64 reference's backward vs finite differences of the float64
 *     reference's forward (h = 1e-6): validates the reference the grid uses;
 *  2. fa_backward vs those float64 differences: the library's gradient is
 *     the gradient of the exact function;
 *  3. fa_backward vs finite differences of fa_forward itself (h = 1e-2 on
 *     the f32 inputs): the two library passes are consistent.
 */
#include "reference.h"
#include "testlib.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct grad_config {
    const char *name;
    int64_t batch, sq, sk, hq, hkv, d, dv;
    float softcap, scale;
    int alibi_per_batch;
    int64_t window_left, window_right;
    int causal;
    float dropout_p;
} grad_config;

static const grad_config CONFIGS[] = {
    {"softcap+alibi+window", 2, 5, 7, 2, 1, 4, 3, 2.0f, 0.8f, 0, 3, 1, 0, 0.0f},
    {"gqa+causal+alibi_bh+softcap", 2, 6, 4, 4, 2, 5, 6, 1.5f, 0.0f, 1, 2, -1, 1, 0.0f},
    {"dropout+softcap+alibi+window", 1, 7, 9, 2, 2, 3, 4, 3.0f, 1.1f, 0, 4, 2, 0, 0.3f},
};

typedef struct problem {
    const grad_config *cfg;
    fa_context *ctx;
    fa_attn attn;
    ref_problem ref;
    int64_t q_start[4], q_len[4], k_start[4], k_len[4];
    float slopes[16];
    int64_t n[3];            /* elements of q, k, v */
    float *in[3];            /* q, k, v (f32, contiguous) */
    float *weight, *out, *lse;
    int64_t n_out;
} problem;

static void setup(problem *p, const grad_config *cfg, fa_context *ctx, test_rng *r)
{
    memset(p, 0, sizeof *p);
    p->cfg = cfg;
    p->ctx = ctx;
    fa_attn_init(&p->attn);
    fa_attn *a = &p->attn;
    a->batch = cfg->batch;
    a->seqlen_q = cfg->sq;
    a->seqlen_k = cfg->sk;
    a->heads_q = cfg->hq;
    a->heads_kv = cfg->hkv;
    a->head_dim = cfg->d;
    a->head_dim_v = cfg->dv;
    a->softcap = cfg->softcap;
    a->softmax_scale = cfg->scale;
    a->window_left = cfg->window_left;
    a->window_right = cfg->window_right;
    a->causal = cfg->causal;
    a->dropout_p = cfg->dropout_p;
    a->dropout_seed = 1234567;
    a->dropout_offset = 42;
    for (int64_t s = 0; s < cfg->batch * cfg->hq; ++s)
        p->slopes[s] = (float)(0.1 + 0.8 * rng_uniform(r));
    a->alibi_slopes = p->slopes;
    a->alibi_stride_batch = cfg->alibi_per_batch ? cfg->hq : 0;

    for (int64_t b = 0; b < cfg->batch; ++b) {
        p->q_start[b] = b * cfg->sq;
        p->q_len[b] = cfg->sq;
        p->k_start[b] = b * cfg->sk;
        p->k_len[b] = cfg->sk;
    }
    ref_problem *rp = &p->ref;
    rp->batch = cfg->batch;
    rp->heads_q = cfg->hq;
    rp->heads_kv = cfg->hkv;
    rp->head_dim = cfg->d;
    rp->head_dim_v = cfg->dv;
    rp->q_start = p->q_start;
    rp->q_len = p->q_len;
    rp->k_start = p->k_start;
    rp->k_len = p->k_len;
    rp->total_q = cfg->batch * cfg->sq;
    rp->total_k = cfg->batch * cfg->sk;
    rp->softmax_scale = cfg->scale > 0 ? cfg->scale : 1.0 / sqrt((double)cfg->d);
    rp->window_left = cfg->window_left;
    rp->window_right = cfg->causal ? 0 : cfg->window_right;
    rp->softcap = cfg->softcap;
    rp->alibi_slopes = p->slopes;
    rp->alibi_stride_batch = a->alibi_stride_batch;
    rp->dropout_p = cfg->dropout_p;
    rp->dropout_seed = a->dropout_seed;
    rp->dropout_offset = a->dropout_offset;

    p->n[0] = rp->total_q * cfg->hq * cfg->d;
    p->n[1] = rp->total_k * cfg->hkv * cfg->d;
    p->n[2] = rp->total_k * cfg->hkv * cfg->dv;
    p->n_out = rp->total_q * cfg->hq * cfg->dv;
    for (int t = 0; t < 3; ++t) {
        p->in[t] = xcalloc((size_t)p->n[t], sizeof(float));
        for (int64_t e = 0; e < p->n[t]; ++e)
            p->in[t][e] = (float)rng_normal(r);
    }
    p->weight = xcalloc((size_t)p->n_out, sizeof(float));
    for (int64_t e = 0; e < p->n_out; ++e)
        p->weight[e] = (float)rng_normal(r);
    p->out = xcalloc((size_t)p->n_out, sizeof(float));
    p->lse = xcalloc((size_t)(rp->total_q * cfg->hq), sizeof(float));
}

static void teardown(problem *p)
{
    for (int t = 0; t < 3; ++t)
        free(p->in[t]);
    free(p->weight);
    free(p->out);
    free(p->lse);
}

static void tensors(const problem *p, fa_tensor *q, fa_tensor *k, fa_tensor *v)
{
    const grad_config *c = p->cfg;
    *q = fa_tensor_contiguous(p->in[0], c->sq, c->hq, c->d);
    *k = fa_tensor_contiguous(p->in[1], c->sk, c->hkv, c->d);
    *v = fa_tensor_contiguous(p->in[2], c->sk, c->hkv, c->dv);
}

/* L = sum(out ∘ W) of fa_forward on the current inputs. */
static double library_loss(problem *p, int *ok)
{
    fa_tensor q, k, v;
    tensors(p, &q, &k, &v);
    fa_tensor out = fa_tensor_contiguous(p->out, p->cfg->sq, p->cfg->hq, p->cfg->dv);
    if (fa_forward(p->ctx, &p->attn, &q, &k, &v, &out, p->lse, NULL, 0) != FA_SUCCESS) {
        printf("FAIL fa_forward: %s\n", fa_last_error());
        *ok = 0;
        return 0.0;
    }
    double loss = 0.0;
    for (int64_t e = 0; e < p->n_out; ++e)
        loss += (double)p->out[e] * p->weight[e];
    return loss;
}

/* L of the float64 reference on double inputs. */
static double reference_loss(const problem *p, double *const in[3])
{
    double *out = xcalloc((size_t)p->n_out, sizeof(double));
    double *lse = xcalloc((size_t)(p->ref.total_q * p->cfg->hq), sizeof(double));
    ref_forward(&p->ref, in[0], in[1], in[2], out, lse, NULL, NULL);
    double loss = 0.0;
    for (int64_t e = 0; e < p->n_out; ++e)
        loss += out[e] * p->weight[e];
    free(out);
    free(lse);
    return loss;
}

/* max |a - b| against tol_rel * (1 + max |b|); prints the worst element. */
static int agree(const char *what, const char *tensor, int64_t n, const double *a,
                 const double *b, double tol_rel)
{
    double worst = 0.0, scale = 0.0;
    int64_t at = 0;
    for (int64_t e = 0; e < n; ++e) {
        double err = fabs(a[e] - b[e]);
        if (err > worst || isnan(err)) {
            worst = err;
            at = e;
        }
        if (fabs(b[e]) > scale)
            scale = fabs(b[e]);
    }
    double tol = tol_rel * (1.0 + scale);
    int ok = worst <= tol;
    printf("  %-4s %-2s %-36s max err %.3g (tol %.3g)%s\n", ok ? "ok" : "FAIL", tensor, what,
           worst, tol, ok ? "" : "");
    if (!ok)
        printf("       at element %lld: %.9g vs %.9g\n", (long long)at, a[at], b[at]);
    return ok;
}

static int run_config(const grad_config *cfg, fa_context *ctx, test_rng *r)
{
    problem p;
    setup(&p, cfg, ctx, r);
    int ok = 1;
    printf("%s: b%lld sq%lld sk%lld h%lld/%lld d%lld dv%lld\n", cfg->name,
           (long long)cfg->batch, (long long)cfg->sq, (long long)cfg->sk, (long long)cfg->hq,
           (long long)cfg->hkv, (long long)cfg->d, (long long)cfg->dv);

    /* fa_backward with dout = W */
    library_loss(&p, &ok);
    float *grad_lib_f[3];
    for (int t = 0; t < 3; ++t)
        grad_lib_f[t] = xcalloc((size_t)p.n[t], sizeof(float));
    fa_tensor q, k, v, out, dout, dq, dk, dv;
    tensors(&p, &q, &k, &v);
    out = fa_tensor_contiguous(p.out, cfg->sq, cfg->hq, cfg->dv);
    dout = fa_tensor_contiguous(p.weight, cfg->sq, cfg->hq, cfg->dv);
    dq = fa_tensor_contiguous(grad_lib_f[0], cfg->sq, cfg->hq, cfg->d);
    dk = fa_tensor_contiguous(grad_lib_f[1], cfg->sk, cfg->hkv, cfg->d);
    dv = fa_tensor_contiguous(grad_lib_f[2], cfg->sk, cfg->hkv, cfg->dv);
    if (fa_backward(ctx, &p.attn, &q, &k, &v, &out, p.lse, &dout, &dq, &dk, &dv, NULL, 0) !=
        FA_SUCCESS) {
        printf("FAIL fa_backward: %s\n", fa_last_error());
        ok = 0;
    }

    /* the float64 reference's gradient */
    double *in_d[3], *grad_ref[3], *grad_lib[3], *fd_ref[3], *fd_lib[3];
    for (int t = 0; t < 3; ++t) {
        in_d[t] = xcalloc((size_t)p.n[t], sizeof(double));
        grad_ref[t] = xcalloc((size_t)p.n[t], sizeof(double));
        grad_lib[t] = xcalloc((size_t)p.n[t], sizeof(double));
        fd_ref[t] = xcalloc((size_t)p.n[t], sizeof(double));
        fd_lib[t] = xcalloc((size_t)p.n[t], sizeof(double));
        for (int64_t e = 0; e < p.n[t]; ++e) {
            in_d[t][e] = p.in[t][e];
            grad_lib[t][e] = grad_lib_f[t][e];
        }
    }
    double *out_ref = xcalloc((size_t)p.n_out, sizeof(double));
    double *lse_ref = xcalloc((size_t)(p.ref.total_q * cfg->hq), sizeof(double));
    double *w = xcalloc((size_t)p.n_out, sizeof(double));
    for (int64_t e = 0; e < p.n_out; ++e)
        w[e] = p.weight[e];
    ref_forward(&p.ref, in_d[0], in_d[1], in_d[2], out_ref, lse_ref, NULL, NULL);
    ref_backward(&p.ref, in_d[0], in_d[1], in_d[2], out_ref, w, grad_ref[0], grad_ref[1],
                 grad_ref[2], NULL);

    /* central differences */
    const double h_ref = 1e-6, h_lib = 1e-2;
    for (int t = 0; t < 3; ++t)
        for (int64_t e = 0; e < p.n[t]; ++e) {
            double x = in_d[t][e];
            in_d[t][e] = x + h_ref;
            double up = reference_loss(&p, in_d);
            in_d[t][e] = x - h_ref;
            double down = reference_loss(&p, in_d);
            in_d[t][e] = x;
            fd_ref[t][e] = (up - down) / (2.0 * h_ref);

            float xf = p.in[t][e];
            float xu = (float)(x + h_lib), xd = (float)(x - h_lib);
            p.in[t][e] = xu;
            up = library_loss(&p, &ok);
            p.in[t][e] = xd;
            down = library_loss(&p, &ok);
            p.in[t][e] = xf;
            fd_lib[t][e] = (up - down) / ((double)xu - (double)xd);
        }

    static const char *const names[3] = {"dq", "dk", "dv"};
    for (int t = 0; t < 3; ++t) {
        ok &= agree("float64 reference vs its differences", names[t], p.n[t], grad_ref[t],
                    fd_ref[t], 1e-6);
        ok &= agree("fa_backward vs float64 differences", names[t], p.n[t], grad_lib[t],
                    fd_ref[t], 2e-5);
        ok &= agree("fa_backward vs fa_forward differences", names[t], p.n[t], grad_lib[t],
                    fd_lib[t], 1e-3);
    }
    for (int t = 0; t < 3; ++t) {
        free(in_d[t]);
        free(grad_ref[t]);
        free(grad_lib[t]);
        free(fd_ref[t]);
        free(fd_lib[t]);
        free(grad_lib_f[t]);
    }
    free(out_ref);
    free(lse_ref);
    free(w);
    teardown(&p);
    return ok;
}

int main(void)
{
    fa_context *ctx = NULL;
    if (fa_context_create(&ctx, FA_DEVICE_CPU, 0) != FA_SUCCESS) {
        printf("FAIL: CPU context: %s\n", fa_last_error());
        return 1;
    }
    test_rng r;
    rng_seed(&r, 2718);
    int failed = 0;
    for (size_t n = 0; n < sizeof CONFIGS / sizeof CONFIGS[0]; ++n)
        failed += !run_config(&CONFIGS[n], ctx, &r);
    fa_context_destroy(ctx);
    printf("test_gradcheck: %d of %zu configurations failed\n", failed,
           sizeof CONFIGS / sizeof CONFIGS[0]);
    return failed ? 1 : 0;
}
