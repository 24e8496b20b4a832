/*
 * CUDA runtime glue: device queries, stream-ordered allocation and copies,
 * used by the API layer (src/api.c) whenever the build has CUDA. Every CUDA
 * error becomes FA_ERROR_DEVICE (or FA_ERROR_OUT_OF_MEMORY) with the
 * runtime's own message.
 */
#include "fa_internal.h"

#include <cuda_runtime.h>
#include <stdio.h>

/* Maps a failed runtime call to a status and the thread-local message. */
static fa_status fail_cuda(cudaError_t err, const char *what)
{
    fa_status status = err == cudaErrorMemoryAllocation ? FA_ERROR_OUT_OF_MEMORY
                                                        : FA_ERROR_DEVICE;
    return fa_fail(status, "%s: %s (%s)", what, cudaGetErrorString(err),
                   cudaGetErrorName(err));
}

extern "C" fa_status fa_cuda_device_query(int device_index,
                                          fa_cuda_device_info *info)
{
    int count = 0;
    cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess) {
        /* cudaGetDeviceCount's sticky error would otherwise leak into the
         * next call on a machine without a driver. */
        cudaGetLastError();
        return fa_fail(FA_ERROR_UNSUPPORTED, "no usable CUDA device: %s",
                       cudaGetErrorString(err));
    }
    if (device_index < 0 || device_index >= count)
        return fa_fail(FA_ERROR_UNSUPPORTED,
                       "CUDA device %d does not exist (this machine has %d)",
                       device_index, count);
    int major = 0, minor = 0, sms = 0, smem_optin = 0;
    if ((err = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor,
                                      device_index)) != cudaSuccess ||
        (err = cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor,
                                      device_index)) != cudaSuccess ||
        (err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount,
                                      device_index)) != cudaSuccess ||
        (err = cudaDeviceGetAttribute(&smem_optin,
                                      cudaDevAttrMaxSharedMemoryPerBlockOptin,
                                      device_index)) != cudaSuccess)
        return fail_cuda(err, "cudaDeviceGetAttribute");
    info->sm = 10 * major + minor;
    info->num_sms = sms;
    info->smem_per_block_optin = (size_t)smem_optin;
    return FA_SUCCESS;
}

extern "C" fa_status fa_cuda_set_device(int device_index)
{
    /* An error an earlier, unrelated runtime call left behind would
     * otherwise be read as this call's launch failing (cudaGetLastError
     * after each launch); a sticky one still fails cudaSetDevice. */
    (void)cudaGetLastError();
    cudaError_t err = cudaSetDevice(device_index);
    return err == cudaSuccess ? FA_SUCCESS : fail_cuda(err, "cudaSetDevice");
}

/* Stream-ordered: the memory is usable by work queued on `stream` after
 * this call, and comes from the device's default memory pool. */
extern "C" fa_status fa_cuda_malloc(void **ptr, size_t bytes, void *stream)
{
    *ptr = NULL;
    if (bytes == 0)
        return FA_SUCCESS;
    cudaError_t err = cudaMallocAsync(ptr, bytes, (cudaStream_t)stream);
    if (err != cudaSuccess) {
        *ptr = NULL;
        char what[64];
        snprintf(what, sizeof what, "cudaMallocAsync(%zu bytes)", bytes);
        return fail_cuda(err, what);
    }
    return FA_SUCCESS;
}

/* Stream-ordered free; NULL is a no-op. Errors cannot be reported (this is
 * called on cleanup paths), so they are cleared rather than left sticky. */
extern "C" void fa_cuda_free(void *ptr, void *stream)
{
    if (ptr == NULL)
        return;
    if (cudaFreeAsync(ptr, (cudaStream_t)stream) != cudaSuccess)
        cudaGetLastError();
}

/* Synchronous with respect to the host: waits for `stream` to finish the
 * copy (and everything queued before it). */
extern "C" fa_status fa_cuda_copy_to_host(void *dst, const void *src,
                                          size_t bytes, void *stream)
{
    if (bytes == 0)
        return FA_SUCCESS;
    cudaError_t err = cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost,
                                      (cudaStream_t)stream);
    if (err != cudaSuccess)
        return fail_cuda(err, "cudaMemcpyAsync(device to host)");
    err = cudaStreamSynchronize((cudaStream_t)stream);
    if (err != cudaSuccess)
        return fail_cuda(err, "cudaStreamSynchronize after a copy to host");
    return FA_SUCCESS;
}
