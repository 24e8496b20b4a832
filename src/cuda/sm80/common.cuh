/*
 * Pieces shared by the sm80 forward and backward kernels: smem tile loads,
 * warp-level tensor-core products on smem tiles, and the mask (window,
 * sequence tails, block-sparse) both as a per-tile classification and a
 * per-element test. Masking options are runtime values; only the head dim
 * (padded) and the dtype are template parameters.
 */
#ifndef FA_SM80_COMMON_CUH
#define FA_SM80_COMMON_CUH

#include "fa_internal.h"
#include "../key_split.cuh"
#include "../ptx/mma_sm80.cuh"

#include <cuda_runtime.h>
#include <stdlib.h>

namespace fa {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

/* Row stride of an smem tile of `cols` 16-bit columns: one 16-byte chunk of
 * padding makes the 8 row addresses of every ldmatrix hit distinct banks
 * (the row pitch is 16 bytes off a multiple of 128 for every head dim). */
__host__ __device__ constexpr int smem_pitch(int cols) { return cols + 8; }

/* A tile whose pitch is a whole number of 128-byte lines (a multiple of 64
 * 16-bit elements) has no padding and is XOR-swizzled instead (FA2's
 * Swizzle<3,3,3>): 16-byte chunk c of row r lies at chunk c ^ (r % 8) of its
 * 128-byte group, so the 8 rows of an ldmatrix still hit distinct banks and
 * the rows start on 128-byte lines. Padded pitches (smem_pitch) keep the
 * plain layout; the pitch alone selects it. */
__host__ __device__ constexpr bool smem_swizzled(int pitch) { return pitch % 64 == 0; }

/* Element (row r, column c + c_lane) of an smem tile of that pitch: every
 * smem tile access (cp.async, ldmatrix, staged stores) goes through it. The
 * column comes in two parts only so that the plain layout's address stays
 * the expression the kernels had before the swizzle (tile + r·pitch + c +
 * c_lane): as one sum, ptxas spilled 112 -> 256 B in the d-128 backward. */
template <typename T>
__device__ __forceinline__ T *smem_at(T *tile, int pitch, int r, int c, int c_lane = 0)
{
    if (smem_swizzled(pitch))
        return tile + r * pitch + ((c + c_lane) ^ ((r & 7) << 3));
    return tile + r * pitch + c + c_lane;
}

/* smem_at for the row address of an ldmatrix lane: rows r with r % 8 the
 * lane's index % 8 (every ldmatrix row pattern here), c0 + c_lane within
 * one 64-column group from c0's (c0 % 64 + c_lane <= 56). Swizzled, the
 * chunk order is then the lane's own and the group of c0 stays outside the
 * XOR, so an unrolled caller needs one address per chunk phase
 * (c0 % 64 / 16) plus immediates; with smem_at's r % 8, which ptxas cannot
 * reduce when r has a run-time part, the XOR was computed per access (the
 * d 256 forward ran 41% more instructions than FA2's). The plain layout's
 * address is smem_at's, term for term. */
template <typename T>
__device__ __forceinline__ T *smem_frag(T *tile, int pitch, int r, int c0, int c_lane = 0)
{
    if (smem_swizzled(pitch))
        return tile + r * pitch + (c0 & ~63) + (((c0 & 63) + c_lane) ^ ((threadIdx.x % 8) << 3));
    return smem_at(tile, pitch, r, c0, c_lane);
}

/* Element (r0 + i·STEP, c) of a tile, given to = smem_at(tile, PITCH, r0, c),
 * for i a compile-time index of an unrolled loop: rows kPeriod·STEP apart
 * share the chunk order (kPeriod 1 in the plain layout), so the address is
 * one of kPeriod per-thread pointers plus an immediate step instead of a
 * swizzle per row. */
template <int PITCH, int STEP, typename T>
__device__ __forceinline__ T *smem_row_step(T *to, T *tile, int r0, int i, int c)
{
    constexpr int kPeriod = !smem_swizzled(PITCH) || STEP % 8 == 0 ? 1
                            : STEP % 4 == 0                        ? 2
                            : STEP % 2 == 0                        ? 4
                                                                   : 8;
    if (kPeriod == 1)
        return to + i * STEP * PITCH;
    const int phase = i % kPeriod;
    T *first = phase == 0 ? to : smem_at(tile, PITCH, r0 + phase * STEP, c);
    return first + (i / kPeriod) * kPeriod * STEP * PITCH;
}

/* The head dim the kernels are compiled for: max(d, dv) rounded up to one
 * of 64, 96, 128, 192, 256. Smaller dims run with zero-filled columns. */
static inline int padded_head_dim(int64_t d, int64_t dv)
{
    int64_t m = d > dv ? d : dv;
    return m <= 64 ? 64 : m <= 96 ? 96 : m <= 128 ? 128 : m <= 192 ? 192 : 256;
}

/* 1 if every row of every listed tensor starts on a 16-byte boundary, so
 * tiles can be loaded with 16-byte cp.async; otherwise the kernels take the
 * element-wise path. */
static inline int rows_are_16b_aligned(const fa_tensor *const *tensors, int count,
                                       int varlen)
{
    for (int i = 0; i < count; ++i) {
        const fa_tensor *t = tensors[i];
        if ((uintptr_t)t->data % 16 != 0 || t->stride_seq % 8 != 0 ||
            t->stride_head % 8 != 0 || (!varlen && t->stride_batch % 8 != 0))
            return 0;
    }
    return 1;
}

/* Maps a launch error to FA_ERROR_DEVICE with the runtime's message. */
static inline fa_status check_launch(const char *what)
{
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess)
        return fa_fail(FA_ERROR_DEVICE, "%s: %s", what, cudaGetErrorString(err));
    return FA_SUCCESS;
}

