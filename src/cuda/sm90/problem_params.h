/*
 * Host side, both Hopper kernels: the problem fields their parameter blocks
 * share (same names in fa_sm90_params and fa_sm90_bwd::params), filled in one
 * place from the validated problem.
 */
#ifndef FA_SM90_PROBLEM_PARAMS_H
#define FA_SM90_PROBLEM_PARAMS_H

#include "fa_internal.h"

/* Sizes (the kernels index in int: sm90.cu declines larger problems), varlen
 * offsets, window (shorter than the sequence or -1 since validation, so
 * row + shift ± window stays far inside int: fa_visible_keys), softcap, and
 * the score scale in log2 units: softmax_scale, or 1 when softcap already
 * applied it. */
template <class Params> static void fa_sm90_fill_problem(Params &prm, const fa_problem *p)
{
    prm.lse = p->lse;
    prm.varlen = p->varlen;
    prm.cu_seqlens_q = p->cu_seqlens_q;
    prm.cu_seqlens_k = p->cu_seqlens_k;
    prm.batch = (int)p->batch;
    prm.seqlen_q = (int)p->seqlen_q;
    prm.seqlen_k = (int)p->seqlen_k;
    prm.heads_q = (int)p->heads_q;
    prm.heads_per_kv = (int)(p->heads_q / p->heads_kv);
    prm.head_dim = (int)p->head_dim;
    prm.total_q = p->total_q;
    prm.window_left = (int)p->window_left;
    prm.window_right = (int)p->window_right;
    prm.softcap = p->softcap;
    prm.softcap_input_scale = p->softcap > 0.0f ? p->softmax_scale / p->softcap : 0.0f;
    prm.score_scale_log2 = (p->softcap > 0.0f ? 1.0f : p->softmax_scale) * 1.4426950408889634f;
}

#endif
