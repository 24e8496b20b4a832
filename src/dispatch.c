/*
 * Backend choice: one function decides which kernel runs a validated
 * problem, so that every "why did X run" question has one answer.
 *
 *   CPU context:  the CPU backend.
 *   CUDA context: on sm_90, the Hopper kernels if they support the problem
 *                 (forward and backward; not deterministic, dropout,
 *                 ALiBi, block-sparse: see sm90.cu), else the portable
 *                 sm80 kernels; a forward whose grid is smaller than
 *                 the GPU (decoding: few query rows over long keys) runs
 *                 as a key split, sm90's where it has one, else sm80's
 *                 where that grid is much smaller than the GPU (its
 *                 split beats sm90's unsplit forward there).
 * A forced backend that cannot run the problem is FA_ERROR_UNSUPPORTED, with
 * the backend's own reason.
 */
#include "context.h"

#include <stdio.h>
#include <string.h>

static fa_status cpu_supports(const fa_context *ctx, const fa_problem *p)
{
    if (ctx->device != FA_DEVICE_CPU)
        return fa_fail(FA_ERROR_UNSUPPORTED,
                       "backend cpu cannot run on a CUDA context (pointers "
                       "are device memory)");
    (void)p;
    return FA_SUCCESS;
}

/* Can `backend` run p? FA_SUCCESS, or a status + message saying why not. */
static fa_status backend_supports(const fa_context *ctx, fa_backend backend,
                                  const fa_problem *p, fa_direction dir)
{
    if (backend == FA_BACKEND_CPU)
        return cpu_supports(ctx, p);
    if (!fa_backend_compiled(backend))
        return fa_fail(FA_ERROR_UNSUPPORTED,
                       "backend %s is not compiled into this build",
                       fa_backend_name(backend));
#ifdef FA_HAVE_CUDA
    if (ctx->device != FA_DEVICE_CUDA)
        return fa_fail(FA_ERROR_UNSUPPORTED,
                       "backend %s needs a CUDA context",
                       fa_backend_name(backend));
#  ifdef FA_HAVE_SM80
    if (backend == FA_BACKEND_CUDA_SM80)
        return fa_sm80_supports(p, dir, &ctx->cuda);
#  endif
#  ifdef FA_HAVE_SM90
    if (backend == FA_BACKEND_CUDA_SM90) {
        if (ctx->cuda.sm != 90)
            return fa_fail(FA_ERROR_UNSUPPORTED,
                           "backend sm90 needs an sm_90 GPU (this one is "
                           "sm_%d)", ctx->cuda.sm);
        return fa_sm90_supports(p, dir, &ctx->cuda);
    }
#  endif
#endif
    return fa_fail(FA_ERROR_INTERNAL, "backend %d has no dispatch entry",
                   (int)backend);
}

#ifdef FA_HAVE_SM80
/* Whether the Hopper forward runs p, as a key split. */
static int sm90_splits(const fa_context *ctx, const fa_problem *p)
{
#  ifdef FA_HAVE_SM90
    if (ctx->cuda.sm == 90 && fa_sm90_forward_splits(p, &ctx->cuda) &&
        backend_supports(ctx, FA_BACKEND_CUDA_SM90, p, FA_FORWARD) == FA_SUCCESS)
        return 1;
    fa_clear_error();
#  endif
    (void)ctx, (void)p;
    return 0;
}
#endif

fa_status fa_dispatch_select(const fa_context *ctx, const fa_problem *p,
                             fa_direction dir, fa_backend *chosen)
{
    if (ctx->backend != FA_BACKEND_AUTO) {
        fa_status st = backend_supports(ctx, ctx->backend, p, dir);
        if (st == FA_SUCCESS)
            *chosen = ctx->backend;
        return st;
    }
    if (ctx->device == FA_DEVICE_CPU) {
        fa_status st = cpu_supports(ctx, p);
        if (st == FA_SUCCESS)
            *chosen = FA_BACKEND_CPU;
        return st;
    }
#ifdef FA_HAVE_SM80
    if (dir == FA_FORWARD && fa_sm80_forward_prefers_split(p, &ctx->cuda) && !sm90_splits(ctx, p) &&
        backend_supports(ctx, FA_BACKEND_CUDA_SM80, p, dir) == FA_SUCCESS) {
        fa_clear_error();
        *chosen = FA_BACKEND_CUDA_SM80;
        return FA_SUCCESS;
    }
#endif
    /* CUDA, fastest first; keep each refusal for the final message. */
    static const fa_backend order[] = {FA_BACKEND_CUDA_SM90,
                                       FA_BACKEND_CUDA_SM80};
    char reasons[512] = "";
    for (size_t n = 0; n < sizeof order / sizeof order[0]; ++n) {
        fa_status st = backend_supports(ctx, order[n], p, dir);
        if (st == FA_SUCCESS) {
            fa_clear_error();
            *chosen = order[n];
            return FA_SUCCESS;
        }
        if (st != FA_ERROR_UNSUPPORTED)
            return st;
        size_t used = strlen(reasons);
        snprintf(reasons + used, sizeof reasons - used, "%s%s: %s",
                 used ? "; " : "", fa_backend_name(order[n]),
                 fa_last_error());
    }
    return fa_fail(FA_ERROR_UNSUPPORTED, "no CUDA backend supports this "
                   "problem (%s)", reasons);
}

size_t fa_dispatch_workspace_size(const fa_context *ctx, fa_backend backend,
                                  const fa_problem *p, fa_direction dir)
{
    (void)ctx; /* (used by the CUDA backends only) */
    switch (backend) {
    case FA_BACKEND_CPU:
        return fa_cpu_workspace_size(p, dir);
#ifdef FA_HAVE_SM80
    case FA_BACKEND_CUDA_SM80:
        return fa_sm80_workspace_size(p, dir, &ctx->cuda);
#endif
#ifdef FA_HAVE_SM90
    case FA_BACKEND_CUDA_SM90:
        return fa_sm90_workspace_size(p, dir, &ctx->cuda);
#endif
    default:
        return 0;
    }
}

fa_status fa_dispatch_run(const fa_context *ctx, fa_backend backend, fa_problem *p,
                          fa_direction dir)
{
    switch (backend) {
    case FA_BACKEND_CPU:
        return dir == FA_FORWARD ? fa_cpu_forward(p) : fa_cpu_backward(p);
#ifdef FA_HAVE_SM80
    case FA_BACKEND_CUDA_SM80:
        return dir == FA_FORWARD ? fa_sm80_forward(p, &ctx->cuda) : fa_sm80_backward(p, &ctx->cuda);
#endif
#ifdef FA_HAVE_SM90
    case FA_BACKEND_CUDA_SM90:
        return dir == FA_FORWARD ? fa_sm90_forward(p, &ctx->cuda) : fa_sm90_backward(p, &ctx->cuda);
#endif
    default:
        break;
    }
    return fa_fail(FA_ERROR_INTERNAL, "backend %s cannot run the %s pass",
                   fa_backend_name(backend),
                   dir == FA_FORWARD ? "forward" : "backward");
}
