/* See standard_attention.h. */
#include "standard_attention.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

void std_gemm_reference(int trans_a, int trans_b, int64_t m, int64_t n,
                        int64_t k, float alpha, const float *a, int64_t lda,
                        const float *b, int64_t ldb, float beta, float *c,
                        int64_t ldc)
{
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < m; ++i) {
        float *c_row = c + i * ldc;
        if (trans_b) {
            /* Rows of B are columns of op(B): a dot product per element. */
            for (int64_t j = 0; j < n; ++j) {
                const float *b_row = b + j * ldb;
                float acc = 0.0f;
                if (trans_a) {
                    for (int64_t p = 0; p < k; ++p)
                        acc += a[p * lda + i] * b_row[p];
                } else {
                    const float *a_row = a + i * lda;
#pragma omp simd reduction(+ : acc)
                    for (int64_t p = 0; p < k; ++p)
                        acc += a_row[p] * b_row[p];
                }
                c_row[j] = alpha * acc + (beta == 0.0f ? 0.0f : beta * c_row[j]);
            }
        } else {
            /* Rows of B are rows of op(B): accumulate scaled rows. */
            for (int64_t j = 0; j < n; ++j)
                c_row[j] = beta == 0.0f ? 0.0f : beta * c_row[j];
            for (int64_t p = 0; p < k; ++p) {
                float a_ip = alpha * (trans_a ? a[p * lda + i] : a[i * lda + p]);
                if (a_ip == 0.0f)
                    continue; /* masked probabilities: finite inputs only */
                const float *b_row = b + p * ldb;
#pragma omp simd
                for (int64_t j = 0; j < n; ++j)
                    c_row[j] += a_ip * b_row[j];
            }
        }
    }
}

/* ---------------------------------------------------------------------- */

typedef struct shape {
    int64_t b, sq, sk, hq, hkv, d, dv, group;
    float scale, softcap, dropout_p;
    int64_t window_left, window_right; /* -1 = unbounded; right 0 if causal */
} shape;

static shape shape_of(const fa_attn *attn)
{
    shape s;
    s.b = attn->batch;
    s.sq = attn->seqlen_q;
    s.sk = attn->seqlen_k;
    s.hq = attn->heads_q;
    s.hkv = attn->heads_kv;
    s.d = attn->head_dim;
    s.dv = attn->head_dim_v > 0 ? attn->head_dim_v : attn->head_dim;
    s.group = s.hq / s.hkv;
    s.scale = attn->softmax_scale > 0 ? attn->softmax_scale : 1.0f / sqrtf((float)s.d);
    s.softcap = attn->softcap;
    s.dropout_p = attn->dropout_p;
    s.window_left = attn->window_left;
    s.window_right = attn->causal ? 0 : attn->window_right;
    return s;
}

static int supported(const fa_attn *attn)
{
    return attn->cu_seqlens_q == NULL && attn->cu_seqlens_k == NULL &&
           attn->alibi_slopes == NULL && attn->block_mask == NULL &&
           attn->heads_kv > 0 && attn->heads_q % attn->heads_kv == 0;
}

size_t std_probs_bytes(const fa_attn *attn)
{
    return sizeof(float) * (size_t)attn->batch * (size_t)attn->heads_q *
           (size_t)attn->seqlen_q * (size_t)attn->seqlen_k;
}

size_t std_scratch_bytes(const fa_attn *attn, int backward)
{
    size_t matrix = sizeof(float) * (size_t)attn->seqlen_q * (size_t)attn->seqlen_k;
    int buffers = (backward ? 1 : 0) + (attn->dropout_p > 0 ? 1 : 0);
    return matrix * (size_t)buffers;
}

/* Visible keys [*lo, *hi) of row i (bottom-right aligned window). */
static void visible_range(const shape *s, int64_t i, int64_t *lo, int64_t *hi)
{
    int64_t shift = s->sk - s->sq;
    int64_t l = s->window_left < 0 ? 0 : i + shift - s->window_left;
    int64_t h = s->window_right < 0 ? s->sk : i + shift + s->window_right + 1;
    *lo = l < 0 ? 0 : l;
    *hi = h > s->sk ? s->sk : h;
}