/* Dynamic smem of one block of each kernel, and the workspaces (forward.cu,
 * backward.cu). */
size_t forward_smem_bytes(int padded_dim);
size_t backward_smem_bytes(int padded_dim);
size_t forward_workspace_size(const fa_problem *p, const fa_cuda_device_info *dev);
size_t backward_workspace_size(const fa_problem *p, const fa_cuda_device_info *dev);

/* Resident CTAs per SM of `kernel` (`threads` per CTA, `smem` bytes of
 * dynamic smem), asked once per device: `cache` is the caller's, one per
 * kernel instance and smem size. The split plans need it on every call
 * (the forward's up to three times: dispatch, workspace, launch), and the
 * query with the attribute it needs costs about as much as a launch. */
constexpr int kCachedDevices = 16;
static inline cudaError_t resident_per_sm(const void *kernel, int threads, size_t smem,
                                          int (&cache)[kCachedDevices], int *per_sm)
{
    int device = 0;
    cudaError_t err = cudaGetDevice(&device);
    if (err == cudaSuccess && device < kCachedDevices && cache[device] > 0) {
        *per_sm = cache[device];
        return cudaSuccess;
    }
    if (err == cudaSuccess)
        err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    if (err == cudaSuccess)
        err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(per_sm, kernel, threads, smem);
    if (err == cudaSuccess && device < kCachedDevices)
        cache[device] = *per_sm;
    return err;
}

/* last_wave_parts, the split's model: ../key_split.cuh */

/* ---------------------------------------------------------------------- */
/* Tile loads                                                              */

/* Copies rows [0, ROWS) x columns [0, COLS) of a matrix into an smem tile
 * of pitch PITCH (layout: smem_at); rows >= rows_valid and columns >= cols
 * become zeros. row_at(r) points at element (r, 0) of a valid row r; `any`
 * is some readable address (the source of the zero fills). With
 * `vectorized` (rows 16-byte aligned) the copy is asynchronous (cp.async;
 * the caller commits and waits), otherwise element-wise. (load_tile below
 * is the same loop for strided rows, kept apart: built on this one it
 * changed the register allocation of 22-28 backward kernels, in both
 * forms tried, with no change of what they compute.) */
