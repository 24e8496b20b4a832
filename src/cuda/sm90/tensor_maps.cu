/* TMA tensor maps for the Hopper kernels (see tensor_maps.h). */
#include "tensor_maps.h"

#include <cudaTypedefs.h>
#include <cuda_runtime.h>

/* The outer ("batch") dim of q (is_q) or k / v as TMA sees it: 1 for packed
 * (varlen) tensors, the pages of a paged K/V cache, else the batch. */
static int64_t outer_of(const fa_problem *p, int is_q)
{
    return p->varlen ? 1 : !is_q && p->kv_block_table ? p->kv_num_pages : p->batch;
}

/* A (seq, head, dim) tensor seen by TMA as the rank-4 tensor (dim, rows,
 * heads, batches), innermost first; packed (varlen) tensors are one batch of
 * total rows. Byte strides of the three outer dims; a dim of size 1 may have
 * any stride (a broadcast one is 0), so it gets a valid placeholder. */
/* The dtype of tensor t of p (out is bf16 in an FP8 forward). */
static fa_dtype dtype_of(const fa_problem *p, const fa_tensor *t)
{
    return t == &p->out ? fa_out_dtype(p->dtype) : p->dtype;
}

static void tma_strides(const fa_problem *p, const fa_tensor *t, int is_q, int64_t heads, int64_t bytes[3])
{
    int64_t elem = (int64_t)fa_dtype_size(dtype_of(p, t));
    int64_t sizes[3] = {fa_sm90_rows_of(p, is_q), heads, outer_of(p, is_q)};
    int64_t strides[3] = {t->stride_seq, t->stride_head, p->varlen ? 0 : t->stride_batch};
    for (int i = 0; i < 3; ++i)
        bytes[i] = sizes[i] == 1 ? 16 : strides[i] * elem;
}

/* Rows of q (is_q) or k / v as TMA sees them: per batch, all packed ones,
 * or a page's. */
int64_t fa_sm90_rows_of(const fa_problem *p, int is_q)
{
    if (p->varlen)
        return is_q ? p->total_q : p->total_k;
    if (!is_q && p->kv_block_table)
        return p->kv_page_size;
    return is_q ? p->seqlen_q : p->seqlen_k;
}

/* TMA: base 16-byte aligned, every stride a positive multiple of 16 bytes
 * below 2^40 (so no broadcast dims). The forward writes out by TMA stores
 * (or 4-byte stores where a tile cannot take them), held to the same rule
 * to keep one check. */
fa_status fa_sm90_check_tma_tensor(const fa_problem *p, const fa_tensor *t, const char *name, int is_q)
{
    int64_t bytes[3];
    tma_strides(p, t, is_q, is_q ? p->heads_q : p->heads_kv, bytes);
    if ((uintptr_t)t->data % 16 != 0)
        return fa_fail(FA_ERROR_UNSUPPORTED, "sm90: %s is not 16-byte aligned (TMA needs it)", name);
    for (int i = 0; i < 3; ++i)
        if (bytes[i] <= 0 || bytes[i] % 16 != 0 || bytes[i] >= ((int64_t)1 << 40))
            return fa_fail(FA_ERROR_UNSUPPORTED,
                           "sm90: a stride of %s is %lld bytes; TMA needs a positive multiple of 16", name,
                           (long long)bytes[i]);
    return FA_SUCCESS;
}

/* cuTensorMapEncodeTiled through the runtime's driver entry point, so that
 * the library links cudart only. */
static PFN_cuTensorMapEncodeTiled_v12000 encode_tiled_fn(void)
{
    static PFN_cuTensorMapEncodeTiled_v12000 fn = NULL;
    if (fn == NULL) {
        void *sym = NULL;
        cudaDriverEntryPointQueryResult found;
        if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &sym, 12000, cudaEnableDefault, &found) ==
                cudaSuccess &&
            found == cudaDriverEntryPointSuccess)
            fn = (PFN_cuTensorMapEncodeTiled_v12000)sym;
    }
    return fn;
}

/* The CUtensorMap data type of dtype: TMA has no 8-bit float type, and
 * moves bytes as they are. */
static CUtensorMapDataType map_type(fa_dtype dtype)
{
    return dtype == FA_DTYPE_BF16   ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16
           : dtype == FA_DTYPE_F16 ? CU_TENSOR_MAP_DATA_TYPE_FLOAT16
                                   : CU_TENSOR_MAP_DATA_TYPE_UINT8;
}

/* The tensor map of q (is_q) or k / v: boxes of 128 bytes of columns x
 * box_rows rows of one head, 128-byte swizzled, zero-filled outside the
 * tensor. */
