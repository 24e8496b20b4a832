/*
 * Host side of the Hopper kernels' TMA: which tensors a tensor map can
 * describe, and the maps themselves. A (seq, head, dim) tensor is seen as the
 * rank-4 tensor (dim, rows, heads, batches), innermost first; packed (varlen)
 * tensors are one batch of total rows.
 */
#ifndef FA_SM90_TENSOR_MAPS_H
#define FA_SM90_TENSOR_MAPS_H

#include "fa_internal.h"

#include <cuda.h>

/* Rows of q (is_q: also out, dout, dq) or of k / v (also dk, dv) as TMA sees
 * them: per batch, or all packed ones. */
int64_t fa_sm90_rows_of(const fa_problem *p, int is_q);

/* FA_SUCCESS if t (named `name` in the message) can be read through a tensor
 * map: base 16-byte aligned, strides positive multiples of 16 bytes. */
fa_status fa_sm90_check_tma_tensor(const fa_problem *p, const fa_tensor *t, const char *name, int is_q);

/* The tensor map of t: boxes of 128 bytes of columns (64 16-bit, 128
 * 8-bit) x box_rows rows of one head, 128-byte swizzled, zero-filled
 * outside the tensor. */
fa_status fa_sm90_encode_map(CUtensorMap *map, const fa_problem *p, const fa_tensor *t, int is_q, int box_rows,
                             const char *name);

/* The FP8 forward's Vᵀ in the workspace: (keys, head_dim, heads_kv, 1)
 * bytes, innermost first, keys a multiple of 128; boxes of 128 keys x
 * head_dim rows. */
fa_status fa_sm90_encode_vt_map(CUtensorMap *map, const fa_problem *p, void *vt, int64_t keys);

/* q with `pack` heads (a power of two dividing block_m) per box: (dim,
 * heads, rows, batches), boxes of 128 bytes x pack heads x block_m / pack
 * rows (block_m: the tile's query rows, 64 or 128). */
fa_status fa_sm90_encode_packed_q_map(CUtensorMap *map, const fa_problem *p, int pack, int block_m);

#endif