template <typename T, int ROWS, int COLS, int THREADS, int PITCH, class RowAt>
__device__ __forceinline__ void load_tile_rows(T *tile, RowAt row_at, const T *any,
                                               int64_t rows_valid, int cols, bool vectorized)
{
    constexpr int kChunks = COLS / 8; /* 16-byte chunks per row */
    if (vectorized) {
#pragma unroll
        for (int c = threadIdx.x; c < ROWS * kChunks; c += THREADS) {
            int r = c / kChunks, col = (c % kChunks) * 8;
            int n = r < rows_valid ? min(8, cols - col) : 0;
            n = n < 0 ? 0 : n;
            const T *from = n > 0 ? row_at(r) + col : any;
            cp_async_16(smem_at(tile, PITCH, r, col), from, 2 * n);
        }
    } else {
        unsigned short *to = reinterpret_cast<unsigned short *>(tile);
        for (int e = threadIdx.x; e < ROWS * COLS; e += THREADS) {
            int r = e / COLS, col = e % COLS;
            *smem_at(to, PITCH, r, col) =
                (r < rows_valid && col < cols)
                    ? reinterpret_cast<const unsigned short *>(row_at(r))[col]
                    : 0;
        }
    }
}

/* load_tile_rows of a strided matrix: `src` points at element (0, 0), rows
 * are `stride` elements apart. */
template <typename T, int ROWS, int COLS, int THREADS, int PITCH = smem_pitch(COLS)>
__device__ __forceinline__ void load_tile(T *tile, const T *src, int64_t stride,
                                          int64_t rows_valid, int cols, bool vectorized)
{
    constexpr int kChunks = COLS / 8; /* 16-byte chunks per row */
    if (vectorized) {
#pragma unroll
        for (int c = threadIdx.x; c < ROWS * kChunks; c += THREADS) {
            int r = c / kChunks, col = (c % kChunks) * 8;
            int n = r < rows_valid ? min(8, cols - col) : 0;
            n = n < 0 ? 0 : n;
            const T *from = n > 0 ? src + r * stride + col : src;
            cp_async_16(smem_at(tile, PITCH, r, col), from, 2 * n);
        }
    } else {
        const unsigned short *from = reinterpret_cast<const unsigned short *>(src);
        unsigned short *to = reinterpret_cast<unsigned short *>(tile);
        for (int e = threadIdx.x; e < ROWS * COLS; e += THREADS) {
            int r = e / COLS, col = e % COLS;
            *smem_at(to, PITCH, r, col) =
                (r < rows_valid && col < cols) ? from[r * stride + col] : 0;
        }
    }
}

/* As load_tile, with the copy's address arithmetic hoisted out of the
 * loop: when THREADS is a multiple of the chunks per row and divides the
 * tile's chunks, every thread copies one fixed 16-byte column of every
 * (THREADS / chunks per row)-th row, so each cp.async costs a row test and
 * two adds instead of a div/mod and a 64-bit multiply (the generic loop's
 * trip count depends on threadIdx.x, so it is not even unrolled). Other
 * shapes, and unaligned rows, take load_tile. */
template <typename T, int ROWS, int COLS, int THREADS, int PITCH = smem_pitch(COLS)>
__device__ __forceinline__ void load_tile_fixed_column(T *tile, const T *src, int64_t stride,
                                                       int64_t rows_valid, int cols,
                                                       bool vectorized)
{
    constexpr int kChunks = COLS / 8; /* 16-byte chunks per row */
    if constexpr (THREADS % kChunks == 0 && (ROWS * kChunks) % THREADS == 0) {
        if (vectorized) {
            constexpr int kRowStep = THREADS / kChunks;
            const int r0 = threadIdx.x / kChunks, col = (threadIdx.x % kChunks) * 8;
            const int bytes = 2 * max(0, min(8, cols - col));
            const int valid = (int)min(rows_valid, (int64_t)ROWS);
            const T *from = src + r0 * stride + col;
            T *to = smem_at(tile, PITCH, r0, col);
#pragma unroll
            for (int i = 0; i < ROWS / kRowStep; ++i) {
                const bool in = r0 + i * kRowStep < valid && bytes > 0;
                cp_async_16(smem_row_step<PITCH, kRowStep>(to, tile, r0, i, col),
                            in ? from + i * kRowStep * stride : src, in ? bytes : 0);
            }
            return;
        }
    }
    load_tile<T, ROWS, COLS, THREADS, PITCH>(tile, src, stride, rows_valid, cols, vectorized);
}

/* ---------------------------------------------------------------------- */
/* Warp-level products on smem tiles                                      */

