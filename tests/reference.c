#include "reference.h"

#include "testlib.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* One arithmetic result in the precision being modelled. */
static double fl(const ref_problem *p, double x)
{
    return p->emulate ? (double)(float)x : x;
}

/* A value stored in a low dtype (only when emulating). */
static double rd(const ref_problem *p, double x, fa_dtype dtype)
{
    return p->emulate ? round_to_dtype(x, dtype) : x;
}

void ref_set_lowp(ref_problem *p, fa_dtype dtype)
{
    p->lowp = p->prob_dtype = p->out_dtype = dtype;
    if (dtype_is_fp8(dtype)) {
        p->prob_dtype = FA_DTYPE_FP8_E4M3;
        p->out_dtype = FA_DTYPE_BF16;
    }
}

static double dot(const ref_problem *p, const double *a, const double *b,
                  int64_t n)
{
    double acc = 0.0;
    for (int64_t x = 0; x < n; ++x)
        acc = fl(p, acc + fl(p, a[x] * b[x]));
    return acc;
}

/* Σ |a_x b_x|: the magnitude of a dot product. */
static double abs_dot(const double *a, const double *b, int64_t n)
{
    double acc = 0.0;
    for (int64_t x = 0; x < n; ++x)
        acc += fabs(a[x] * b[x]);
    return acc;
}

int ref_visible(const ref_problem *p, int64_t b, int64_t h, int64_t i,
                int64_t j)
{
    int64_t shift = p->k_len[b] - p->q_len[b];
    if (p->window_left >= 0 && j < i + shift - p->window_left)
        return 0;
    if (p->window_right >= 0 && j > i + shift + p->window_right)
        return 0;
    if (p->block_mask) {
        int64_t idx = b * p->block_mask_stride_batch +
                      h * p->block_mask_stride_head +
                      (i / p->block_size_q) * p->blocks_k + j / p->block_size_k;
        if (!p->block_mask[idx])
            return 0;
    }
    return 1;
}

/* Per-row scratch: scores, tanh of the capped scores, probabilities, and
 * for the magnitudes: |s| bounds, the error amplification of each P
 * (1 + magnitude of s_j - lse: P = exp(s - lse) turns an absolute error of
 * the exponent into a relative error of P), and |dO|·|v_j|. */
typedef struct row_state {
    double *score, *score_mag, *tanh_capped, *prob, *prob_amp, *dprob_mag;
    unsigned char *visible;
    double max_score, sum; /* of the visible scores, exp(s - max) */
    double lse, lse_mag;
} row_state;

static void row_alloc(row_state *r, int64_t max_sk)
{
    r->score = xcalloc((size_t)max_sk, sizeof(double));
    r->score_mag = xcalloc((size_t)max_sk, sizeof(double));
    r->prob_amp = xcalloc((size_t)max_sk, sizeof(double));
    r->dprob_mag = xcalloc((size_t)max_sk, sizeof(double));
    r->tanh_capped = xcalloc((size_t)max_sk, sizeof(double));
    r->prob = xcalloc((size_t)max_sk, sizeof(double));
    r->visible = xcalloc((size_t)max_sk, 1);
}

static void row_free(row_state *r)
{
    free(r->score);
    free(r->score_mag);
    free(r->prob_amp);
    free(r->dprob_mag);
    free(r->tanh_capped);
    free(r->prob);
    free(r->visible);
}

static int64_t max_k_len(const ref_problem *p)
{
    int64_t m = 1;
    for (int64_t b = 0; b < p->batch; ++b)
        if (p->k_len[b] > m)
            m = p->k_len[b];
    return m;
}

/* exp(s_j - row max): P before its normalization. */
static double shifted_exp(const ref_problem *p, const row_state *r, int64_t j)
{
    return fl(p, exp(fl(p, r->score[j] - r->max_score)));
}

/* Scores and undropped softmax of query row i (sequence b, head h).
 * Returns 0 if no key is visible (r->lse = -inf). */
