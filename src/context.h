/*
 * The context object, shared by the API (src/api.c) and the dispatcher
 * (src/dispatch.c). Backends never see it: they get a fa_problem.
 */
#ifndef FA_CONTEXT_H
#define FA_CONTEXT_H

#include "fa_internal.h"

struct fa_context {
    fa_device device;
    int device_index;
    void *stream;
    int num_threads;       /* 0 = all cores */
    fa_backend backend;    /* FA_BACKEND_AUTO or forced */
    const char *last_kernel;
    int skip_kv_cache_checks; /* fa_context_set_kv_cache_checks(ctx, 0) */

    /* Workspace the library allocated for callers that passed none;
     * grows, never shrinks, freed with the context. */
    void *workspace;
    size_t workspace_size;

    /* Host copies of the int32 arrays a call passes on the device
     * (cu_seqlens, seqused_k, kv_block_table), for validation and for the
     * backends that need them on the host. */
    int32_t *host_ints;
    size_t host_ints_count;

#ifdef FA_HAVE_CUDA
    fa_cuda_device_info cuda;
#endif
};

/* dispatch.c: the one function that chooses the kernel. On success *chosen
 * is the backend that will run; on failure the error message says why no
 * backend can. */
fa_status fa_dispatch_select(const fa_context *ctx, const fa_problem *p,
                             fa_direction dir, fa_backend *chosen);
size_t fa_dispatch_workspace_size(const fa_context *ctx, fa_backend backend,
                                  const fa_problem *p, fa_direction dir);
fa_status fa_dispatch_run(const fa_context *ctx, fa_backend backend, fa_problem *p,
                          fa_direction dir);

#endif /* FA_CONTEXT_H */