/* A fragment for rows [m0, m0+16) x k [k0, k0+16) of A; the smem tile holds
 * A row-major, or (a_transposed) Aᵀ row-major, i.e. indexed [k][m]. */
template <bool a_transposed, typename T>
__device__ __forceinline__ void load_a_fragment(uint32_t a[4], const T *s, int pitch,
                                                int m0, int k0)
{
    int l = threadIdx.x % 32;
    if (a_transposed)
        ldmatrix_x4_trans(a,
                          smem_frag(s, pitch, k0 + l % 8 + (l / 16) * 8, m0, ((l / 8) % 2) * 8));
    else
        ldmatrix_x4(a, smem_frag(s, pitch, m0 + l % 16, k0, (l / 16) * 8));
}

/* What mma_a_times_b runs before the first product into acc[mt][nt]:
 * nothing by default. */
struct NoTileHook {
    __device__ __forceinline__ void operator()(int, int) const {}
};

/* acc[mt][nt] += a[mt] · B[k0..k0+16, n0+8nt..+8] for MT row tiles of 16
 * and NT column tiles of 8: each B fragment read from smem feeds MT mma.
 * The smem tile holds B row-major indexed [k][n] (b_k_major, e.g. V in
 * P·V), or indexed [n][k] (e.g. K in Q·Kᵀ). Two n-tiles per ldmatrix_x4,
 * an odd last one by x2. before(mt, nt) runs just before the product into
 * acc[mt][nt], so that per-tile work on the accumulator (the forward's O
 * rescale) issues between the mma instead of as one block ahead of them. */
template <int MT, int NT, bool b_k_major, typename T, class Before = NoTileHook>
__device__ __forceinline__ void mma_a_times_b(float (&acc)[MT][NT][4], const uint32_t (&a)[MT][4],
                                              const T *s, int pitch, int k0, int n0,
                                              Before before = Before())
{
    int l = threadIdx.x % 32;
#pragma unroll
    for (int nt = 0; nt + 1 < NT; nt += 2) {
        uint32_t b[4];
        int n = n0 + nt * 8;
        if (b_k_major)
            ldmatrix_x4_trans(b,
                              smem_frag(s, pitch, k0 + l % 8 + ((l / 8) % 2) * 8, n, (l / 16) * 8));
        else
            ldmatrix_x4(b, smem_frag(s, pitch, n + l % 8 + (l / 16) * 8, k0, ((l / 8) % 2) * 8));
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
            before(mt, nt);
            mma_m16n8k16<T>(acc[mt][nt], a[mt], b);
            before(mt, nt + 1);
            mma_m16n8k16<T>(acc[mt][nt + 1], a[mt], b + 2);
        }
    }
    if (NT % 2) {
        uint32_t b[2];
        int n = n0 + (NT - 1) * 8;
        if (b_k_major)
            ldmatrix_x2_trans(b, smem_frag(s, pitch, k0 + l % 8 + ((l / 8) % 2) * 8, n));
        else
            ldmatrix_x2(b, smem_frag(s, pitch, n + l % 8, k0, ((l / 8) % 2) * 8));
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
            before(mt, NT - 1);
            mma_m16n8k16<T>(acc[mt][NT - 1], a[mt], b);
        }
    }
}

/* acc (16MT x 8NT) += A[m0.., a_k0..a_k0+K) · B[b_k0..+K, n0..n0+8NT), both
 * from smem (layouts as for load_a_fragment / mma_a_times_b). */
template <int MT, int NT, int K, bool a_transposed, bool b_k_major, typename T>
__device__ __forceinline__ void warp_gemm(float (&acc)[MT][NT][4], const T *sa, int a_pitch,
                                          int m0, int a_k0, const T *sb, int b_pitch,
                                          int b_k0, int n0)
{
#pragma unroll
    for (int kk = 0; kk < K; kk += 16) {
        uint32_t a[MT][4];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
            load_a_fragment<a_transposed>(a[mt], sa, a_pitch, m0 + 16 * mt, a_k0 + kk);
        mma_a_times_b<MT, NT, b_k_major>(acc, a, sb, b_pitch, b_k0 + kk, n0);
    }
}

