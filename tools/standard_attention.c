/* See standard_attention.h. */
#include "standard_attention.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

/* The per-row loops below are the hot spots of the baseline; build them for
 * AVX-512 and AVX2 too (chosen at load time), so that the standard
 * attention is not handicapped by the baseline x86-64 ISA. */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define MULTI_ISA __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define MULTI_ISA
#endif

/* Row i of C = alpha · op(A) · op(B) + beta · C (see std_gemm_fn). */
MULTI_ISA static void gemm_row(int trans_a, int trans_b, int64_t i, int64_t n, int64_t k,
                               float alpha, const float *a, int64_t lda, const float *b,
                               int64_t ldb, float beta, float *c_row)
{
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
        return;
    }
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

void std_gemm_reference(int trans_a, int trans_b, int64_t m, int64_t n,
                        int64_t k, float alpha, const float *a, int64_t lda,
                        const float *b, int64_t ldb, float beta, float *c,
                        int64_t ldc)
{
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < m; ++i)
        gemm_row(trans_a, trans_b, i, n, k, alpha, a, lda, b, ldb, beta, c + i * ldc);
}

/* exp(x) for x <= 0, within ~2 ulp, in operations that vectorize (libm's
 * expf does not without -ffast-math): x = k·ln2 + r with |r| <= ln2/2 (ln2
 * split in two for an exact k·ln2), exp(r) by its degree-7 Taylor
 * polynomial (remainder < 1e-8 relative), 2^k from the exponent bits. */
static inline float exp_nonpositive(float x)
{
    if (x < -87.0f) /* exp underflows below the smallest normal float */
        return 0.0f;
    int k = (int)(x * 1.44269504f - 0.5f); /* round to nearest, x <= 0 */
    float r = x - (float)k * 0.693145751953125f - (float)k * 1.428606765330187e-6f;
    float p = 1.0f + r * (1.0f + r * (0.5f + r * (1.0f / 6 + r * (1.0f / 24 + r * (1.0f / 120 +
              r * (1.0f / 720 + r * (1.0f / 5040)))))));
    uint32_t bits = (uint32_t)(k + 127) << 23;
    float two_k;
    memcpy(&two_k, &bits, sizeof two_k);
    return p * two_k;
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
MULTI_ISA static float softmax_row(const shape *s, int64_t i, float *row)
{
    int64_t lo, hi;
    visible_range(s, i, &lo, &hi);
    if (hi <= lo) {
        memset(row, 0, sizeof(float) * (size_t)s->sk);
        return -INFINITY;
    }
    if (s->softcap > 0)
        for (int64_t j = lo; j < hi; ++j)
            row[j] = s->softcap * tanhf(row[j] / s->softcap);
    float row_max = -INFINITY;
#pragma omp simd reduction(max : row_max)
    for (int64_t j = lo; j < hi; ++j)
        row_max = row[j] > row_max ? row[j] : row_max;
    double sum = 0.0;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = lo; j < hi; ++j) {
        row[j] = exp_nonpositive(row[j] - row_max);
        sum += row[j];
    }
    float inverse_sum = (float)(1.0 / sum);
    memset(row, 0, sizeof(float) * (size_t)lo);
#pragma omp simd
    for (int64_t j = lo; j < hi; ++j)
        row[j] *= inverse_sum;
    memset(row + hi, 0, sizeof(float) * (size_t)(s->sk - hi));
    return (float)(row_max + log(sum));
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

/* ds_row: dP of the (dropped) probabilities in, dS out, for one row with
 * probabilities p_row, lse_i and D_i = rowsum(dO∘O); dropped_row (NULL
 * without dropout) is P∘mask/(1-p). */
MULTI_ISA static void softmax_backward_row(const shape *s, const float *p_row,
                                           const float *dropped_row, float lse_i,
                                           float rowsum_do_o, float *ds_row)
{
    float keep_scale = 1.0f / (1.0f - s->dropout_p);
#pragma omp simd
    for (int64_t j = 0; j < s->sk; ++j) {
        float dp = ds_row[j];
        /* dropped == 0 means dropped, or P == 0 where dS is 0 anyway */
        if (dropped_row)
            dp = dropped_row[j] != 0.0f ? dp * keep_scale : 0.0f;
        ds_row[j] = p_row[j] * (dp - rowsum_do_o);
    }
    if (s->softcap > 0) {
        /* s_capped = log P + lse; d tanh(x/cap)·cap = 1 - (s_capped/cap)^2 */
        for (int64_t j = 0; j < s->sk; ++j) {
            if (p_row[j] > 0) {
                float t = (logf(p_row[j]) + lse_i) / s->softcap;
                ds_row[j] *= 1.0f - t * t;
            }
        }
    }
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
                float *dropped_row = s.dropout_p > 0 ? dropped + i * s.sk : NULL;
                if (dropped_row)
                    dropout_row(attn, &s, b, h, i, p_bh + i * s.sk, dropped_row);
                softmax_backward_row(&s, p_bh + i * s.sk, dropped_row, lse_bh[i],
                                     (float)rowsum_do_o, dprobs + i * s.sk);
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
