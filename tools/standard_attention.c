/* See standard_attention.h. */
#include "standard_attention.h"

#include <math.h>
#include <string.h>

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