fa_status fa_sm90_encode_map(CUtensorMap *map, const fa_problem *p, const fa_tensor *t, int is_q, int box_rows,
                            const char *name)
{
    PFN_cuTensorMapEncodeTiled_v12000 encode = encode_tiled_fn();
    if (encode == NULL)
        return fa_fail(FA_ERROR_DEVICE, "sm90: the driver has no cuTensorMapEncodeTiled");
    int64_t rows = fa_sm90_rows_of(p, is_q), heads = is_q ? p->heads_q : p->heads_kv, bytes[3];
    tma_strides(p, t, is_q, heads, bytes);
    cuuint64_t dims[4] = {(cuuint64_t)p->head_dim, (cuuint64_t)rows, (cuuint64_t)heads,
                          (cuuint64_t)outer_of(p, is_q)};
    cuuint64_t strides[3] = {(cuuint64_t)bytes[0], (cuuint64_t)bytes[1], (cuuint64_t)bytes[2]};
    const fa_dtype dtype = dtype_of(p, t);
    cuuint32_t box[4] = {(cuuint32_t)(128 / fa_dtype_size(dtype)), (cuuint32_t)box_rows, 1, 1};
    cuuint32_t elem_strides[4] = {1, 1, 1, 1};
    CUresult r = encode(map, map_type(dtype), 4, t->data, dims, strides, box, elem_strides, CU_TENSOR_MAP_INTERLEAVE_NONE,
                        CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                        CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    if (r != CUDA_SUCCESS)
        return fa_fail(FA_ERROR_DEVICE, "sm90: cuTensorMapEncodeTiled rejected %s (CUresult %d)", name, (int)r);
    return FA_SUCCESS;
}


/* The map of the FP8 forward's Vᵀ (fwd_sm90.cu): bytes [heads_kv][dim]
 * [keys] (and an outer dim of 1), one box = the dim rows of 128 keys,
 * 128-byte swizzled. */
fa_status fa_sm90_encode_vt_map(CUtensorMap *map, const fa_problem *p, void *vt, int64_t keys)
{
    PFN_cuTensorMapEncodeTiled_v12000 encode = encode_tiled_fn();
    if (encode == NULL)
        return fa_fail(FA_ERROR_DEVICE, "sm90: the driver has no cuTensorMapEncodeTiled");
    cuuint64_t dims[4] = {(cuuint64_t)keys, (cuuint64_t)p->head_dim, (cuuint64_t)p->heads_kv, 1};
    cuuint64_t strides[3] = {(cuuint64_t)keys, (cuuint64_t)(keys * p->head_dim),
                             (cuuint64_t)(keys * p->head_dim * p->heads_kv)};
    cuuint32_t box[4] = {128, (cuuint32_t)p->head_dim, 1, 1};
    cuuint32_t elem_strides[4] = {1, 1, 1, 1};
    CUresult r = encode(map, CU_TENSOR_MAP_DATA_TYPE_UINT8, 4, vt, dims, strides, box, elem_strides,
                        CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                        CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    if (r != CUDA_SUCCESS)
        return fa_fail(FA_ERROR_DEVICE, "sm90: cuTensorMapEncodeTiled rejected vt (CUresult %d)", (int)r);
    return FA_SUCCESS;
}

/* The map of q with GQA packed (the key split, fwd_sm90.cu): q seen as
 * (dim, heads, rows, batches), boxes of 128 bytes of columns x `pack`
 * heads x block_m / pack rows, which land in shared memory as block_m
 * rows of packed order (row r: query r / pack, head r % pack of the
 * box's). */
fa_status fa_sm90_encode_packed_q_map(CUtensorMap *map, const fa_problem *p, int pack, int block_m)
{
    PFN_cuTensorMapEncodeTiled_v12000 encode = encode_tiled_fn();
    if (encode == NULL)
        return fa_fail(FA_ERROR_DEVICE, "sm90: the driver has no cuTensorMapEncodeTiled");
    int64_t bytes[3]; /* seq, head, batch */
    tma_strides(p, &p->q, 1, p->heads_q, bytes);
    cuuint64_t dims[4] = {(cuuint64_t)p->head_dim, (cuuint64_t)p->heads_q, (cuuint64_t)fa_sm90_rows_of(p, 1),
                          (cuuint64_t)outer_of(p, 1)};
    cuuint64_t strides[3] = {(cuuint64_t)bytes[1], (cuuint64_t)bytes[0], (cuuint64_t)bytes[2]};
    const fa_dtype dtype = dtype_of(p, &p->q);
    cuuint32_t box[4] = {(cuuint32_t)(128 / fa_dtype_size(dtype)), (cuuint32_t)pack, (cuuint32_t)(block_m / pack), 1};
    cuuint32_t elem_strides[4] = {1, 1, 1, 1};
    CUresult r = encode(map, map_type(dtype), 4, p->q.data, dims, strides, box, elem_strides,
                        CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                        CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    if (r != CUDA_SUCCESS)
        return fa_fail(FA_ERROR_DEVICE, "sm90: cuTensorMapEncodeTiled rejected packed q (CUresult %d)", (int)r);
    return FA_SUCCESS;
}