static int row_softmax(const ref_problem *p, const double *q, const double *k,
                       int64_t b, int64_t h, int64_t i, row_state *r)
{
    int64_t sq = p->q_len[b], sk = p->k_len[b], shift = sk - sq;
    int64_t hk = h / (p->heads_q / p->heads_kv);
    const double *qi = q + ((p->q_start[b] + i) * p->heads_q + h) * p->head_dim;
    double slope = p->alibi_slopes
                       ? p->alibi_slopes[b * p->alibi_stride_batch + h]
                       : 0.0;
    double max_score = -INFINITY;
    int any = 0;
    r->lse_mag = 0.0;
    for (int64_t j = 0; j < sk; ++j) {
        r->visible[j] = (unsigned char)ref_visible(p, b, h, i, j);
        if (!r->visible[j])
            continue;
        any = 1;
        const double *kj = k + ((p->k_start[b] + j) * p->heads_kv + hk) * p->head_dim;
        double s = fl(p, p->softmax_scale * dot(p, qi, kj, p->head_dim));
        /* tanh's slope is <= 1: the cap does not amplify errors of s */
        r->score_mag[j] = p->softmax_scale * abs_dot(qi, kj, p->head_dim);
        if (p->softcap > 0.0) {
            double t = fl(p, tanh(fl(p, s / p->softcap)));
            r->tanh_capped[j] = t;
            s = fl(p, p->softcap * t);
        }
        if (p->alibi_slopes) {
            double bias = slope * fabs((double)(i + shift - j));
            s = fl(p, s - fl(p, bias));
            r->score_mag[j] += bias;
        }
        r->score[j] = s;
        if (s > max_score)
            max_score = s;
        if (r->score_mag[j] > r->lse_mag)
            r->lse_mag = r->score_mag[j];
    }
    if (!any) {
        r->lse = -INFINITY;
        return 0;
    }
    r->max_score = max_score;
    double sum = 0.0;
    for (int64_t j = 0; j < sk; ++j)
        if (r->visible[j]) {
            r->prob[j] = shifted_exp(p, r, j);
            sum = fl(p, sum + r->prob[j]);
        }
    r->sum = sum;
    for (int64_t j = 0; j < sk; ++j)
        r->prob[j] = r->visible[j] ? fl(p, r->prob[j] / sum) : 0.0;
    r->lse = fl(p, max_score + log(sum));
    r->lse_mag += fabs(r->lse);
    for (int64_t j = 0; j < sk; ++j)
        r->prob_amp[j] = 1.0 + r->score_mag[j] + r->lse_mag;
    return 1;
}

/* The dropout factor of element (b, h, i, j): 0 or 1/(1-p) (1 when off). */
static double dropout_factor(const ref_problem *p, int64_t b, int64_t h,
                             int64_t i, int64_t j)
{
    if (p->dropout_p <= 0.0f)
        return 1.0;
    if (!fa_dropout_keep(p->dropout_seed, p->dropout_offset, p->heads_q, b, h,
                         i, j, p->dropout_p))
        return 0.0;
    return fl(p, 1.0 / (1.0 - (double)p->dropout_p));
}

void ref_forward(const ref_problem *p, const double *q, const double *k,
                 const double *v, double *out, double *lse, double *out_mag,
                 double *lse_mag)
{
    int64_t dv = p->head_dim_v;
    /* P as an FP8 kernel rounds it: exp(s - max), normalized after P·V */
    const int shifted_probs = p->emulate && dtype_is_fp8(p->prob_dtype);
    row_state r;
    row_alloc(&r, max_k_len(p));
    double *acc = xcalloc((size_t)dv, sizeof(double));
    for (int64_t b = 0; b < p->batch; ++b)
        for (int64_t h = 0; h < p->heads_q; ++h) {
            int64_t hk = h / (p->heads_q / p->heads_kv);
            for (int64_t i = 0; i < p->q_len[b]; ++i) {
                int64_t row = p->q_start[b] + i;
                double *o = out + (row * p->heads_q + h) * dv;
                double *o_mag = out_mag ? out_mag + (row * p->heads_q + h) * dv : NULL;
                memset(acc, 0, (size_t)dv * sizeof(double));
                if (o_mag)
                    memset(o_mag, 0, (size_t)dv * sizeof(double));
                if (row_softmax(p, q, k, b, h, i, &r)) {
                    for (int64_t j = 0; j < p->k_len[b]; ++j) {
                        if (!r.visible[j])
                            continue;
                        double prob = shifted_probs ? shifted_exp(p, &r, j) : r.prob[j];
                        double pj = fl(p, rd(p, prob, p->prob_dtype) *
                                              dropout_factor(p, b, h, i, j));
                        if (pj == 0.0)
                            continue;
                        const double *vj = v + ((p->k_start[b] + j) * p->heads_kv + hk) * dv;
                        for (int64_t x = 0; x < dv; ++x)
                            acc[x] = fl(p, acc[x] + fl(p, pj * vj[x]));
                        if (o_mag)
                            for (int64_t x = 0; x < dv; ++x)
                                o_mag[x] += fabs(pj * vj[x]) * r.prob_amp[j];
                    }
                    for (int64_t x = 0; shifted_probs && x < dv; ++x)
                        acc[x] = fl(p, acc[x] / r.sum);
                }
                for (int64_t x = 0; x < dv; ++x)
                    o[x] = rd(p, acc[x], p->out_dtype);
                lse[h * p->total_q + row] = r.lse;
                if (lse_mag)
                    lse_mag[h * p->total_q + row] = r.lse_mag;
            }
        }
    free(acc);
    row_free(&r);
}