/* As warp_gemm for A row-major and B indexed [n][k] (Q·Kᵀ), with the
 * fragments of each 16-deep step read one step ahead into a second
 * register buffer (FA2's gemm order). ptxas schedules the loads itself
 * either way; what this order changes is its register allocation (fewer
 * registers in the forward at d >= 128, see forward.cu). NT even. */
template <int MT, int NT, int K, typename T>
__device__ __forceinline__ void warp_gemm_prefetched(float (&acc)[MT][NT][4], const T *sa,
                                                     int a_pitch, int m0, const T *sb,
                                                     int b_pitch)
{
    static_assert(NT % 2 == 0, "B fragments come in pairs of n-tiles");
    const int l = threadIdx.x % 32;
    uint32_t a[2][MT][4], b[2][NT / 2][4];
#pragma unroll
    for (int kk = 0; kk <= K; kk += 16) {
        if (kk < K) { /* fragments of step kk into buffer (kk / 16) % 2 */
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
                load_a_fragment<false>(a[(kk / 16) % 2][mt], sa, a_pitch, m0 + 16 * mt, kk);
#pragma unroll
            for (int j = 0; j < NT / 2; ++j)
                ldmatrix_x4(b[(kk / 16) % 2][j],
                            smem_frag(sb, b_pitch, 16 * j + l % 8 + (l / 16) * 8, kk,
                                    ((l / 8) % 2) * 8));
        }
        if (kk > 0) { /* products of step kk - 16 */
            const int buf = (kk / 16 - 1) % 2;
#pragma unroll
            for (int j = 0; j < NT / 2; ++j)
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                    mma_m16n8k16<T>(acc[mt][2 * j], a[buf][mt], b[buf][j]);
                    mma_m16n8k16<T>(acc[mt][2 * j + 1], a[buf][mt], b[buf][j] + 2);
                }
        }
    }
}

/* The two 16-bit values of one 32-bit register (pack_pair's layout) as
 * floats: .x the low half, .y the high half. */
template <typename T> __device__ __forceinline__ float2 unpack_pair(uint32_t v)
{
    if constexpr (dtype_traits<T>::is_bf16)
        return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(&v));
    else
        return __half22float2(*reinterpret_cast<const __half2 *>(&v));
}

template <int MT, int NT> __device__ __forceinline__ void zero(float (&acc)[MT][NT][4])
{
#pragma unroll
    for (int m = 0; m < MT; ++m)
#pragma unroll
        for (int i = 0; i < NT; ++i)
            acc[m][i][0] = acc[m][i][1] = acc[m][i][2] = acc[m][i][3] = 0.f;
}

/* ---------------------------------------------------------------------- */
/* Masking                                                                 */

/* What limits the keys a query row of one (sequence, head) sees; rows and
 * columns are indices within the sequence. */
struct Mask {
    int64_t sq, sk, shift, left, right; /* window: -1 = unbounded */
    const uint8_t *blocks;              /* this (b, h)'s grid, NULL = dense */
    int64_t block_q, block_k, blocks_k;
};

__device__ __forceinline__ Mask make_mask(const fa_problem &p, const fa_seq &seq,
                                          int64_t b, int64_t h)
{
    Mask m;
    m.sq = seq.sq;
    m.sk = seq.sk;
    m.shift = seq.sk - seq.sq;
    m.left = p.window_left;
    m.right = p.window_right;
    m.blocks = p.block_mask ? p.block_mask + b * p.block_mask_stride_batch +
                                  h * p.block_mask_stride_head
                            : nullptr;
    m.block_q = p.block_size_q;
    m.block_k = p.block_size_k;
    m.blocks_k = p.block_mask_blocks_k;
    return m;
}

/* The mask restricted to the tile at (m0, n0), in tile-local 32-bit
 * indices: (il, jl) is visible iff lo <= jl - il <= hi, il < rows, jl < cols
 * and the block-sparse cell is on. */
struct TileMask {
    int lo, hi, rows, cols;
};

__device__ __forceinline__ int clamp_to_int(int64_t x)
{
    return (int)max((int64_t)-(1 << 30), min((int64_t)(1 << 30), x));
}

