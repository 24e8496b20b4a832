/*
 * mbarrier: the shared-memory transaction barrier that TMA loads complete on.
 *
 * A barrier lives in 8 bytes of shared memory and counts, per phase, pending
 * arrivals and pending transaction bytes; when both reach zero the phase
 * completes and its parity flips. A fresh barrier is in phase 0, so a wait
 * on parity 1 passes at once — which is why a producer waiting on "empty"
 * barriers starts with phase 1 (every buffer is initially free).
 *
 * All addresses are 32-bit shared-window addresses (__cvta_generic_to_shared).
 */
#ifndef FA_PTX_MBARRIER_CUH
#define FA_PTX_MBARRIER_CUH

#include <stdint.h>

// Sets the expected arrival count of each phase.
__device__ __forceinline__ void fa_mbar_init(uint32_t bar, uint32_t count)
{
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(count) : "memory");
}

// Makes the inits visible to the async proxy (TMA); follow with a CTA barrier.
__device__ __forceinline__ void fa_mbar_init_fence()
{
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
}

// Producer: one arrival plus `bytes` transaction bytes that the TMA loads
// issued on this barrier will complete.
__device__ __forceinline__ void fa_mbar_arrive_expect_tx(uint32_t bar, uint32_t bytes)
{
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes)
                 : "memory");
}

// Consumer release: one arrival.
__device__ __forceinline__ void fa_mbar_arrive(uint32_t bar)
{
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(bar) : "memory");
}

// Blocks until the phase of parity `phase` (0 or 1) has completed. The label
// is local to the braces, so every inlined copy may reuse it.
__device__ __forceinline__ void fa_mbar_wait(uint32_t bar, uint32_t phase)
{
    asm volatile("{\n"
                 ".reg .pred done;\n"
                 "LAB_WAIT:\n"
                 "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
                 "@!done bra LAB_WAIT;\n"
                 "}\n" ::"r"(bar),
                 "r"(phase)
                 : "memory");
}

#endif