/* row (sk scores of query i) -> probabilities in place; returns the lse. */
static float softmax_row(const shape *s, int64_t i, float *row)
{
    int64_t lo, hi;
    visible_range(s, i, &lo, &hi);
    if (hi <= lo) {
        memset(row, 0, sizeof(float) * (size_t)s->sk);
        return -INFINITY;
    }
    double row_max = -INFINITY;
    for (int64_t j = lo; j < hi; ++j) {
        if (s->softcap > 0)
            row[j] = s->softcap * tanhf(row[j] / s->softcap);
        if (row[j] > row_max)
            row_max = row[j];
    }
    double sum = 0.0;
    for (int64_t j = lo; j < hi; ++j)
        sum += exp((double)row[j] - row_max);
    double lse = row_max + log(sum);
    for (int64_t j = 0; j < s->sk; ++j)
        row[j] = (j >= lo && j < hi) ? (float)exp((double)row[j] - lse) : 0.0f;
    return (float)lse;
}

/* The dropped-and-rescaled copy of row i of one head's probabilities. */
static void dropout_row(const fa_attn *attn, const shape *s, int64_t b, int64_t h,
                        int64_t i, const float *probs_row, float *dropped_row)
{
    float keep_scale = 1.0f / (1.0f - s->dropout_p);
    for (int64_t j = 0; j < s->sk; ++j)
        dropped_row[j] = fa_dropout_keep(attn->dropout_seed, attn->dropout_offset,
                                         s->hq, b, h, i, j, s->dropout_p)
                             ? probs_row[j] * keep_scale
                             : 0.0f;
}

int std_forward(const fa_attn *attn, std_gemm_fn gemm, const float *q,
                const float *k, const float *v, float *out, float *lse,
                float *probs, float *scratch)
{
    if (!supported(attn))
        return 1;
    shape s = shape_of(attn);
    int64_t ld_q = s.hq * s.d, ld_k = s.hkv * s.d, ld_v = s.hkv * s.dv, ld_o = s.hq * s.dv;
    for (int64_t b = 0; b < s.b; ++b) {
        for (int64_t h = 0; h < s.hq; ++h) {
            int64_t kvh = h / s.group;
            const float *q_bh = q + b * s.sq * ld_q + h * s.d;
            const float *k_bh = k + b * s.sk * ld_k + kvh * s.d;
            const float *v_bh = v + b * s.sk * ld_v + kvh * s.dv;
            float *o_bh = out + b * s.sq * ld_o + h * s.dv;
            float *p_bh = probs + (b * s.hq + h) * s.sq * s.sk;
            float *lse_bh = lse + (b * s.hq + h) * s.sq;

            gemm(0, 1, s.sq, s.sk, s.d, s.scale, q_bh, ld_q, k_bh, ld_k, 0.0f, p_bh, s.sk);
#pragma omp parallel for schedule(static)
            for (int64_t i = 0; i < s.sq; ++i) {
                lse_bh[i] = softmax_row(&s, i, p_bh + i * s.sk);
                if (s.dropout_p > 0)
                    dropout_row(attn, &s, b, h, i, p_bh + i * s.sk, scratch + i * s.sk);
            }
            const float *p_used = s.dropout_p > 0 ? scratch : p_bh;
            gemm(0, 0, s.sq, s.dv, s.sk, 1.0f, p_used, s.sk, v_bh, ld_v, 0.0f, o_bh, ld_o);
        }
    }
    return 0;
}

