/*
 * wgmma: Hopper's warpgroup matrix multiply-accumulate (sm_90a only).
 *
 *   D (64 x N, f32) = A (64 x 16) * B (16 x N) + (accumulate ? D : 0)
 *
 * issued by all 128 threads of a warpgroup, asynchronously: a batch of
 * wgmma is opened by fa_wgmma_fence(), closed by fa_wgmma_commit(), and its
 * results may be read only after fa_wgmma_wait<k>() (at most k batches still
 * in flight). Thread t of the warpgroup (warp w = t/32, lane l = t%32) holds
 * accumulator element i of D at
 *     row = 16w + l/4 + 8*((i>>1)&1),   col = 8*(i>>2) + 2*(l&3) + (i&1).
 *
 * Operands in shared memory are described by 64-bit matrix descriptors; every
 * tile here is stored as 128-byte-swizzled "slabs" of 64 16-bit columns
 * (exactly the image a TMA load with CU_TENSOR_MAP_SWIZZLE_128B writes), each
 * slab 1024-byte aligned.
 */
#ifndef FA_PTX_WGMMA_CUH
#define FA_PTX_WGMMA_CUH

#include <float.h>
#include <stdint.h>

// Descriptor of a 128B-swizzled operand at shared address `addr`:
// lbo = byte distance between 64-column slabs (used by MN-major operands),
// sbo = byte distance between 8-row groups (1024 for stacked swizzle atoms).
__device__ __forceinline__ uint64_t fa_wgmma_desc(uint32_t addr, uint32_t lbo, uint32_t sbo)
{
    return (uint64_t)((addr & 0x3FFFF) >> 4) | ((uint64_t)(lbo >> 4) << 16) |
           ((uint64_t)(sbo >> 4) << 32) | (1ull << 62);
}

// The descriptor of the operand `bytes` further on (a k step, a pipeline
// stage): one 32-bit add to the low word, which holds the start address
// (bits 0-13, addr >> 4). Shared-memory offsets stay below 2^18 bytes, so
// the field never carries into the leading-byte-offset bits above it, and
// the high word (stride, swizzle) is untouched; a 64-bit add costs three
// uniform instructions per wgmma instead of one.
__device__ __forceinline__ uint64_t fa_wgmma_desc_advance(uint64_t desc, uint32_t bytes)
{
    const uint32_t lo = (uint32_t)desc + (bytes >> 4), hi = (uint32_t)(desc >> 32);
    uint64_t out;
    asm("mov.b64 %0, {%1, %2};" : "=l"(out) : "r"(lo), "r"(hi));
    return out;
}

__device__ __forceinline__ void fa_wgmma_fence()
{
    asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
}
__device__ __forceinline__ void fa_wgmma_commit()
{
    asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
}
template <int Pending> __device__ __forceinline__ void fa_wgmma_wait()
{
    asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(Pending) : "memory");
}

// Orders the computation of `value` before the next fa_wgmma_wait (ptxas):
// ptxas schedules a wgmma.wait_group as early as its basic block allows, even
// above independent arithmetic written before it in the source, so a warp
// can stall on in-flight GEMMs while work meant to overlap them waits behind.
// ptxas keeps shared-memory stores in order with the wait, so storing a value
// that depends on that work (to a scratch word only this thread uses) keeps
// the work before the wait.
__device__ __forceinline__ void fa_wgmma_wait_after(uint32_t scratch_addr, float value)
{
    asm volatile("st.shared.f32 [%0], %1;" ::"r"(scratch_addr), "f"(value) : "memory");
}

// The converse: `value` (finite) unchanged, but computed from an accumulator
// register of the GEMMs the last fa_wgmma_wait waited for, so that work using
// it is not hoisted above that wait. max(value, min(acc, -FLT_MAX)) is value
// for any acc, NaN and inf included, and ptxas cannot fold it.
__device__ __forceinline__ float fa_wgmma_order_after(float value, float accumulator)
{
    return fmaxf(value, fminf(accumulator, -FLT_MAX));
}