__device__ __forceinline__ TileMask tile_mask(const Mask &m, int64_t m0, int64_t n0)
{
    TileMask t;
    t.lo = m.left >= 0 ? clamp_to_int(m.shift - m.left - (n0 - m0)) : -(1 << 30);
    t.hi = m.right >= 0 ? clamp_to_int(m.shift + m.right - (n0 - m0)) : (1 << 30);
    t.rows = clamp_to_int(m.sq - m0);
    t.cols = clamp_to_int(m.sk - n0);
    return t;
}

__device__ __forceinline__ bool visible_in_tile(const TileMask &t, const Mask &m, int64_t m0,
                                                int64_t n0, int il, int jl)
{
    const int diff = jl - il;
    bool ok = diff >= t.lo && diff <= t.hi && il < t.rows && jl < t.cols;
    if (m.blocks && ok)
        ok = m.blocks[((m0 + il) / m.block_q) * m.blocks_k + (n0 + jl) / m.block_k];
    return ok;
}

enum TileKind { TILE_SKIP = 0, TILE_FULL = 1, TILE_PARTIAL = 2 };

/* Classifies the tile rows [m0, m0+rows) x keys [n0, n0+cols): SKIP if no
 * element is visible (so it costs no loads and no math), FULL if every
 * element is, PARTIAL otherwise (the caller tests each element). Every
 * thread of the block must call it with the same arguments (the
 * block-sparse grid is scanned cooperatively). */
__device__ __forceinline__ TileKind classify_tile(const Mask &m, int64_t m0, int rows,
                                                  int64_t n0, int cols)
{
    int64_t m1 = min(m0 + rows, m.sq), n1 = min(n0 + cols, m.sk);
    if (m0 >= m1 || n0 >= n1)
        return TILE_SKIP;
    /* Row i sees [lo(i), hi(i)), both non-decreasing in i. */
    int64_t first = m.right >= 0 ? max(m0, n0 - m.shift - m.right) : m0;
    if (first >= m1 || (m.left >= 0 && first + m.shift - m.left >= n1))
        return TILE_SKIP;
    bool full = m0 + rows <= m.sq && n0 + cols <= m.sk &&
                (m.left < 0 || m0 + rows - 1 + m.shift - m.left <= n0) &&
                (m.right < 0 || m0 + m.shift + m.right + 1 >= n0 + cols);
    if (m.blocks) {
        int64_t bq0 = m0 / m.block_q, bq1 = (m1 - 1) / m.block_q;
        int64_t bk0 = n0 / m.block_k, bk1 = (n1 - 1) / m.block_k;
        int64_t nbk = bk1 - bk0 + 1, cells = (bq1 - bq0 + 1) * nbk;
        int on = 0, off = 0;
        for (int64_t c = threadIdx.x; c < cells; c += blockDim.x) {
            uint8_t v = m.blocks[(bq0 + c / nbk) * m.blocks_k + bk0 + c % nbk];
            on |= v != 0;
            off |= v == 0;
        }
        if (!__syncthreads_or(on))
            return TILE_SKIP;
        if (__syncthreads_or(off))
            full = false;
    }
    return full ? TILE_FULL : TILE_PARTIAL;
}

/* Scores are handled in log2 units: softmax_scale, softcap and ALiBi are
 * applied in natural units, then multiplied by log2(e) so that exp2f does
 * the exponentials. */
struct ScoreTransform {
    float scale, softcap, alibi_slope; /* softcap 0 = off, slope 0 = off */
    int64_t shift;
};

/* Natural-unit score of (i, j); *dtanh receives d(softcap)/d(raw score)
 * (1 without softcap) for the backward. */
__device__ __forceinline__ float transform_score(const ScoreTransform &t, float qk,
                                                 int64_t i, int64_t j, float *dtanh)
{
    float s = qk * t.scale;
    *dtanh = 1.f;
    if (t.softcap > 0.f) {
        /* Not tanhf: under --use_fast_math it becomes tanh.approx (~2^-11
         * relative error, visible in lse). expm1 keeps full float accuracy
         * near 0 as well. */
        const float x = s / t.softcap, e = expm1f(fminf(2.f * fabsf(x), 30.f));
        const float th = copysignf(e / (e + 2.f), x);
        s = t.softcap * th;
        *dtanh = 1.f - th * th;
    }
    if (t.alibi_slope != 0.f) {
        int64_t dist = i + t.shift - j;
        s -= t.alibi_slope * (float)(dist < 0 ? -dist : dist);
    }
    return s;
}