int std_backward(const fa_attn *attn, std_gemm_fn gemm, const float *q,
                 const float *k, const float *v, const float *out,
                 const float *lse, const float *probs, const float *dout,
                 float *dq, float *dk, float *dv, float *scratch)
{
    if (!supported(attn))
        return 1;
    shape s = shape_of(attn);
    int64_t ld_q = s.hq * s.d, ld_k = s.hkv * s.d, ld_v = s.hkv * s.dv, ld_o = s.hq * s.dv;
    /* dK, dV accumulate over the query heads of a group. */
    memset(dk, 0, sizeof(float) * (size_t)(s.b * s.sk * ld_k));
    memset(dv, 0, sizeof(float) * (size_t)(s.b * s.sk * ld_v));
    float *dprobs = scratch;                     /* dP, then dS: (sq, sk) */
    float *dropped = scratch + s.sq * s.sk;      /* with dropout: P∘mask/(1-p) */
    float keep_scale = s.dropout_p > 0 ? 1.0f / (1.0f - s.dropout_p) : 1.0f;
    for (int64_t b = 0; b < s.b; ++b) {
        for (int64_t h = 0; h < s.hq; ++h) {
            int64_t kvh = h / s.group;
            const float *q_bh = q + b * s.sq * ld_q + h * s.d;
            const float *k_bh = k + b * s.sk * ld_k + kvh * s.d;
            const float *v_bh = v + b * s.sk * ld_v + kvh * s.dv;
            const float *o_bh = out + b * s.sq * ld_o + h * s.dv;
            const float *do_bh = dout + b * s.sq * ld_o + h * s.dv;
            const float *p_bh = probs + (b * s.hq + h) * s.sq * s.sk;
            const float *lse_bh = lse + (b * s.hq + h) * s.sq;
            float *dq_bh = dq + b * s.sq * ld_q + h * s.d;
            float *dk_bh = dk + b * s.sk * ld_k + kvh * s.d;
            float *dv_bh = dv + b * s.sk * ld_v + kvh * s.dv;

            /* dP of the dropped probabilities: dO Vᵀ. */
            gemm(0, 1, s.sq, s.sk, s.dv, 1.0f, do_bh, ld_o, v_bh, ld_v, 0.0f, dprobs, s.sk);
#pragma omp parallel for schedule(static)
            for (int64_t i = 0; i < s.sq; ++i) {
                double rowsum_do_o = 0.0; /* D_i: O already includes dropout */
                for (int64_t c = 0; c < s.dv; ++c)
                    rowsum_do_o += (double)do_bh[i * ld_o + c] * o_bh[i * ld_o + c];
                const float *p_row = p_bh + i * s.sk;
                float *ds_row = dprobs + i * s.sk;
                if (s.dropout_p > 0)
                    dropout_row(attn, &s, b, h, i, p_row, dropped + i * s.sk);
                for (int64_t j = 0; j < s.sk; ++j) {
                    double dp = ds_row[j];
                    /* dropped == 0 means dropped, or P == 0 where dS is 0 anyway */
                    if (s.dropout_p > 0)
                        dp = dropped[i * s.sk + j] != 0.0f ? dp * keep_scale : 0.0;
                    double ds = p_row[j] * (dp - rowsum_do_o);
                    if (s.softcap > 0 && p_row[j] > 0) {
                        /* s_capped = log P + lse; d tanh = 1 - (s_capped/cap)^2 */
                        double t = (log((double)p_row[j]) + lse_bh[i]) / s.softcap;
                        ds *= 1.0 - t * t;
                    }
                    ds_row[j] = (float)ds;
                }
            }
            const float *p_used = s.dropout_p > 0 ? dropped : p_bh;
            gemm(1, 0, s.sk, s.dv, s.sq, 1.0f, p_used, s.sk, do_bh, ld_o, 1.0f, dv_bh, ld_v);
            gemm(0, 0, s.sq, s.d, s.sk, s.scale, dprobs, s.sk, k_bh, ld_k, 0.0f, dq_bh, ld_q);
            gemm(1, 0, s.sk, s.d, s.sq, s.scale, dprobs, s.sk, q_bh, ld_q, 1.0f, dk_bh, ld_k);
        }
    }
    return 0;
}

/* ---------------------------------------------------------------------- */
/* As a measured job                                                       */