// Compiler-level fence on registers that an in-flight wgmma reads or writes:
// keeps nvcc from moving their uses into the asynchronous window.
template <int Count> __device__ __forceinline__ void fa_wgmma_fence_regs(float (&r)[Count])
{
#pragma unroll
    for (int i = 0; i < Count; ++i)
        asm volatile("" : "+f"(r[i])::"memory");
}
template <int Count> __device__ __forceinline__ void fa_wgmma_fence_regs(uint32_t (&r)[Count])
{
#pragma unroll
    for (int i = 0; i < Count; ++i)
        asm volatile("" : "+r"(r[i])::"memory");
}

/*
 * fa_wgmma<N>::ss<Bf16, TransB, TransA = 0>(d, a_desc, b_desc, accumulate)
 *     A and B from shared memory; each K-major (Trans 0) or MN-major
 *     (Trans 1; 16-bit types only).
 * fa_wgmma<N>::rs<Bf16, TransB>(d, a, b_desc, accumulate)
 *     A from registers, a[4] = the 64x16 fragment in the accumulator layout
 *     restricted to 16 columns, two 16-bit values per register (lower column
 *     in the low half).
 * Bf16 picks bf16 or fp16 inputs; accumulation is always f32.
 * fa_wgmma<N>::ss_fp8 / rs_fp8: the same for 8-bit inputs, K = 32 per
 * instruction (32 bytes of a row, as k16 for 16-bit types).
 *
 * Inline PTX needs every accumulator register named, so each N is one
 * instantiation of FA_WGMMA_DEFINE below; the operand lists are built from
 * 8-register chunks (FA_ACC_STR_c / FA_ACC_OPS_c name the first 8c
 * accumulators).
 */
template <int N> struct fa_wgmma;

#define FA_ACC_STR_1 "%0,%1,%2,%3,%4,%5,%6,%7"
#define FA_ACC_STR_2 FA_ACC_STR_1 "," "%8,%9,%10,%11,%12,%13,%14,%15"
#define FA_ACC_STR_3 FA_ACC_STR_2 "," "%16,%17,%18,%19,%20,%21,%22,%23"
#define FA_ACC_STR_4 FA_ACC_STR_3 "," "%24,%25,%26,%27,%28,%29,%30,%31"
#define FA_ACC_STR_5 FA_ACC_STR_4 "," "%32,%33,%34,%35,%36,%37,%38,%39"
#define FA_ACC_STR_6 FA_ACC_STR_5 "," "%40,%41,%42,%43,%44,%45,%46,%47"
#define FA_ACC_STR_7 FA_ACC_STR_6 "," "%48,%49,%50,%51,%52,%53,%54,%55"
#define FA_ACC_STR_8 FA_ACC_STR_7 "," "%56,%57,%58,%59,%60,%61,%62,%63"
#define FA_ACC_STR_9 FA_ACC_STR_8 "," "%64,%65,%66,%67,%68,%69,%70,%71"
#define FA_ACC_STR_10 FA_ACC_STR_9 "," "%72,%73,%74,%75,%76,%77,%78,%79"
#define FA_ACC_STR_11 FA_ACC_STR_10 "," "%80,%81,%82,%83,%84,%85,%86,%87"
#define FA_ACC_STR_12 FA_ACC_STR_11 "," "%88,%89,%90,%91,%92,%93,%94,%95"
#define FA_ACC_STR_13 FA_ACC_STR_12 "," "%96,%97,%98,%99,%100,%101,%102,%103"
#define FA_ACC_STR_14 FA_ACC_STR_13 "," "%104,%105,%106,%107,%108,%109,%110,%111"
#define FA_ACC_STR_15 FA_ACC_STR_14 "," "%112,%113,%114,%115,%116,%117,%118,%119"
#define FA_ACC_STR_16 FA_ACC_STR_15 "," "%120,%121,%122,%123,%124,%125,%126,%127"