void ref_backward(const ref_problem *p, const double *q, const double *k,
                  const double *v, const double *out, const double *dout,
                  double *dq, double *dk, double *dv, double *const *mag)
{
    int64_t d = p->head_dim, dvd = p->head_dim_v;
    memset(dq, 0, (size_t)(p->total_q * p->heads_q * d) * sizeof(double));
    memset(dk, 0, (size_t)(p->total_k * p->heads_kv * d) * sizeof(double));
    memset(dv, 0, (size_t)(p->total_k * p->heads_kv * dvd) * sizeof(double));
    if (mag) {
        memset(mag[0], 0, (size_t)(p->total_q * p->heads_q * d) * sizeof(double));
        memset(mag[1], 0, (size_t)(p->total_k * p->heads_kv * d) * sizeof(double));
        memset(mag[2], 0, (size_t)(p->total_k * p->heads_kv * dvd) * sizeof(double));
    }
    row_state r;
    row_alloc(&r, max_k_len(p));
    for (int64_t b = 0; b < p->batch; ++b)
        for (int64_t h = 0; h < p->heads_q; ++h) {
            int64_t hk = h / (p->heads_q / p->heads_kv);
            for (int64_t i = 0; i < p->q_len[b]; ++i) {
                if (!row_softmax(p, q, k, b, h, i, &r))
                    continue; /* no visible key: no gradient */
                int64_t row = p->q_start[b] + i;
                const double *qi = q + (row * p->heads_q + h) * d;
                const double *doi = dout + (row * p->heads_q + h) * dvd;
                double *dqi = dq + (row * p->heads_q + h) * d;
                /* D = rowsum(dO ∘ O): with dropout O already holds it. */
                double dsum = dot(p, doi, out + (row * p->heads_q + h) * dvd, dvd);
                /* D's magnitude: its own dot, plus dO against the error
                 * the forward's out may carry. */
                double dsum_mag = 0.0;
                if (mag) {
                    dsum_mag = abs_dot(doi, out + (row * p->heads_q + h) * dvd, dvd);
                    for (int64_t j = 0; j < p->k_len[b]; ++j) {
                        if (!r.visible[j])
                            continue;
                        const double *vj = v + ((p->k_start[b] + j) * p->heads_kv + hk) * dvd;
                        r.dprob_mag[j] = abs_dot(doi, vj, dvd);
                        dsum_mag += r.prob[j] * fabs(dropout_factor(p, b, h, i, j)) *
                                    r.prob_amp[j] * r.dprob_mag[j];
                    }
                }
                for (int64_t j = 0; j < p->k_len[b]; ++j) {
                    if (!r.visible[j])
                        continue;
                    int64_t krow = (p->k_start[b] + j) * p->heads_kv + hk;
                    const double *kj = k + krow * d, *vj = v + krow * dvd;
                    double z = dropout_factor(p, b, h, i, j);
                    double pz = rd(p, fl(p, r.prob[j] * z), p->lowp);
                    for (int64_t x = 0; x < dvd; ++x)
                        dv[krow * dvd + x] = fl(p, dv[krow * dvd + x] + fl(p, pz * doi[x]));
                    double dprob = fl(p, dot(p, doi, vj, dvd) * z);
                    double ds = fl(p, r.prob[j] * fl(p, dprob - dsum));
                    if (p->softcap > 0.0)
                        ds = fl(p, ds * fl(p, 1.0 - r.tanh_capped[j] * r.tanh_capped[j]));
                    ds = rd(p, ds, p->lowp);
                    for (int64_t x = 0; x < d; ++x) {
                        dqi[x] = fl(p, dqi[x] + fl(p, ds * kj[x]));
                        dk[krow * d + x] = fl(p, dk[krow * d + x] + fl(p, ds * qi[x]));
                    }
                    if (mag) {
                        double ds_mag = r.prob[j] * r.prob_amp[j] * (r.dprob_mag[j] * z + dsum_mag);
                        if (p->softcap > 0.0)
                            ds_mag *= 1.0 - r.tanh_capped[j] * r.tanh_capped[j];
                        double *dq_mag = mag[0] + (row * p->heads_q + h) * d;
                        for (int64_t x = 0; x < d; ++x) {
                            dq_mag[x] += p->softmax_scale * ds_mag * fabs(kj[x]);
                            mag[1][krow * d + x] += p->softmax_scale * ds_mag * fabs(qi[x]);
                        }
                        for (int64_t x = 0; x < dvd; ++x)
                            mag[2][krow * dvd + x] += fabs(pz * doi[x]) * r.prob_amp[j];
                    }
                }
            }
        }
    row_free(&r);
    /* The scale of s = scale·q·k, applied once per gradient as kernels do. */
    for (int64_t n = 0; n < p->total_q * p->heads_q * d; ++n)
        dq[n] = rd(p, fl(p, dq[n] * p->softmax_scale), p->lowp);
    for (int64_t n = 0; n < p->total_k * p->heads_kv * d; ++n)
        dk[n] = rd(p, fl(p, dk[n] * p->softmax_scale), p->lowp);
    for (int64_t n = 0; n < p->total_k * p->heads_kv * dvd; ++n)
        dv[n] = rd(p, dv[n], p->lowp);
}
