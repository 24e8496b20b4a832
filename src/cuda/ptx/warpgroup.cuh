/*
 * Warpgroup-level controls: register reallocation between warp roles and
 * named barriers among a subset of the CTA's warps.
 */
#ifndef FA_PTX_WARPGROUP_CUH
#define FA_PTX_WARPGROUP_CUH

#include <stdint.h>

// The CTA's warpgroup index of this thread, as a warp-uniform value (the
// shuffle tells the compiler every lane agrees, so branches on it are uniform).
__device__ __forceinline__ int fa_warpgroup_index()
{
    return __shfl_sync(0xffffffffu, (int)(threadIdx.x / 128), 0);
}

// setmaxnreg: every warp of the warpgroup must run it; the kernel needs a
// register cap at entry (__launch_bounds__(threads, 1)). Producer warps give
// registers back (dec) so that the math warpgroups can take them (inc).
template <int Regs> __device__ __forceinline__ void fa_setmaxnreg_inc()
{
    static_assert(Regs % 8 == 0 && Regs >= 24 && Regs <= 256, "setmaxnreg range");
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;" ::"n"(Regs));
}
template <int Regs> __device__ __forceinline__ void fa_setmaxnreg_dec()
{
    static_assert(Regs % 8 == 0 && Regs >= 24 && Regs <= 256, "setmaxnreg range");
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;" ::"n"(Regs));
}

// True in one lane of the (fully active) warp, the same lane for all.
// Branching on it keeps the warp's other values uniform, so that the
// compiler can hold them in uniform registers.
__device__ __forceinline__ bool fa_elect_one()
{
    uint32_t elected;
    asm volatile("{\n"
                 ".reg .pred p;\n"
                 "elect.sync _|p, 0xffffffff;\n"
                 "selp.u32 %0, 1, 0, p;\n"
                 "}\n"
                 : "=r"(elected));
    return elected != 0;
}

// Named barrier `id` (1..15; 0 is __syncthreads) over `threads` threads (a
// multiple of 32): sync waits for all of them, arrive only signals.
__device__ __forceinline__ void fa_named_barrier_sync(uint32_t id, uint32_t threads)
{
    asm volatile("bar.sync %0, %1;" ::"r"(id), "r"(threads) : "memory");
}
__device__ __forceinline__ void fa_named_barrier_arrive(uint32_t id, uint32_t threads)
{
    asm volatile("bar.arrive %0, %1;" ::"r"(id), "r"(threads) : "memory");
}

#endif