#define FA_ACC_OPS_1(d) "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7])
#define FA_ACC_OPS_2(d) FA_ACC_OPS_1(d), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
#define FA_ACC_OPS_3(d) FA_ACC_OPS_2(d), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23])
#define FA_ACC_OPS_4(d) FA_ACC_OPS_3(d), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
#define FA_ACC_OPS_5(d) FA_ACC_OPS_4(d), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39])
#define FA_ACC_OPS_6(d) FA_ACC_OPS_5(d), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47])
#define FA_ACC_OPS_7(d) FA_ACC_OPS_6(d), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55])
#define FA_ACC_OPS_8(d) FA_ACC_OPS_7(d), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
#define FA_ACC_OPS_9(d) FA_ACC_OPS_8(d), "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71])
#define FA_ACC_OPS_10(d) FA_ACC_OPS_9(d), "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79])
#define FA_ACC_OPS_11(d) FA_ACC_OPS_10(d), "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87])
#define FA_ACC_OPS_12(d) FA_ACC_OPS_11(d), "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95])
#define FA_ACC_OPS_13(d) FA_ACC_OPS_12(d), "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103])
#define FA_ACC_OPS_14(d) FA_ACC_OPS_13(d), "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111])
#define FA_ACC_OPS_15(d) FA_ACC_OPS_14(d), "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119])
#define FA_ACC_OPS_16(d) FA_ACC_OPS_15(d), "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])

// R = N/2 accumulators are operands %0..%(R-1); R0..R6 are the numbers R..R+6
// of the operands that follow them (the preprocessor cannot add).
#define FA_WGMMA_SS_ASM(N, CHUNKS, TYPE, R0, R1, R2, R3, R4)                                     \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %" #R2 ", 0;\n"                               \
                 "wgmma.mma_async.sync.aligned.m64n" #N "k16.f32." TYPE "." TYPE " {"            \
                 FA_ACC_STR_##CHUNKS "}, %" #R0 ", %" #R1 ", p, 1, 1, %" #R4 ", %" #R3 ";\n}\n" \
                 : FA_ACC_OPS_##CHUNKS(d)                                                        \
                 : "l"(a), "l"(b), "r"(accumulate), "n"(TransB), "n"(TransA))
#define FA_WGMMA_RS_ASM(N, CHUNKS, TYPE, R0, R1, R2, R3, R4, R5, R6)                             \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %" #R5 ", 0;\n"                               \
                 "wgmma.mma_async.sync.aligned.m64n" #N "k16.f32." TYPE "." TYPE " {"            \
                 FA_ACC_STR_##CHUNKS "}, {%" #R0 ", %" #R1 ", %" #R2 ", %" #R3 "}, %" #R4        \
                 ", p, 1, 1, %" #R6 ";\n}\n"                                                     \
                 : FA_ACC_OPS_##CHUNKS(d)                                                        \
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(accumulate),         \
                   "n"(TransB))

// FP8 (k32): both operands K-major (no transpose exists for 8-bit types).
#define FA_WGMMA_SS8_ASM(N, CHUNKS, TA, TB, R0, R1, R2)                                          \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %" #R2 ", 0;\n"                               \
                 "wgmma.mma_async.sync.aligned.m64n" #N "k32.f32." TA "." TB " {"                \
                 FA_ACC_STR_##CHUNKS "}, %" #R0 ", %" #R1 ", p, 1, 1;\n}\n"                      \
                 : FA_ACC_OPS_##CHUNKS(d)                                                        \
                 : "l"(a), "l"(b), "r"(accumulate))
#define FA_WGMMA_RS8_ASM(N, CHUNKS, TA, TB, R0, R1, R2, R3, R4, R5)                              \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %" #R5 ", 0;\n"                               \
                 "wgmma.mma_async.sync.aligned.m64n" #N "k32.f32." TA "." TB " {"                \
                 FA_ACC_STR_##CHUNKS "}, {%" #R0 ", %" #R1 ", %" #R2 ", %" #R3 "}, %" #R4        \
                 ", p, 1, 1;\n}\n"                                                               \
                 : FA_ACC_OPS_##CHUNKS(d)                                                        \
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(accumulate))