typedef struct std_state {
    std_job_args *args;
    int convert;               /* dtype is not f32 */
    float *probs, *scratch;
    /* fp32 tensors the algorithm runs on: args' own when f32, else copies */
    float *q, *k, *v, *dout, *out, *dq, *dk, *dv;
    float *copies;             /* one allocation for the copies */
} std_state;

static void std_state_free(std_state *s)
{
    free(s->probs);
    free(s->scratch);
    free(s->copies);
    free(s);
}

static int std_open(void *arg, void **state, char *message, size_t len)
{
    std_job_args *args = arg;
    const fa_attn *a = args->attn;
#ifdef _OPENMP
    if (args->threads > 0)
        omp_set_num_threads(args->threads);
#endif
    if (args->set_threads)
        args->set_threads(args->threads);
    std_state *s = calloc(1, sizeof *s);
    if (!s)
        return snprintf(message, len, "standard attention: out of memory"), 1;
    s->args = args;
    s->convert = a->dtype != FA_DTYPE_F32;
    size_t scratch = std_scratch_bytes(a, 1);
    s->probs = malloc(std_probs_bytes(a));
    s->scratch = malloc(scratch > 0 ? scratch : 1);
    const h_tensors *t = &args->tensors;
    int64_t n[8] = {h_numel_q(a), h_numel_k(a), h_numel_v(a), h_numel_out(a),
                    h_numel_out(a), h_numel_q(a), h_numel_k(a), h_numel_v(a)};
    float **mine[8] = {&s->q, &s->k, &s->v, &s->dout, &s->out, &s->dq, &s->dk, &s->dv};
    void *given[8] = {t->q, t->k, t->v, t->dout, t->out, t->dq, t->dk, t->dv};
    int64_t total = 0;
    for (int i = 0; i < 8; ++i)
        total += n[i];
    if (s->convert)
        s->copies = malloc(sizeof(float) * (size_t)total);
    if (!s->probs || !s->scratch || (s->convert && !s->copies)) {
        std_state_free(s);
        return snprintf(message, len, "standard attention: cannot allocate P (%zu bytes)",
                        std_probs_bytes(a)), 1;
    }
    float *cursor = s->copies;
    for (int i = 0; i < 8; ++i) {
        *mine[i] = s->convert ? cursor : given[i];
        cursor += s->convert ? n[i] : 0;
    }
    *state = s;
    return 0;
}

static int std_run(void *state, int phase, char *message, size_t len)
{
    std_state *s = state;
    const fa_attn *a = s->args->attn;
    const h_tensors *t = &s->args->tensors;
    fa_dtype dt = a->dtype;
    int rc;
    if (phase == 0) {
        if (s->convert) {
            h_load_all(s->q, t->q, dt, h_numel_q(a));
            h_load_all(s->k, t->k, dt, h_numel_k(a));
            h_load_all(s->v, t->v, dt, h_numel_v(a));
        }
        rc = std_forward(a, s->args->gemm, s->q, s->k, s->v, s->out, t->lse, s->probs,
                         s->scratch);
        if (s->convert)
            h_store_all(t->out, dt, s->out, h_numel_out(a));
    } else {
        if (s->convert)
            h_load_all(s->dout, t->dout, dt, h_numel_out(a));
        rc = std_backward(a, s->args->gemm, s->q, s->k, s->v, s->out, t->lse, s->probs,
                          s->dout, s->dq, s->dk, s->dv, s->scratch);
        if (s->convert) {
            h_store_all(t->dq, dt, s->dq, h_numel_q(a));
            h_store_all(t->dk, dt, s->dk, h_numel_k(a));
            h_store_all(t->dv, dt, s->dv, h_numel_v(a));
        }
    }
    if (rc)
        snprintf(message, len, "standard attention: unsupported problem (varlen, ALiBi or "
                               "block mask)");
    return rc;
}

static int std_close(void *state, char *message, size_t len)
{
    std_state_free(state);
    return 0;
}

h_job std_job(std_job_args *args, int warmup, int reps)
{
    h_job job = {args, std_open, std_run, std_close, 2, warmup, reps};
    return job;
}
