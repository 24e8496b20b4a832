/*
 * Thread-block clusters (sm_90): the CTAs of a cluster run at the same time
 * on one GPC and can reach each other's shared memory. Used for TMA
 * multicast: one CTA's load lands in the same shared-memory offset of every
 * CTA in the mask and completes bytes on the barrier at the same offset in
 * each of them.
 *
 * Without a cluster launch every CTA is a cluster of one (rank 0, cluster id
 * = block index), so code written for clusters runs unchanged.
 */
#ifndef FA_PTX_CLUSTER_CUH
#define FA_PTX_CLUSTER_CUH

#include <stdint.h>

// This CTA's rank in its cluster, the cluster's index in the grid (x) and the
// number of clusters (x).
__device__ __forceinline__ uint32_t fa_cluster_rank()
{
    uint32_t r;
    asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
    return r;
}
__device__ __forceinline__ uint32_t fa_cluster_id_x()
{
    uint32_t r;
    asm volatile("mov.u32 %0, %%clusterid.x;" : "=r"(r));
    return r;
}
__device__ __forceinline__ uint32_t fa_cluster_count_x()
{
    uint32_t r;
    asm volatile("mov.u32 %0, %%nclusterid.x;" : "=r"(r));
    return r;
}

// Every thread of every CTA of the cluster: release this CTA's earlier
// shared-memory writes (barrier inits included) and wait until all have
// arrived. Not .aligned: the threads of a warp may reach it apart.
__device__ __forceinline__ void fa_cluster_sync()
{
    asm volatile("barrier.cluster.arrive.release;\n"
                 "barrier.cluster.wait.acquire;" ::
                     : "memory");
}

// One arrival on the mbarrier at shared offset `bar` (this CTA's address of
// it) in CTA `rank` of the cluster. Default semantics (release at CTA
// scope), as CUTLASS's cluster barrier: what it orders is the arriving
// warp's wgmma reads of a buffer, already complete (wgmma.wait_group),
// before the TMA writes the producer issues once all have arrived. A
// .release.cluster arrive cost 25-35% of the forward's speed (it waits
// for more than those reads).
__device__ __forceinline__ void fa_mbar_arrive_in_cta(uint32_t bar, uint32_t rank)
{
    asm volatile("{\n"
                 ".reg .b32 remote;\n"
                 "mapa.shared::cluster.u32 remote, %0, %1;\n"
                 "mbarrier.arrive.shared::cluster.b64 _, [remote];\n"
                 "}\n" ::"r"(bar),
                 "r"(rank)
                 : "memory");
}

#endif