#define FA_WGMMA_DEFINE(N, CHUNKS, R0, R1, R2, R3, R4, R5, R6)                                   \
    template <> struct fa_wgmma<N> {                                                             \
        /* FP8, A and B from shared memory: e4m3 or e5m2 each (E5m2A / B) */                     \
        template <bool E5m2A, bool E5m2B>                                                        \
        static __device__ __forceinline__ void ss_fp8(float (&d)[N / 2], uint64_t a, uint64_t b,\
                                                      uint32_t accumulate)                       \
        {                                                                                        \
            if constexpr (E5m2A && E5m2B)                                                        \
                FA_WGMMA_SS8_ASM(N, CHUNKS, "e5m2", "e5m2", R0, R1, R2);                         \
            else if constexpr (E5m2A)                                                            \
                FA_WGMMA_SS8_ASM(N, CHUNKS, "e5m2", "e4m3", R0, R1, R2);                         \
            else if constexpr (E5m2B)                                                            \
                FA_WGMMA_SS8_ASM(N, CHUNKS, "e4m3", "e5m2", R0, R1, R2);                         \
            else                                                                                 \
                FA_WGMMA_SS8_ASM(N, CHUNKS, "e4m3", "e4m3", R0, R1, R2);                         \
        }                                                                                        \
        /* FP8, A (e4m3) from registers: a[4] = the 64x32 fragment, four                         \
         * 8-bit values per register (rows r / r + 8, k 4t..4t+3 and                             \
         * 16+4t..16+4t+3, lowest k in the low byte) */                                          \
        template <bool E5m2B>                                                                    \
        static __device__ __forceinline__ void rs_fp8(float (&d)[N / 2], const uint32_t (&a)[4],\
                                                      uint64_t b, uint32_t accumulate)           \
        {                                                                                        \
            if constexpr (E5m2B)                                                                 \
                FA_WGMMA_RS8_ASM(N, CHUNKS, "e4m3", "e5m2", R0, R1, R2, R3, R4, R5);             \
            else                                                                                 \
                FA_WGMMA_RS8_ASM(N, CHUNKS, "e4m3", "e4m3", R0, R1, R2, R3, R4, R5);             \
        }                                                                                        \
        template <bool Bf16, int TransB, int TransA = 0>                                         \
        static __device__ __forceinline__ void ss(float (&d)[N / 2], uint64_t a, uint64_t b,    \
                                                  uint32_t accumulate)                           \
        {                                                                                        \
            if constexpr (Bf16)                                                                  \
                FA_WGMMA_SS_ASM(N, CHUNKS, "bf16", R0, R1, R2, R3, R4);                          \
            else                                                                                 \
                FA_WGMMA_SS_ASM(N, CHUNKS, "f16", R0, R1, R2, R3, R4);                           \
        }                                                                                        \
        template <bool Bf16, int TransB>                                                         \
        static __device__ __forceinline__ void rs(float (&d)[N / 2], const uint32_t (&a)[4],    \
                                                  uint64_t b, uint32_t accumulate)               \
        {                                                                                        \
            if constexpr (Bf16)                                                                  \
                FA_WGMMA_RS_ASM(N, CHUNKS, "bf16", R0, R1, R2, R3, R4, R5, R6);                  \
            else                                                                                 \
                FA_WGMMA_RS_ASM(N, CHUNKS, "f16", R0, R1, R2, R3, R4, R5, R6);                   \
        }                                                                                        \
    };

// The N the kernels use: score tiles (QKᵀ, N = key block: 80, 96, 128) and
// output tiles (PV, N = padded head dim: 64, 128, 192, 256). Another N (a
// multiple of 16) is one more line: FA_WGMMA_DEFINE(N, N/16, N/2, ..., N/2+6).
// (32: the sm90 backward's half-block score tiles at head dim 256.)
FA_WGMMA_DEFINE(32, 2, 16, 17, 18, 19, 20, 21, 22)
FA_WGMMA_DEFINE(64, 4, 32, 33, 34, 35, 36, 37, 38)
FA_WGMMA_DEFINE(80, 5, 40, 41, 42, 43, 44, 45, 46)
FA_WGMMA_DEFINE(96, 6, 48, 49, 50, 51, 52, 53, 54)
FA_WGMMA_DEFINE(128, 8, 64, 65, 66, 67, 68, 69, 70)
FA_WGMMA_DEFINE(192, 12, 96, 97, 98, 99, 100, 101, 102)
FA_WGMMA_DEFINE(256, 16, 128, 129, 130, 131, 132, 133, 134)

#endif