__device__ __forceinline__ ScoreTransform make_score_transform(const fa_problem &p,
                                                               const fa_seq &seq,
                                                               int64_t b, int64_t h)
{
    ScoreTransform t;
    t.scale = p.softmax_scale;
    t.softcap = p.softcap;
    t.alibi_slope = p.alibi_slopes ? p.alibi_slopes[b * p.alibi_stride_batch + h] : 0.f;
    t.shift = seq.sk - seq.sq;
    return t;
}

/* As load_tile_fixed_column, with a fast path for the common whole tile
 * (rows_valid >= ROWS, cols >= COLS, 16-byte aligned rows): its copies need
 * no row test and no source or size select, only a 64-bit pointer step, so
 * each cp.async costs about three instructions instead of seven. Partial
 * tiles take load_tile_fixed_column. */
template <typename T, int ROWS, int COLS, int THREADS, int PITCH = smem_pitch(COLS)>
__device__ __forceinline__ void load_tile_whole_fast(T *tile, const T *src, int64_t stride,
                                                     int64_t rows_valid, int cols, bool vectorized)
{
    constexpr int kChunks = COLS / 8; /* 16-byte chunks per row */
    if constexpr (THREADS % kChunks == 0 && (ROWS * kChunks) % THREADS == 0) {
        if (vectorized && rows_valid >= ROWS && cols >= COLS) {
            constexpr int kRowStep = THREADS / kChunks;
            const int r0 = threadIdx.x / kChunks, col = (threadIdx.x % kChunks) * 8;
            const T *from = src + r0 * stride + col;
            T *to = smem_at(tile, PITCH, r0, col);
            const int64_t step = kRowStep * stride;
#pragma unroll
            for (int i = 0; i < ROWS / kRowStep; ++i, from += step)
                cp_async_16(smem_row_step<PITCH, kRowStep>(to, tile, r0, i, col), from, 16);
            return;
        }
    }
    load_tile_fixed_column<T, ROWS, COLS, THREADS, PITCH>(tile, src, stride, rows_valid, cols,
                                                          vectorized);
}

/* load_tile_rows of key positions [pos0, pos0 + ROWS) of a paged K/V cache
 * (fa_attn.kv_block_table): position j is row j % page_size of page
 * pages[j / page_size]; head_base points at row 0 of page 0 in the head.
 * Where the shape allows, every thread copies one fixed 16-byte column (as
 * load_tile_fixed_column) and looks up the page of each of its rows. The
 * table is read only for rows < rows_valid (its other entries may be
 * anything). */
template <typename T, int ROWS, int COLS, int THREADS, int PITCH>
__device__ __forceinline__ void load_tile_paged(T *tile, const T *head_base, const int32_t *pages,
                                                int64_t page_stride, int64_t row_stride, int page_size,
                                                int pos0, int64_t rows_valid, int cols, bool vectorized)
{
    auto row_at = [=](int r) {
        const int j = pos0 + r;
        return head_base + (int64_t)pages[j / page_size] * page_stride + (int64_t)(j % page_size) * row_stride;
    };
    constexpr int kChunks = COLS / 8; /* 16-byte chunks per row */
    if constexpr (THREADS % kChunks == 0 && (ROWS * kChunks) % THREADS == 0) {
        if (vectorized) {
            constexpr int kRowStep = THREADS / kChunks;
            const int r0 = threadIdx.x / kChunks, col = (threadIdx.x % kChunks) * 8;
            const int bytes = 2 * max(0, min(8, cols - col));
            T *to = smem_at(tile, PITCH, r0, col);
#pragma unroll
            for (int i = 0; i < ROWS / kRowStep; ++i) {
                const int r = r0 + i * kRowStep;
                const T *from = head_base;
                int n = 0;
                if (r < rows_valid && bytes > 0) {
                    from = row_at(r) + col;
                    n = bytes;
                }
                cp_async_16(smem_row_step<PITCH, kRowStep>(to, tile, r0, i, col), from, n);
            }
            return;
        }
    }
    load_tile_rows<T, ROWS, COLS, THREADS, PITCH>(tile, row_at, head_base, rows_valid, cols, vectorized);
}

} // namespace fa

#endif
